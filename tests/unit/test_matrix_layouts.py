"""Every path the pipeline YAML allows, function by function: task × base-source layout × storage.

For each cell (binary, multiclass, regression × file, glob, date_partitioned, sql × local, S3 in moto's
in-process mock): the training window and its snapshot hold exactly the window's rows, joined with the
lookup; staging a scoring batch holds exactly the batch day's rows (not the whole file); a lookup whose join
key repeats is refused at scoring. Missing date partitions are listed and fail past the limit. Metrics and
the paired bootstrap work for each task, including a multiclass holdout whose rare class is absent from
some resamples.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from lifecycle.config.pipeline import PipelineConfig
from lifecycle.ml import ingestion, metrics, scoring
from lifecycle.ml.ingestion import SourceError
from lifecycle.persistence import storage


def _matrix_data():
    name = "lifecycle_tests_matrix_data"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "integration" / "matrix_data.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


md = _matrix_data()

START = dt.date(2026, 3, 25)  # 12 days across a month end: the glob layout has two monthly files
DAYS = 12
ROWS = 150  # 150-200 rows a day, so a day spans more than one scoring chunk of 100
AS_OF, WINDOW_DAYS = dt.date(2026, 4, 3), 6  # training window 2026-03-28 .. 2026-04-02
BATCH_DAY = dt.date(2026, 4, 4)
BUCKET = "matrix-unit"
STORES = ("local", "s3")
CELLS = [(t, layout, s) for t in md.TASKS for layout in md.LAYOUTS for s in STORES]
IDS = [f"{t}-{layout}-{s}" for t, layout, s in CELLS]


def _fmt(task: str, layout: str) -> str:
    """Parquet and CSV alternate over the cells, so each layout is read in both formats."""
    return ("parquet", "csv")[(md.TASKS.index(task) + md.LAYOUTS.index(layout)) % 2]


def _moto_s3():
    """tests/integration/moto_s3.py: the artifact store is s3fs (aiobotocore), which moto's in-process mock does
    not patch, so these cells talk to moto's HTTP server."""
    name = "lifecycle_tests_moto_s3"
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "integration" / "moto_s3.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


s3_endpoint = _moto_s3().s3_endpoint


@pytest.fixture(scope="module")
def s3(s3_endpoint):
    """moto's S3 server for this module, reached through the Airflow connection the artifact store reads."""
    import json

    connection = {"conn_type": "aws", "login": "testing", "password": "testing",
                  "extra": {"endpoint_url": s3_endpoint["url"], "region_name": "us-east-1"}}  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
        patch.delenv("AWS_ENDPOINT_URL", raising=False)
        storage.s3_client.cache_clear()
        storage.s3_client().create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"
        storage.s3_client.cache_clear()


@pytest.fixture(scope="module")
def frames() -> dict[str, pd.DataFrame]:
    return {task: md.frame(task, START, DAYS, ROWS) for task in md.TASKS}


class Cell:
    def __init__(self, task, layout, store, config, urls, data, root):
        self.task, self.layout, self.store = task, layout, store
        self.config, self.urls, self.data, self.root = config, urls, data, root

    def config_with(self, **changes) -> PipelineConfig:
        data = self.config.model_dump(exclude_none=True)
        for key, value in changes.items():
            data[key] = {**data[key], **value} if isinstance(value, dict) else value
        return PipelineConfig.model_validate(data)


@pytest.fixture(scope="module")
def cells(s3, frames, tmp_path_factory):
    """A builder of cells, each written once per module."""
    built: dict[tuple[str, str, str], Cell] = {}
    local = tmp_path_factory.mktemp("matrix")

    def cell(task: str, layout: str, store: str) -> Cell:
        key = (task, layout, store)
        if key not in built:
            root = f"{s3}/{task}/{layout}" if store == "s3" else str(local / store / task / layout)
            url = f"sqlite:///{local / f'warehouse-{task}-{store}.db'}"
            data = frames[task]
            base = md.write_base(data, layout, root, _fmt(task, layout), sql_url=url)
            lookup = md.write_lookup(sql_url=url) if layout == "sql" else md.write_lookup(root)
            config = PipelineConfig.model_validate(
                md.pipeline_dict(f"m_{task}_{layout}", task, [base, lookup], prediction={"chunk_size": 100})
            )
            built[key] = Cell(task, layout, store, config, {"warehouse": url}, data, root)
        return built[key]

    return cell


