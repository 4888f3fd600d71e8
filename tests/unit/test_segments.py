"""Segment models: the YAML's `segments`, which segments a window trains, and routing each row to its model."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline

from lifecycle.config.pipeline import ConfigError, PipelineConfig, load_pipeline
from lifecycle.devtools import demo_segments
from lifecycle.ml import segments
from lifecycle.ml.scoring import (
    SEGMENT_SCORES_SCHEMA,
    ScoringBatchError,
    SegmentRouter,
    prediction_rows,
    score_partition,
)
from lifecycle.persistence import storage

REPO = Path(__file__).resolve().parents[2]
STORE_YAML = REPO / "examples" / "pipelines" / "store_orders.yaml"


@pytest.fixture
def store_dict() -> dict[str, Any]:
    return yaml.safe_load(STORE_YAML.read_text())


def _load(tmp_path: Path, data: dict[str, Any]) -> PipelineConfig:
    path = tmp_path / "store_orders.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_pipeline(path)


def _error(tmp_path: Path, data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, data)
    return str(err.value)


def test_the_example_loads_and_each_segment_is_its_own_registered_model(tmp_path, store_dict):
    config = _load(tmp_path, store_dict)
    north = config.for_segment("store 7/North")
    assert config.segment is None and north.segment == "store 7/North"
    assert north.registered_model_name == "store_orders__store-7-North"
    assert north.name == "store_orders__store-7-North"  # its own artifacts and experiment
    assert north.segments == config.segments and north.features == config.features


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"column": "ordered_again"}, "segments.column"),
        ({"column": "order_id"}, "segments.column"),
        ({"column": "store", "min_rows": 5}, "segments.min_rows"),
        ({"column": "store", "values": ["a b", "a-b"]}, "share a model name"),
        ({"column": "store", "values": []}, "segments.values"),
    ],
)
def test_a_bad_segments_block_names_the_field(tmp_path, store_dict, change, named):
    store_dict["segments"] = change
    message = _error(tmp_path, store_dict)
    assert "store_orders.yaml" in message and named in message


def test_approval_and_canary_gates_are_refused_for_segments(tmp_path, store_dict):
    store_dict["gate"]["mode"] = "approve"
    assert "not available for segment models" in _error(tmp_path, store_dict)


def _snapshot(tmp_path: Path, frame: pd.DataFrame) -> str:
    uri = f"file://{tmp_path / 'snapshot.parquet'}"
    return storage.write_parquet(uri, frame)["uri"]


def _window(stores: int = 20, days: int = 10) -> pd.DataFrame:
    start = dt.date(2026, 1, 1)
    return pd.concat([demo_segments.orders(start + dt.timedelta(days=d), stores, rows=600) for d in range(days)])


def test_the_plan_trains_every_store_with_enough_rows_and_leaves_out_the_rare_ones(tmp_path, store_dict, caplog):
    store_dict["segments"]["min_rows"] = 100
    config = _load(tmp_path, store_dict)
    frame = _window()
    counts = frame["store"].value_counts()
    planned = segments.plan(config, _snapshot(tmp_path, frame))
    assert planned == sorted(v for v, n in counts.items() if n >= config.segments.min_rows)
    assert len(planned) >= 15 and demo_segments.POPUP not in planned  # the popup store has a handful of rows
    assert f"{demo_segments.POPUP} (" in caplog.text  # and the log names it with its count


def test_listed_segments_are_trained_only_when_they_have_the_rows(tmp_path, store_dict):
    store_dict["segments"] = {"column": "store", "values": ["store_001", "store_002", "nowhere"], "min_rows": 100}
    config = _load(tmp_path, store_dict)
    assert segments.plan(config, _snapshot(tmp_path, _window())) == ["store_001", "store_002"]


def test_a_window_without_the_column_or_without_a_big_enough_segment_is_a_clear_error(tmp_path, store_dict):
    config = _load(tmp_path, store_dict)
    with pytest.raises(ConfigError, match="segments.column 'store' is not a column"):
        segments.plan(config, _snapshot(tmp_path, _window(days=1).drop(columns="store")))
    store_dict["segments"]["min_rows"] = 100_000
    with pytest.raises(segments.NoSegmentsError, match="no value of 'store' has 100000 rows"):
        segments.plan(_load(tmp_path, store_dict), _snapshot(tmp_path, _window(days=1)))


def test_rows_of_keeps_one_segment_and_missing_values_belong_to_none(tmp_path, store_dict):
    config = _load(tmp_path, store_dict)
    frame = pd.DataFrame({"store": ["a", None, "b", "a"], "x": [1, 2, 3, 4]})
    assert segments.rows_of(config.for_segment("a"), frame)["x"].tolist() == [1, 4]
    assert segments.unknown_segments(config, frame, {"a": {}}) == {"<missing>": 1, "b": 1}


class _Loaded(SegmentRouter):
    """A router whose models are fitted here (the integration test loads real registered ones)."""

    def __init__(self, config: PipelineConfig, models: dict[str, Any], fallback: Any = None):
        champions = {s: {"model_name": f"m__{s}", "version": str(i + 1), "model_uri": f"fitted:{s}"}
                     for i, s in enumerate(models)}  # fmt: skip
        pooled = {"model_name": "m", "version": "9", "model_uri": "fitted:pooled"} if fallback is not None else None
        super().__init__(config, champions, pooled)
        self._models = {f"fitted:{s}": model for s, model in models.items()} | {"fitted:pooled": fallback}


def _fitted(frame: pd.DataFrame, flip: bool) -> Any:
    x = frame[["visits_90d", "discount"]].fillna(0)
    y = (frame["discount"] > 0.15) ^ flip
    return make_pipeline(LogisticRegression()).fit(x, y.astype(int))


def test_each_row_is_scored_by_its_segments_model_in_the_batch_order(tmp_path, store_dict):
    store_dict["features"] = {"numeric": ["visits_90d", "discount"], "categorical": []}
    config = _load(tmp_path, store_dict)
    frame = _window(stores=3, days=2)
    frame = frame[frame["store"] != demo_segments.POPUP].sample(frac=1.0, random_state=3).reset_index(drop=True)
    models = {"store_001": _fitted(frame, False), "store_002": _fitted(frame, True), "store_003": _fitted(frame, False)}
    batch_uri = f"file://{tmp_path / 'batch.parquet'}"
    frame.to_parquet(tmp_path / "batch.parquet", row_group_size=500, index=False)
    router = _Loaded(config, models)
    out = score_partition(config, router, batch_uri, list(range(pq.ParquetFile(tmp_path / "batch.parquet").num_row_groups)),
                          f"file://{tmp_path / 'scores.parquet'}")  # fmt: skip
    scores = pq.read_table(tmp_path / "scores.parquet")
    assert scores.schema.equals(SEGMENT_SCORES_SCHEMA) and out["rows"] == len(frame)
    got = scores.to_pandas()
    assert got["entity_id"].tolist() == frame["order_id"].astype(str).tolist()
    for store, model in models.items():
        at = (frame["store"] == store).to_numpy()
        expected = model.predict_proba(frame.loc[at, ["visits_90d", "discount"]].fillna(0))[:, 1]
        np.testing.assert_allclose(got.loc[at, "score"].to_numpy(), expected)
        assert set(got.loc[at, "model_name"]) == {f"m__{store}"}
    rows = pa_rows = list(
        prediction_rows([out["uri"]], "store_orders", dt.date(2026, 1, 5), "ignored", "ignored", "run", dt.datetime.now(dt.UTC), 700, str(tmp_path))
    )  # fmt: skip
    table = pd.concat([r.to_pandas() for r in pa_rows])
    assert len(rows) == 2 and table["model_name"].tolist() == got["model_name"].tolist()
    assert table["model_version"].tolist() == got["model_version"].tolist()


def test_a_row_of_a_segment_without_a_champion_is_refused_not_scored(tmp_path, store_dict):
    store_dict["features"] = {"numeric": ["visits_90d", "discount"], "categorical": []}
    config = _load(tmp_path, store_dict)
    frame = _window(stores=2, days=1)
    router = _Loaded(config, {"store_001": _fitted(frame, False)})
    with pytest.raises(ScoringBatchError, match="segment 'store_002' has no champion"):
        router.score(frame)


def test_with_a_pooled_fallback_rows_of_untrained_segments_are_scored_by_it(tmp_path, store_dict):
    store_dict["features"] = {"numeric": ["visits_90d", "discount"], "categorical": []}
    config = _load(tmp_path, store_dict)
    frame = _window(stores=2, days=2)
    frame.loc[frame.index[:3], "store"] = None  # a missing segment is scored by the fallback too
    pooled, own = _fitted(frame, True), _fitted(frame, False)
    scored = _Loaded(config, {"store_001": own}, fallback=pooled).score(frame.reset_index(drop=True)).to_pandas()
    mine = (frame["store"] == "store_001").to_numpy()
    assert set(scored.loc[mine, "model_name"]) == {"m__store_001"} and set(scored.loc[~mine, "model_name"]) == {"m"}
    expected = pooled.predict_proba(frame.loc[~mine, ["visits_90d", "discount"]].fillna(0))[:, 1]
    np.testing.assert_allclose(scored.loc[~mine, "score"].to_numpy(), expected)
