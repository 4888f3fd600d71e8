"""The corruption catalogue, scoring batches: each way the day's batch breaks, the stage that catches it.

Each case corrupts a copy of the demo data's batch day (400 rows, two chunks) one way and runs batch prediction
as it runs in Airflow, with real pieces: `stage` (scoring.stage_batch: reading, joining, counting timestamps),
`batch validation` (validation.validate without the target, plus the champion's data contract, with the stage's
record), `signature` (scoring.check_signature against the champion's MLflow signature), then scoring with a
real fitted model and the write into a real SQLite predictions database that already holds an earlier run's
rows for the day. Every case asserts the stage, the words naming the column, rule and batch, and that the
earlier rows are still there, alone. Warnings by default (unseen categories, values far outside the range) are
scored and written with the warning counted; a variant past the share limit fails. Totals: tests/conftest.py.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from lifecycle.config.pipeline import PipelineConfig
from lifecycle.devtools import demo_data
from lifecycle.ml import contract, ingestion, scoring, validation
from lifecycle.ml.features import build_preprocessor, input_columns, time_split
from lifecycle.persistence import predictions_db, storage

DEMO = Path(__file__).resolve().parents[2] / "include" / "pipelines" / "demo_churn.yaml"
AS_OF = dt.date(2026, 2, 20)
START = AS_OF - dt.timedelta(days=35)
BATCH = dt.date(2026, 2, 21)
WHERE = f"scoring batch {BATCH}"
BATCH_ROWS = 400


def _part(root: Path, day: dt.date | str) -> Path:
    return root / "activity" / f"date={day}" / "part.parquet"


def _config(root: Path) -> PipelineConfig:
    data = yaml.safe_load(DEMO.read_text().replace("${DATA_ROOT}/demo_churn", str(root)))
    return PipelineConfig.model_validate(data)


@dataclass
class Scorer:
    contract: dict[str, Any]
    model: Any
    signature: Any


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("catalogue-batches") / "demo_churn"
    demo_data.write(root, START, BATCH, rows_per_day=60, label_delay_days=None)
    demo_data.activity(BATCH, BATCH_ROWS).to_parquet(_part(root, BATCH), index=False)
    return root


@pytest.fixture(scope="module")
def scorer(clean_root) -> Scorer:
    """The champion as the scoring tasks see it: a real model fitted on the clean window's training split, its signature and contract."""
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    config = _config(clean_root)
    train = time_split(ingestion.load_window(config, START, AS_OF), config)["train"]
    columns = input_columns(config, train)
    model = make_pipeline(build_preprocessor(config, train), LogisticRegression(max_iter=2000))
    model.fit(train[columns], train[config.target])
    return Scorer(contract.derive(train, config), model, infer_signature(train[columns]))


@pytest.fixture(scope="module")
def earlier_database(clean_root, scorer, tmp_path_factory) -> Path:
    """A predictions database holding an earlier run's rows for the batch day."""
    path = tmp_path_factory.mktemp("predictions") / "predictions.db"
    result = attempt(_config(clean_root), scorer, f"sqlite:///{path}", "earlier")
    assert result.stage is None and result.written == BATCH_ROWS, result.error
    return path


# --- one attempt: batch prediction's tasks, as Airflow runs them -------------------------------------------


@dataclass
class Attempt:
    stage: str | None
    error: Exception | None
    report: dict[str, Any] | None = None
    written: int = 0