def _keys(frame: pd.DataFrame) -> set[tuple[int, pd.Timestamp]]:
    return set(zip(frame[md.ID].astype("int64"), pd.to_datetime(frame[md.TS]), strict=True))


def _window(data: pd.DataFrame, start: dt.date, end: dt.date) -> pd.DataFrame:
    stamps = pd.to_datetime(data[md.TS])
    return data[(stamps >= pd.Timestamp(start)) & (stamps < pd.Timestamp(end))]


def _out(cell: Cell, name: str) -> str:
    return f"{cell.root}/out/{name}" if cell.store == "s3" else f"file://{cell.root}/out/{name}"


@pytest.mark.parametrize(("task", "layout", "store"), CELLS, ids=IDS)
def test_load_window_gives_the_windows_rows_joined(cells, task, layout, store):
    cell = cells(task, layout, store)
    start, end = AS_OF - dt.timedelta(days=WINDOW_DAYS), AS_OF
    frame = ingestion.load_window(cell.config, start, end, cell.urls)
    expected = _window(cell.data, start, end)
    assert len(frame) == len(expected) and _keys(frame) == _keys(expected)
    assert frame[md.TS].is_monotonic_increasing
    assert frame["store_region"].notna().all() and frame["store_size"].notna().all(), "the lookup is joined"
    assert frame[md.TARGETS[task]].notna().all()
    if task == "multiclass":
        assert set(frame[md.TARGETS[task]]) <= {*md.CLASSES, md.RARE}


@pytest.mark.parametrize(("task", "layout", "store"), CELLS, ids=IDS)
def test_snapshot_holds_the_window_and_lists_no_gaps(cells, task, layout, store):
    cell = cells(task, layout, store)
    out = _out(cell, "snapshot.parquet")
    meta = ingestion.snapshot(cell.config, AS_OF, WINDOW_DAYS, out, cell.urls)
    expected = _window(cell.data, AS_OF - dt.timedelta(days=WINDOW_DAYS), AS_OF)
    assert meta["rows"] == len(expected) and meta["missing_partitions"] == {}
    assert (meta["window_start"], meta["window_end"]) == ("2026-03-28", "2026-04-03")
    back = storage.read_parquet(out)
    assert _keys(back) == _keys(expected)
    assert pd.api.types.is_datetime64_any_dtype(back[md.TS]), "timestamps are typed, whatever the source"


@pytest.mark.parametrize(("task", "layout", "store"), CELLS, ids=IDS)
def test_stage_batch_gives_exactly_the_batch_days_rows(cells, task, layout, store):
    cell = cells(task, layout, store)
    out = _out(cell, "batch.parquet")
    staged = scoring.stage_batch(cell.config, BATCH_DAY, out, None, cell.urls)
    expected = md.day_rows(cell.data, BATCH_DAY)
    assert staged["rows"] == len(expected) and staged["batch_key"] == "2026-04-04"
    assert staged["row_groups"] >= 2, "the day is staged in chunks of prediction.chunk_size"
    batch = storage.read_parquet(out)
    assert len(batch) == len(expected) and _keys(batch) == _keys(expected)
    assert batch["store_region"].notna().all(), "the lookup is joined at scoring too"


@pytest.mark.parametrize(("task", "layout", "store"), CELLS, ids=IDS)
def test_join_key_duplicates_are_refused_at_scoring(cells, task, layout, store):
    cell = cells(task, layout, store)
    repeated = pd.concat([md.stores(), md.stores().iloc[[5]].assign(store_size=1.0)], ignore_index=True)
    lookup = cell.config.sources[1].model_dump(exclude_none=True)
    if lookup.get("sql"):
        md.write_table(cell.urls["warehouse"], "stores_repeated", repeated)
        lookup["sql"] = "SELECT store, store_region, store_size FROM stores_repeated"
    else:
        lookup["uri"] = storage.write_bytes(f"{cell.root}/stores_repeated.csv", repeated.to_csv(index=False).encode())
    config = cell.config_with(sources=[cell.config.sources[0].model_dump(exclude_none=True), lookup])
    with pytest.raises(SourceError, match=r"source 'stores': join keys \['store'\] are not unique.*s005"):
        scoring.stage_batch(config, BATCH_DAY, _out(cell, "repeated.parquet"), None, cell.urls)
    assert not storage.exists(_out(cell, "repeated.parquet")), "nothing staged"


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("task", md.TASKS)
def test_missing_partition_is_listed_and_fails_past_the_limit(cells, frames, s3, tmp_path, task, store):
    gap = dt.date(2026, 3, 30)
    data = frames[task]
    root = f"{s3}/gaps/{task}" if store == "s3" else str(tmp_path / "gaps")
    base = md.write_base(data[pd.to_datetime(data[md.TS]).dt.date != gap], "date_partitioned", root)
    config = PipelineConfig.model_validate(md.pipeline_dict("m_gaps", task, [base, md.write_lookup(root)]))
    out = f"{root}/out/snapshot.parquet" if store == "s3" else f"file://{root}/out/snapshot.parquet"

    assert ingestion.missing_partitions(config, AS_OF - dt.timedelta(days=WINDOW_DAYS), AS_OF) == {
        "events": ["2026-03-30"]
    }
    with pytest.raises(SourceError, match=r"max_missing_partitions=0: source 'events': 1 missing \(2026-03-30\)"):
        ingestion.snapshot(config, AS_OF, WINDOW_DAYS, out)
    assert not storage.exists(out)

    lenient = PipelineConfig.model_validate(
        md.pipeline_dict("m_gaps", task, [base, md.write_lookup(root)], validation={"max_missing_partitions": 1})
    )
    meta = ingestion.snapshot(lenient, AS_OF, WINDOW_DAYS, out)
    assert meta["missing_partitions"] == {"events": ["2026-03-30"]}
    expected = _window(data, AS_OF - dt.timedelta(days=WINDOW_DAYS), AS_OF)
    assert meta["rows"] == len(expected) - len(md.day_rows(data, gap))
    with pytest.raises(SourceError, match="no scoring input at .*date=2026-03-30"):
        scoring.stage_batch(lenient, gap, f"{root}/out/batch.parquet")


# -- models and metrics per task -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(frames):
    """A small LightGBM and the linear baseline per task, trained on the first days (one process, no workers)."""
    from lifecycle.ml.features import input_columns
    from lifecycle.ml.training import fit_baseline, fit_search

    trained = {}
    for task in md.TASKS:
        config = PipelineConfig.model_validate(md.pipeline_dict(f"m_{task}", task, [{"name": "e", "uri": "x"}]))
        data = frames[task].merge(md.stores(), on="store", how="left")
        train = _window(data, START, dt.date(2026, 4, 3))
        holdout = _window(data, dt.date(2026, 4, 3), START + dt.timedelta(days=DAYS))
        search, _ = fit_search(config, train, config.training.grid, "grid", {"search_jobs": 1, "lgbm_threads": 1})
        columns = input_columns(config, train)
        trained[task] = (config, search.best_estimator_, fit_baseline(config, train), holdout, columns)
    return trained


@pytest.mark.parametrize("task", md.TASKS)
def test_holdout_metrics_and_bootstrap_per_task(models, task):
    config, model, baseline, holdout, columns = models[task]
    y = holdout[config.target].to_numpy()
    classes = getattr(model, "classes_", None)
    challenger = metrics.scores(model, holdout[columns], task)
    base = metrics.scores(baseline, holdout[columns], task)
    measured = metrics.compute(task, y, challenger, config.prediction.threshold, classes)
    expected = {"binary": {"roc_auc", "pr_auc", "log_loss", "f1", "precision", "recall", "accuracy"},
                "multiclass": {"roc_auc", "log_loss", "f1", "accuracy"}, "regression": {"rmse", "mae", "r2"}}[task]  # fmt: skip
    assert expected <= set(measured) and all(np.isfinite(measured[m]) for m in expected)
    primary = config.training.primary_metric
    assert (measured[primary] > 0.7) if task != "regression" else (measured["r2"] > 0.5), measured
    result = metrics.bootstrap_difference(
        task, primary, config.higher_is_better, y, challenger, base, 100, 0.9, classes=classes
    )
    assert result["resamples"] == 100 and result["ci_low"] <= result["improvement"] <= result["ci_high"]
    assert result["ci_low"] > 0, f"the tree model beats the linear baseline on this data: {result}"