def attempt(config: PipelineConfig, scorer: Scorer, database_url: str, run_id: str) -> Attempt:
    batch_uri = storage.artifact_uri(config.name, run_id, "prediction", "batch.parquet")
    try:
        staged = scoring.stage_batch(config, BATCH, batch_uri)
    except (ingestion.SourceError, scoring.ScoringBatchError) as err:
        return Attempt("stage", err)
    frame = storage.read_parquet(staged["uri"])
    try:
        report = validation.validate(
            frame, config, with_target=False, contract=scorer.contract, where=WHERE, partitions=staged
        )
    except validation.DataValidationError as err:
        return Attempt("batch validation", err, err.report)
    try:
        scoring.check_signature(frame, scorer.signature.inputs, WHERE)
    except scoring.ScoringBatchError as err:
        return Attempt("signature", err, report)
    parts = [
        scoring.score_partition(
            config, scorer.model, staged["uri"], groups,
            storage.artifact_uri(config.name, run_id, "prediction", "scores", f"part-{i}.parquet"),
        )
        for i, groups in enumerate(scoring.partition_row_groups(staged["row_groups"], 2))
    ]  # fmt: skip
    engine = predictions_db.engine_for(database_url)
    try:
        with tempfile.TemporaryDirectory() as work:
            rows = scoring.prediction_rows(
                [p["uri"] for p in parts], config.name, BATCH, "demo_churn", "1", run_id,
                dt.datetime.now(dt.UTC), config.prediction.chunk_size, work,
            )  # fmt: skip
            written = predictions_db.write_batch(engine, config.prediction.table, config.name, BATCH, rows)
    finally:
        engine.dispose()
    return Attempt(None, None, report, written)


def _in_table(database_url: str) -> pd.DataFrame:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return pd.read_sql_query(
                sa.text("SELECT airflow_run_id, entity_id FROM predictions WHERE batch_key = :b"),
                conn,
                params={"b": BATCH.isoformat()},
            )
    finally:
        engine.dispose()


# --- corruptions of a copy of the data ---------------------------------------------------------------------


def edit(change, day: dt.date = BATCH):
    def apply(root: Path) -> None:
        change(pd.read_parquet(_part(root, day))).to_parquet(_part(root, day), index=False)

    return apply


def edit_accounts(change):
    def apply(root: Path) -> None:
        path = root / "accounts.csv"
        change(pd.read_csv(path)).to_csv(path, index=False)

    return apply


def rows(index, column: str, value):
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[frame.index[index], column] = value
        return frame

    return change


def share_of_rows(share: float, column: str, value):
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        return rows(slice(0, int(round(len(frame) * share))), column, value)(frame)

    return change


def as_text(column: str, value: str, count: int = 1):
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        text = frame[column].astype(str).astype(object)
        text.iloc[:count] = value
        return frame.assign(**{column: text})

    return change


def restamp(stamp: str, count: int):
    return edit(rows(slice(0, count), "snapshot_date", pd.Timestamp(stamp)))