def test_multiclass_model_knows_the_rare_class(models):
    _, model, baseline, _, _ = models["multiclass"]
    assert list(model.classes_) == sorted([*md.CLASSES, md.RARE]) == list(baseline.classes_)


@pytest.mark.parametrize("name", ["roc_auc", "log_loss", "f1", "accuracy"])
def test_multiclass_bootstrap_with_the_rare_class_absent_from_resamples(models, name):
    config, model, baseline, holdout, columns = models["multiclass"]
    target = config.target
    rare_rows = holdout[holdout[target] == md.RARE]
    assert len(rare_rows) >= 1
    # A holdout of 60 rows with exactly one rare-class row: most resamples miss it, some draw it.
    sample = pd.concat([holdout[holdout[target] != md.RARE].head(59), rare_rows.head(1)], ignore_index=True)
    y = sample[target].to_numpy()
    classes = model.classes_
    seed, resamples = 0, 200
    rng = np.random.default_rng(seed)
    absent = sum(md.RARE not in y[rng.integers(0, len(y), len(y))] for _ in range(resamples))
    assert 0 < absent < resamples, "the rare class is absent from some resamples and present in others"

    challenger = metrics.scores(model, sample[columns], "multiclass")
    champion = metrics.scores(baseline, sample[columns], "multiclass")
    higher = name != "log_loss"
    result = metrics.bootstrap_difference(
        "multiclass", name, higher, y, challenger, champion, resamples, 0.9, seed=seed, classes=classes
    )
    assert result["resamples"] == resamples
    assert all(np.isfinite(result[k]) for k in ("improvement", "ci_low", "ci_high"))


def test_multiclass_holdout_without_the_rare_class(models):
    config, model, _, holdout, columns = models["multiclass"]
    common = holdout[holdout[config.target] != md.RARE]
    score = metrics.scores(model, common[columns], "multiclass")
    assert score.shape[1] == 5
    measured = metrics.compute("multiclass", common[config.target], score, classes=model.classes_)
    assert all(np.isfinite(v) for v in measured.values()), measured


@pytest.mark.parametrize("task", md.TASKS)
def test_scoring_a_staged_batch_per_task(models, cells, task):
    """The staged day scored partition by partition: one row per entity, labels of the task's kind."""
    config, model, _, _, _ = models[task]
    cell = cells(task, "file", "local")
    staged = scoring.stage_batch(cell.config, BATCH_DAY, _out(cell, "scored-batch.parquet"), None, cell.urls)
    parts = scoring.partition_row_groups(staged["row_groups"], 2)
    scored = [
        scoring.score_partition(cell.config, model, staged["uri"], groups, _out(cell, f"part-{i}.parquet"))
        for i, groups in enumerate(parts)
    ]
    assert sum(p["rows"] for p in scored) == staged["rows"]
    frame = pd.concat([storage.read_parquet(p["uri"]) for p in scored], ignore_index=True)
    assert frame["entity_id"].is_unique and len(frame) == len(md.day_rows(cell.data, BATCH_DAY))
    if task == "regression":
        assert frame["label"].isna().all() and frame["score"].between(0, 500).all()
    elif task == "binary":
        assert set(frame["label"]) <= {"0", "1"} and frame["score"].between(0, 1).all()
    else:
        assert set(frame["label"]) <= {*md.CLASSES, md.RARE} and frame["score"].between(0.2, 1).all()


def test_sql_base_source_scores_the_input_uri_when_given(cells, tmp_path):
    cell = cells("regression", "sql", "local")
    chosen = md.day_rows(cell.data, dt.date(2026, 3, 26)).head(130)
    path = tmp_path / "uploads" / "chosen.parquet"
    path.parent.mkdir()
    chosen.to_parquet(path, index=False)
    # A SQL base source has no folder of its own: the prefix an input_uri may use is configured.
    with pytest.raises(storage.OutsideAllowedPrefixError, match="no prefix configured"):
        scoring.stage_batch(cell.config, BATCH_DAY, f"file://{tmp_path}/batch.parquet", str(path), cell.urls)
    config = cell.config.model_copy(
        update={"prediction": cell.config.prediction.model_copy(update={"input_prefixes": [str(path.parent)]})}
    )
    staged = scoring.stage_batch(config, BATCH_DAY, f"file://{tmp_path}/batch.parquet", str(path), cell.urls)
    assert staged["rows"] == 130 and staged["input_uri"] == str(path)
    assert _keys(pd.read_parquet(tmp_path / "batch.parquet")) == _keys(chosen)


def test_sql_window_binds_start_and_end(cells):
    """The query sees the window's dates, not the whole table."""
    cell = cells("binary", "sql", "local")
    engine = sa.create_engine(cell.urls["warehouse"])
    with engine.connect() as conn:
        total = conn.execute(sa.text("SELECT count(*) FROM events")).scalar()
    engine.dispose()
    raw = ingestion.read_source(cell.config.sources[0], BATCH_DAY, BATCH_DAY + dt.timedelta(days=1), cell.urls)
    assert len(raw) == len(md.day_rows(cell.data, BATCH_DAY)) < total


def test_glob_on_s3_matches_only_the_pattern(s3):
    root = f"{s3}/globcheck/monthly"
    for key in ("events-2026-03.parquet", "events-2026-04.parquet", "nested/events-2026-05.parquet",
                "other-2026-03.parquet", "events-2026-03.parquet.tmp"):  # fmt: skip
        storage.write_bytes(f"{root}/{key}", b"x")
    found = storage.glob(f"{root}/events-*.parquet")
    assert found == [f"{root}/events-2026-03.parquet", f"{root}/events-2026-04.parquet"], "a * never crosses a /"
    assert storage.glob(f"{root}/**/events-*.parquet") == sorted([*found, f"{root}/nested/events-2026-05.parquet"])


# -- types that a reader infers chunk by chunk -----------------------------------------------------------------------


def _one_day(tmp_path, layout: str, fmt: str, data: pd.DataFrame) -> tuple[PipelineConfig, dict[str, str]]:
    url = f"sqlite:///{tmp_path / 'chunks.db'}"
    root = str(tmp_path / f"{layout}-{fmt}")
    base = md.write_base(data, layout, root, fmt, sql_url=url)
    config = md.pipeline_dict("m_chunks", "binary", [base, md.write_lookup(root)], prediction={"chunk_size": 100})
    return PipelineConfig.model_validate(config), {"warehouse": url}


DAY_LAYOUTS = [("file", "csv"), ("date_partitioned", "csv"), ("glob", "csv"), ("sql", "parquet"), ("file", "parquet")]


@pytest.mark.parametrize(("layout", "fmt"), DAY_LAYOUTS, ids=[f"{a}-{b}" for a, b in DAY_LAYOUTS])
def test_whole_numbers_in_the_first_chunk_and_decimals_later(tmp_path, layout, fmt):
    """A CSV or SQL chunk of whole numbers is read as integers: the next chunk's decimals must still fit."""
    data = md.day_frame("binary", BATCH_DAY, 320)
    amount = data["amount"].fillna(10).round(0)
    values = [int(v) if i < 250 else float(v) + 0.5 for i, v in enumerate(amount)]  # "21", then "45.5"
    data["amount"] = pd.Series(values, index=data.index, dtype=object if fmt == "csv" else float)
    config, urls = _one_day(tmp_path, layout, fmt, data)
    if layout == "sql":  # a NUMERIC column: SQLite hands back whole numbers as integers, the rest as floats
        engine = sa.create_engine(urls["warehouse"])
        with engine.begin() as conn:
            data.to_sql("events", conn, if_exists="replace", index=False, dtype={"amount": sa.Numeric()})
        engine.dispose()
    staged = scoring.stage_batch(config, BATCH_DAY, f"file://{tmp_path}/batch.parquet", None, urls)
    assert staged["rows"] == 320 and staged["row_groups"] == 4
    batch = pd.read_parquet(tmp_path / "batch.parquet").sort_values(md.ID)
    expected = data.assign(amount=amount.where(data.index < 250, amount + 0.5)).sort_values(md.ID)
    assert batch["amount"].tolist() == expected["amount"].astype(float).tolist()