CASES = [
    # What was scored before contracts (issue 13): each now refused before any row is written.
    ("unseen-category-past-the-limit", edit(share_of_rows(0.1, "device", "smart_tv")), "batch validation",
     ["column 'device' has 40 values the champion's contract never saw", "limit 5.00%", WHERE]),
    ("unseen-category-from-the-lookup", edit_accounts(share_of_rows(0.3, "region", "atlantis")), "batch validation",
     ["column 'region' has", "never saw", "atlantis", WHERE]),
    ("timestamps-in-the-future", restamp("2027-01-01", 3), "batch validation",
     ["column 'snapshot_date': 3 in the future of 400 rows", WHERE]),
    ("timestamps-on-another-day", restamp("2026-02-20", 5), "batch validation",
     ["column 'snapshot_date': 5 outside their partition's day of 400 rows", WHERE]),
    ("another-days-file-as-the-batch",
     lambda r: shutil.copyfile(_part(r, "2026-02-19"), _part(r, BATCH)), "batch validation",
     ["column 'snapshot_date': 60 outside their partition's day of 60 rows"]),
    ("integer-becomes-float", edit(lambda f: f.assign(support_tickets=f["support_tickets"] + 0.5)), "batch validation",
     [f"column 'support_tickets' changed type: integer in the champion's contract, float in {WHERE}"]),
    ("outliers-1e12-past-the-limit", edit(share_of_rows(0.05, "monthly_spend", 1e12)), "batch validation",
     ["column 'monthly_spend' has 20 values far outside the champion's range", "limit 1.00%", WHERE]),
    ("target-with-a-new-label", edit(rows(slice(0, 3), "churned", 2)), "batch validation",
     ["target column 'churned' holds 3 labels the champion's contract does not know (known: [0, 1])", WHERE]),
    ("target-as-text", edit(lambda f: f.assign(churned=f["churned"].map({0: "no", 1: "yes"}))), "batch validation",
     ["target column 'churned' holds 400 labels", "changed type: integer in the champion's contract, text"]),
    # Held before, and still.
    ("numbers-as-text-with-commas",
     edit(lambda f: f.assign(monthly_spend=f["monthly_spend"].astype(str).str.replace(".", ","))), "batch validation",
     ["expect_column_values_to_be_in_type_list on monthly_spend", "column 'monthly_spend' changed type: float"]),
    ("text-in-a-numeric-column", edit(as_text("sessions_30d", "n/a")), "batch validation",
     ["column 'sessions_30d' changed type: integer in the champion's contract, text", "n/a"]),
    ("boolean-in-a-count-column", edit(lambda f: f.assign(payment_failures=f["payment_failures"] > 0)),
     "batch validation", ["column 'payment_failures' changed type: integer in the champion's contract, boolean"]),
    ("feature-column-missing", edit(lambda f: f.drop(columns=["device"])), "batch validation",
     ["expect_column_to_exist on device"]),
    ("numeric-column-missing", edit(lambda f: f.drop(columns=["monthly_spend"])), "batch validation",
     ["expect_column_to_exist on monthly_spend"]),
    ("timestamp-column-missing", edit(lambda f: f.drop(columns=["snapshot_date"])), "batch validation",
     ["expect_column_to_exist on snapshot_date"]),
    ("numeric-column-all-null", edit(rows(slice(None), "monthly_spend", np.nan)), "batch validation",
     ["expect_column_values_to_not_be_null on monthly_spend",
      f"column 'monthly_spend' is null in more than validation.max_null_fraction=0.2 of the rows of 1 daily "
      f"partition(s) of 1 ({BATCH} 100.00%) in {WHERE}"]),
    ("categorical-column-all-null", edit(rows(slice(None), "device", None)), "batch validation",
     ["expect_column_values_to_not_be_null on device", "column 'device' is null"]),
    ("nulls-in-half-the-rows", edit(share_of_rows(0.5, "avg_session_minutes", np.nan)), "batch validation",
     ["column 'avg_session_minutes' is null in more than validation.max_null_fraction=0.2"]),
    ("duplicated-ids", edit(lambda f: pd.concat([f, f.head(5)], ignore_index=True)), "batch validation",
     ["expect_compound_columns_to_be_unique on ['account_id', 'snapshot_date']"]),
    ("null-ids", edit(rows(slice(0, 2), "account_id", np.nan)), "batch validation",
     ["expect_column_values_to_not_be_null on account_id"]),
    ("timestamps-that-are-not-timestamps", edit(as_text("snapshot_date", "yesterday", 2)), "batch validation",
     ["column 'snapshot_date': 2 unreadable of 400 rows", "yesterday"]),
    ("negative-spend-against-the-yaml", edit(rows(slice(0, 4), "monthly_spend", -10.0)), "batch validation",
     ["expect_column_values_to_be_between on monthly_spend", "-10.0"]),
    ("plan-outside-the-yaml-set", edit_accounts(share_of_rows(0.02, "plan", "platinum")), "batch validation",
     ["expect_column_values_to_be_in_set on plan", "platinum"]),
    ("infinite-values", edit(rows(slice(0, 2), "avg_session_minutes", np.inf)), "batch validation",
     ["expect_column_values_to_be_between on avg_session_minutes: 2 unexpected"]),
    ("empty-batch", edit(lambda f: f.iloc[0:0]), "stage", [f"has no rows for {BATCH}"]),
    ("batch-file-missing", lambda r: shutil.rmtree(_part(r, BATCH).parent), "stage",
     [f"source 'activity': no scoring input at {{root}}/activity/date={BATCH}/part.parquet"]),
    ("batch-file-not-parquet", lambda r: _part(r, BATCH).write_text("account_id\n1\n"), "stage",
     [f"date={BATCH}/part.parquet cannot be read as parquet"]),
    ("repeated-lookup-key", edit_accounts(lambda f: pd.concat([f, f.head(3)])), "stage",
     ["source 'accounts': join keys ['account_id'] are not unique"]),
    ("lookup-file-gone", lambda r: (r / "accounts.csv").unlink(), "stage", ["accounts.csv does not exist"]),
    ("ids-as-text-cannot-join", edit(lambda f: f.assign(account_id="A" + f["account_id"].astype(str))), "stage",
     ["source 'accounts': cannot join on ['account_id'], the key types differ"]),
]  # fmt: skip