@pytest.mark.parametrize(("layout", "fmt"), DAY_LAYOUTS, ids=[f"{a}-{b}" for a, b in DAY_LAYOUTS])
def test_a_column_missing_from_a_whole_chunk(tmp_path, layout, fmt):
    """A sparse text column with no value in the first chunk (CSV: floats; SQL: no type) stays text."""
    data = md.day_frame("binary", BATCH_DAY, 320)
    data.loc[:150, "channel"] = None
    config, urls = _one_day(tmp_path, layout, fmt, data)
    staged = scoring.stage_batch(config, BATCH_DAY, f"file://{tmp_path}/batch.parquet", None, urls)
    assert staged["rows"] == 320
    batch = pd.read_parquet(tmp_path / "batch.parquet").set_index(md.ID).loc[data[md.ID]]
    assert batch["channel"].isna().tolist() == data["channel"].isna().tolist()
    assert set(batch["channel"].dropna()) <= set(md.CHANNELS)


def test_values_of_different_kinds_in_different_chunks_are_refused(tmp_path):
    data = md.day_frame("binary", BATCH_DAY, 320).astype({"amount": object})
    data.loc[250:, "amount"] = "12,50"  # a decimal comma, from the last chunks on
    config, urls = _one_day(tmp_path, "file", "csv", data)
    with pytest.raises(scoring.ScoringBatchError, match="column 'amount' has values of different types"):
        scoring.stage_batch(config, BATCH_DAY, f"file://{tmp_path}/batch.parquet", None, urls)
    assert not (tmp_path / "batch.parquet").exists()


# -- multiclass: a rare class missing from the training rows, a fold, or one of the models ------------------------


@pytest.fixture(scope="module")
def without_rare(models):
    """The multiclass model's twin trained on the same days without the rare class (four classes)."""
    from lifecycle.ml.training import fit_search

    config, model, _, holdout, columns = models["multiclass"]
    data = md.frame("multiclass", START, DAYS, ROWS).merge(md.stores(), on="store", how="left")
    train = _window(data, START, dt.date(2026, 4, 3))
    train = train[train[config.target] != md.RARE]
    search, _ = fit_search(config, train, config.training.grid, "grid", {"search_jobs": 1, "lgbm_threads": 1})
    return search.best_estimator_


def test_holdout_with_a_class_the_model_never_saw(models, without_rare):
    """A rare class only in the holdout days: the model gives it probability 0; metrics are computed, not raised."""
    config, _, _, holdout, columns = models["multiclass"]
    assert md.RARE in set(holdout[config.target]) and md.RARE not in without_rare.classes_
    score = metrics.scores(without_rare, holdout[columns], "multiclass")
    measured = metrics.compute("multiclass", holdout[config.target], score, classes=without_rare.classes_)
    assert all(np.isfinite(v) for v in measured.values()), measured
    common = holdout[holdout[config.target] != md.RARE]
    on_common = metrics.compute(
        "multiclass", common[config.target], metrics.scores(without_rare, common[columns], "multiclass"),
        classes=without_rare.classes_,
    )  # fmt: skip
    assert measured["log_loss"] > on_common["log_loss"], "rows of an unseen class are the worst predicted"
    assert measured["accuracy"] < on_common["accuracy"]


def test_models_with_different_classes_compare_on_the_same_rows(models, without_rare):
    """A champion trained without the rare class against a challenger with it (align both to one set)."""
    config, model, _, holdout, columns = models["multiclass"]
    classes = model.classes_
    challenger = metrics.align(metrics.scores(model, holdout[columns], "multiclass"), model.classes_, classes)
    champion = metrics.align(
        metrics.scores(without_rare, holdout[columns], "multiclass"), without_rare.classes_, classes
    )
    assert champion.shape == challenger.shape and (champion[:, list(classes).index(md.RARE)] == 0).all()
    np.testing.assert_allclose(champion.sum(axis=1), 1.0)
    y = holdout[config.target].to_numpy()
    result = metrics.bootstrap_difference("multiclass", "roc_auc", True, y, challenger, champion, 50, 0.9,
                                          classes=classes)  # fmt: skip
    assert result["resamples"] == 50 and np.isfinite(result["ci_low"])