WARN_CASES = [
    ("unseen-category-on-a-few-rows", edit(rows(slice(0, 5), "device", "smart_tv")), "unseen_categories", "device",
     5, ["column 'device' has 5 values the champion's contract never saw", "smart_tv", WHERE]),
    ("outliers-1e12-on-a-few-rows", edit(rows(slice(0, 3), "monthly_spend", 1e12)), "out_of_range",
     "monthly_spend", 3, ["column 'monthly_spend' has 3 values far outside the champion's range", WHERE]),
]  # fmt: skip

# Not corruptions: changes a batch may carry, scored and written as usual.
HARMLESS = [
    ("extra-column", edit(lambda f: f.assign(campaign="spring"))),  # the model reads only its own columns
    ("target-not-known-yet", edit(rows(slice(None), "churned", np.nan))),  # labels arrive later
    ("integers-read-as-floats", edit(lambda f: f.assign(support_tickets=f["support_tickets"].astype("float64")))),
    ("timestamps-late-in-the-day", edit(lambda f: f.assign(snapshot_date=f["snapshot_date"] + pd.Timedelta("23h")))),
]


@pytest.fixture
def corrupted(clean_root, earlier_database, tmp_path):
    def make(change) -> tuple[PipelineConfig, Path, str]:
        root = tmp_path / "demo_churn"
        shutil.copytree(clean_root, root)
        change(root)
        database = tmp_path / "predictions.db"
        shutil.copyfile(earlier_database, database)
        return _config(root), root, f"sqlite:///{database}"

    return make