def _rare_only_early(config):
    data = md.frame("multiclass", START, DAYS, ROWS).merge(md.stores(), on="store", how="left")
    train = _window(data, START, dt.date(2026, 4, 3))
    late = pd.to_datetime(train[md.TS]) >= pd.Timestamp(START + dt.timedelta(days=3))
    train.loc[late & (train[config.target] == md.RARE), config.target] = "basic"  # a later fold never sees it
    return train


@pytest.mark.parametrize("primary", ["roc_auc", "log_loss"])
def test_search_scorer_holds_up_when_a_fold_lacks_a_class(models, primary):
    from lifecycle.ml.features import input_columns
    from lifecycle.ml.training import make_search

    data = models["multiclass"][0].model_dump()
    config = PipelineConfig.model_validate({**data, "training": {**data["training"], "primary_metric": primary}})
    train = _rare_only_early(config)
    columns = input_columns(config, train)
    search = make_search(config, train, config.training.grid, "grid", {"search_jobs": 1, "lgbm_threads": 1})
    search.set_params(scoring=metrics.search_scorer("multiclass", primary, np.unique(train[config.target])))
    search.fit(train[columns], train[config.target])
    assert np.isfinite(search.best_score_)


def test_search_with_a_rare_class_missing_from_a_fold(models):
    """scikit-learn's roc_auc_ovr/neg_log_loss raise on such a fold; the search scores it on every class."""
    from lifecycle.ml.training import fit_search

    config = models["multiclass"][0]
    plan = {"search_jobs": 1, "lgbm_threads": 1}
    search, _ = fit_search(config, _rare_only_early(config), config.training.grid, "grid", plan)
    assert np.isfinite(search.best_score_)


@pytest.mark.parametrize("stage", ["training", "scoring"])
def test_join_keys_of_different_kinds_fail_naming_the_source(cells, tmp_path, stage):
    """Store codes as numbers in the lookup and as text in the rows: a clear, permanent SourceError."""
    cell = cells("binary", "file", "local")
    numbered = md.stores().assign(store=lambda f: f["store"].str[1:].astype(int))
    path = tmp_path / "stores.parquet"
    numbered.to_parquet(path, index=False)
    lookup = {**cell.config.sources[1].model_dump(exclude_none=True), "uri": str(path), "format": "parquet"}
    config = cell.config_with(sources=[cell.config.sources[0].model_dump(exclude_none=True), lookup])
    with pytest.raises(SourceError, match=r"source 'stores': cannot join on \['store'\], the key types differ"):
        if stage == "training":
            ingestion.load_window(config, AS_OF - dt.timedelta(days=WINDOW_DAYS), AS_OF)
        else:
            scoring.stage_batch(config, BATCH_DAY, f"file://{tmp_path}/batch.parquet")


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("layout", ["file", "glob", "date_partitioned"])
def test_compressed_csv_sources_train_and_score(frames, s3, tmp_path, layout, store):
    """events.csv.gz: pandas infers the compression from the name, on S3 too (not from a buffer of bytes)."""
    data = frames["regression"]
    root = f"{s3}/gz/{layout}" if store == "s3" else str(tmp_path / "gz")
    base = md.write_base(data, layout, root, "csv.gz")
    assert base["uri"].endswith(".csv.gz") and base["format"] == "csv"
    config = PipelineConfig.model_validate(md.pipeline_dict("m_gz", "regression", [base, md.write_lookup(root)]))
    frame = ingestion.load_window(config, AS_OF - dt.timedelta(days=WINDOW_DAYS), AS_OF)
    assert _keys(frame) == _keys(_window(data, AS_OF - dt.timedelta(days=WINDOW_DAYS), AS_OF))
    staged = scoring.stage_batch(config, BATCH_DAY, f"{root}/out/batch.parquet" if store == "s3" else
                                 f"file://{root}/out/batch.parquet")  # fmt: skip
    assert staged["rows"] == len(md.day_rows(data, BATCH_DAY))


def test_probabilities_for_other_classes_fail_clearly(models, without_rare):
    """A four-class champion scored with the five-class challenger's classes: a clear error, not an IndexError."""
    config, model, _, holdout, columns = models["multiclass"]
    score = metrics.scores(without_rare, holdout[columns], "multiclass")
    with pytest.raises(ValueError, match="4 probability columns for 5 classes .*align"):
        metrics.compute("multiclass", holdout[config.target], score, classes=model.classes_)