@pytest.mark.parametrize(("change", "stage", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_corrupted_batch_is_caught_at_its_stage_and_nothing_is_written(change, stage, words, corrupted, scorer,
                                                                        request, record_property):  # fmt: skip
    record_property("catalogue", f"scoring batch: {stage}")  # first: a case that fails counts as tried
    config, root, database = corrupted(change)
    result = attempt(config, scorer, database, f"catalogue__{request.node.callspec.id}")
    assert result.stage == stage, f"expected the {stage} to refuse it, got {result.stage}: {result.error}"
    message = str(result.error)
    for word in words:
        assert word.replace("{root}", str(root)) in message, message
    rows_now = _in_table(database)
    assert len(rows_now) == BATCH_ROWS and set(rows_now["airflow_run_id"]) == {"earlier"}, "the earlier rows stay"


@pytest.mark.parametrize(
    ("change", "rule", "column", "count", "words"), [c[1:] for c in WARN_CASES], ids=[c[0] for c in WARN_CASES]
)
def test_a_batch_with_a_few_odd_values_is_scored_with_the_warning_counted(change, rule, column, count, words,
                                                                        corrupted, scorer, record_property):  # fmt: skip
    record_property("catalogue", "scoring batch: batch validation (warning)")
    config, _, database = corrupted(change)
    result = attempt(config, scorer, database, "catalogue__warned")
    assert result.stage is None, result.error
    checked = result.report["contract"]
    (found,) = [r for r in checked["rules"] if r["rule"] == rule and r["column"] == column]
    assert found["severity"] == "warn" and not found["fails"] and found["count"] == count
    assert checked["counts"]["unseen" if rule == "unseen_categories" else "out_of_range"][column] == count
    warning = next(w for w in checked["warnings"] if f"'{column}'" in w)
    for word in words:
        assert word in warning, warning
    assert set(_in_table(database)["airflow_run_id"]) == {"catalogue__warned"} and result.written == BATCH_ROWS


@pytest.mark.parametrize("change", [c[1] for c in HARMLESS], ids=[c[0] for c in HARMLESS])
def test_harmless_changes_are_scored(change, corrupted, scorer):
    config, _, database = corrupted(change)
    result = attempt(config, scorer, database, "catalogue__harmless")
    assert result.stage is None, result.error
    assert result.report["contract"]["failures"] == []
    assert len(_in_table(database)) == result.written == BATCH_ROWS


def test_a_file_chosen_at_trigger_time_is_held_to_the_future_only(clean_root, scorer, tmp_path):
    """An `input_uri` is scored whole as the batch (its rows may be of any day), but never rows from the future."""
    config = _config(clean_root)
    chosen = pd.read_parquet(_part(clean_root, "2026-02-18"))
    path = clean_root / "activity" / "uploads" / "chosen.parquet"
    path.parent.mkdir(exist_ok=True)
    chosen.to_parquet(path, index=False)
    staged = scoring.stage_batch(config, BATCH, (tmp_path / "b.parquet").as_uri(), str(path))
    assert staged["timestamp_violations"]["other_day"] == 0 and staged["timestamp_rule"] == "not in the future"
    chosen.loc[chosen.index[:2], "snapshot_date"] = pd.Timestamp("2027-01-01")
    chosen.to_parquet(path, index=False)
    staged = scoring.stage_batch(config, BATCH, (tmp_path / "b.parquet").as_uri(), str(path))
    assert staged["timestamp_violations"]["future"] == 2
    frame = storage.read_parquet(staged["uri"])
    with pytest.raises(validation.DataValidationError, match="2 in the future of 60 rows"):
        validation.validate(frame, config, False, scorer.contract, where=WHERE, partitions=staged)


@pytest.mark.airflow
def test_through_airflow_a_type_change_is_refused_and_nothing_is_written(champion, demo_data, tmp_path):
    """After the wiring: validation.validate_batch holds the batch against the champion's contract."""
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    bad = pd.read_parquet(demo_data / "activity" / "date=2026-02-16" / "part.parquet")
    bad["support_tickets"] = bad["support_tickets"] + 0.5
    bad.loc[bad.index[:3], "snapshot_date"] = pd.Timestamp("2027-06-01")
    path = demo_data / "activity" / "uploads" / "contract.parquet"
    path.parent.mkdir(exist_ok=True)
    bad.to_parquet(path, index=False)
    command = [sys.executable, "-m", "airflow", "dags", "test", "demo_churn__batch_predict", "2026-02-16",
               "--conf", f'{{"input_uri": "{path}"}}']  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=900, env={**os.environ, "AIRFLOW_CONN_PREDICTIONS_DB": url}
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    errors = "\n".join(line for line in output.splitlines() if "Error" in line)[-3000:]
    assert (
        "column 'support_tickets' changed type: integer in the champion's contract, float in scoring batch" in output
    ), errors
    assert "column 'snapshot_date': 3 in the future" in output, errors
    assert "[DAG TEST] starting task_id=write.write_predictions" not in output
    engine = sa.create_engine(url)
    assert "predictions" not in sa.inspect(engine).get_table_names() or _in_table(url).empty
