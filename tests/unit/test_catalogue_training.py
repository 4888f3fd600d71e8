"""The corruption catalogue, training windows: each way the demo's window breaks, the stage that catches it.

Each case corrupts a copy of the demo data one way and runs the retrain's first tasks as they run in Airflow:
`snapshot` (ingestion.snapshot: missing partitions, unreadable files, join keys, timestamps that are not
timestamps), `validation` (validation.validate: the GX suite plus the champion's data contract, judged on the
snapshot as read back, with the partition record it carries) and, only when both pass, the features task's
first write (the contract of the training split). Every case asserts the stage, the words naming the column,
rule and window, and that nothing past the failed stage was written. Cases that are warnings by default
(unseen categories, values far outside the range) assert the warning and its count, and a variant past the
share limit fails. The totals are printed at the end of the session (tests/conftest.py).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from lifecycle.config.pipeline import PipelineConfig
from lifecycle.devtools import demo_data
from lifecycle.ml import contract, ingestion, validation
from lifecycle.ml.features import SplitError, time_split
from lifecycle.persistence import storage

DEMO = Path(__file__).resolve().parents[2] / "include" / "pipelines" / "demo_churn.yaml"
AS_OF = dt.date(2026, 2, 20)
WINDOW = 35
START = AS_OF - dt.timedelta(days=WINDOW)  # 2026-01-16
WHERE = f"training window {START}..{AS_OF}"
DAY = "2026-02-03"  # the partition most cases corrupt, inside the window
ROWS = 60


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("catalogue-training") / "demo_churn"
    demo_data.write(root, START - dt.timedelta(days=5), AS_OF + dt.timedelta(days=2), ROWS, label_delay_days=None)
    return root


def _config(root: Path) -> PipelineConfig:
    data = yaml.safe_load(DEMO.read_text().replace("${DATA_ROOT}/demo_churn", str(root)))
    return PipelineConfig.model_validate(data)


@pytest.fixture(scope="module")
def champion_contract(clean_root) -> dict[str, Any]:
    """The champion's contract: what the features task records from the clean window's training split."""
    config = _config(clean_root)
    frame = ingestion.load_window(config, START, AS_OF)
    return contract.derive(time_split(frame, config)["train"], config)


# --- corruptions of a copy of the data ---------------------------------------------------------------------


def _part(root: Path, day: str) -> Path:
    return root / "activity" / f"date={day}" / "part.parquet"


def _window_days() -> list[str]:
    return [d.isoformat() for d in ingestion.days(START, AS_OF)]


def edit(day: str, change):
    def apply(root: Path) -> None:
        frame = pd.read_parquet(_part(root, day))
        change(frame).to_parquet(_part(root, day), index=False)

    return apply


def edit_all(change):
    def apply(root: Path) -> None:
        for day in _window_days():
            edit(day, change)(root)

    return apply


def edit_accounts(change):
    def apply(root: Path) -> None:
        path = root / "accounts.csv"
        change(pd.read_csv(path)).to_csv(path, index=False)

    return apply


def rows(index, column: str, value):
    """Set `column` to `value` on the rows at positions `index` (a slice or a list)."""

    def change(frame: pd.DataFrame) -> pd.DataFrame:
        if column in frame.columns and not isinstance(value, (int, float)) and frame[column].dtype != object:
            frame[column] = frame[column].astype(object)
        frame.loc[frame.index[index], column] = value
        return frame

    return change


def as_text(column: str, value: str, count: int = 1):
    """The column as text (one partition's export gone wrong), with `value` on the first `count` rows."""

    def change(frame: pd.DataFrame) -> pd.DataFrame:
        text = frame[column].astype(str).astype(object)
        text.iloc[:count] = value
        return frame.assign(**{column: text})

    return change


def share_of_rows(share: float, column: str, value):
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        return rows(slice(0, int(round(len(frame) * share))), column, value)(frame)

    return change


def remove(*days: str):
    def apply(root: Path) -> None:
        for day in days:
            shutil.rmtree(_part(root, day).parent)

    return apply


def both(*changes):
    def apply(root: Path) -> None:
        for change in changes:
            change(root)

    return apply


def write_bytes(day: str, data: bytes):
    def apply(root: Path) -> None:
        _part(root, day).write_bytes(data)

    return apply


def restamp(day: str, stamp: str, count: int = 3):
    return edit(day, rows(slice(0, count), "snapshot_date", pd.Timestamp(stamp)))


def copy_partition(source_day: str, target_day: str):
    def apply(root: Path) -> None:
        shutil.copyfile(_part(root, source_day), _part(root, target_day))

    return apply


def _days(first: str, count: int) -> list[str]:
    start = dt.date.fromisoformat(first)
    return [(start + dt.timedelta(days=i)).isoformat() for i in range(count)]


TEN_DAYS = _days("2026-01-25", 10)

# (case id, corruption, stage, words the error must hold) -- the stage that must catch it
CASES = [
    # What got through before contracts (issue 13): each now caught.
    ("nulls-concentrated-in-one-partition", edit(DAY, rows(slice(None), "monthly_spend", np.nan)), "validation",
     ["column 'monthly_spend' is null in more than validation.max_null_fraction=0.2", f"{DAY} 100.00%", WHERE]),
    ("categorical-nulls-in-one-partition", edit(DAY, rows(slice(0, 30), "device", None)), "validation",
     ["column 'device' is null", "1 daily partition(s) of 35", f"{DAY} 5", WHERE]),
    ("column-missing-from-one-partition", edit(DAY, lambda f: f.drop(columns=["plan_change"])), "validation",
     ["column 'plan_change' is null", f"{DAY} 100.00%"]),
    ("unseen-category-past-the-limit", edit_all(share_of_rows(0.1, "device", "smart_tv")), "validation",
     ["column 'device' has", "values the champion's contract never saw", "limit 5.00%", "smart_tv", WHERE]),
    ("unseen-category-from-the-lookup", edit_accounts(share_of_rows(0.3, "region", "atlantis")), "validation",
     ["column 'region' has", "never saw", "atlantis"]),
    ("timestamps-in-the-future", restamp(DAY, "2027-05-01"), "validation",
     ["column 'snapshot_date': 3 in the future", "partition's day", WHERE]),
    ("timestamps-on-another-day-in-the-window", restamp(DAY, "2026-02-05", 5), "validation",
     ["column 'snapshot_date': 5 outside their partition's day of 2100 rows", WHERE]),
    ("timestamps-on-a-day-before-the-window", restamp(DAY, "2025-06-01", 4), "validation",
     ["4 outside their partition's day", "2025-06-01"]),
    ("partition-copied-under-the-wrong-day", copy_partition("2026-02-02", DAY), "validation",
     [f"{ROWS} outside their partition's day", "2026-02-02"]),
    ("timestamps-a-minute-past-midnight", restamp(DAY, "2026-02-04 00:01", 2), "validation",
     ["2 outside their partition's day"]),
    ("empty-partition", edit(DAY, lambda f: f.iloc[0:0]), "validation",
     ["1 daily partition(s) of 35 of source 'activity' exist but hold no rows", DAY, WHERE]),
    ("two-empty-partitions", both(edit(DAY, lambda f: f.iloc[0:0]), edit("2026-02-10", lambda f: f.iloc[0:0])),
     "validation", ["2 daily partition(s) of 35", "2026-02-03, 2026-02-10"]),
    ("integer-becomes-float", edit(DAY, lambda f: f.assign(support_tickets=f["support_tickets"] + 0.5)), "validation",
     [f"column 'support_tickets' changed type: integer in the champion's contract, float in {WHERE}"]),
    ("integer-becomes-float-in-the-lookup",
     edit_accounts(lambda f: f.assign(tenure_months=f["tenure_months"].astype(str) + " months")), "validation",
     ["column 'tenure_months' changed type: float in the champion's contract, text"]),
    ("text-in-a-numeric-column", edit(DAY, as_text("sessions_30d", "n/a")), "snapshot",
     ["mixes value types within a column", "column 'sessions_30d' holds number, str"]),
    ("numbers-as-text-with-commas",
     edit(DAY, lambda f: f.assign(monthly_spend=f["monthly_spend"].astype(str).str.replace(".", ","))), "snapshot",
     ["column 'monthly_spend' holds number, str"]),
    ("numbers-as-text-everywhere", edit_all(as_text("days_since_last_login", "unknown")), "validation",
     ["expect_column_values_to_be_in_type_list on days_since_last_login",
      "column 'days_since_last_login' changed type: integer in the champion's contract, text", "unknown"]),
    ("boolean-in-a-count-column", edit_all(lambda f: f.assign(payment_failures=f["payment_failures"] > 0)),
     "validation", [f"column 'payment_failures' changed type: integer in the champion's contract, boolean in {WHERE}"]),
    ("outliers-1e12-past-the-limit", edit_all(share_of_rows(0.05, "monthly_spend", 1e12)), "validation",
     ["column 'monthly_spend' has", "values far outside the champion's range", "limit 1.00%", "1000000000000.0"]),
    ("outliers-1e12-in-an-integer-column", edit_all(share_of_rows(0.05, "support_tickets", 10**12)), "validation",
     ["column 'support_tickets' has", "far outside"]),
    ("infinite-values", edit(DAY, rows(slice(0, 2), "avg_session_minutes", np.inf)), "validation",
     ["expect_column_values_to_be_between on avg_session_minutes: 2 unexpected"]),
    ("one-missing-partition", remove(DAY), "snapshot",
     ["daily partitions missing between 2026-01-16 and 2026-02-20", "validation.max_missing_partitions=0",
      f"source 'activity': 1 missing ({DAY})"]),
    ("ten-missing-partitions", remove(*TEN_DAYS), "snapshot", ["source 'activity': 10 missing (2026-01-25, "]),
    ("every-partition-missing", remove(*_window_days()), "snapshot", ["source 'activity': 35 missing"]),
    ("new-target-label", edit(DAY, rows(slice(0, 3), "churned", 2)), "validation",
     ["expect_column_distinct_values_to_equal_set on churned",
      "target column 'churned' holds 3 labels the champion's contract does not know (known: [0, 1])", WHERE]),
    ("target-as-text", edit_all(lambda f: f.assign(churned=f["churned"].map({0: "no", 1: "yes"}))), "validation",
     ["churned", "labels the champion's contract does not know", "changed type: integer"]),
    ("target-missing-on-some-rows", edit(DAY, rows(slice(0, 5), "churned", np.nan)), "validation",
     ["expect_column_values_to_not_be_null on churned"]),
    ("a-single-class", edit_all(lambda f: f.assign(churned=0)), "validation",
     ["expect_column_distinct_values_to_equal_set on churned"]),
    ("duplicate-ids-within-a-day", edit(DAY, lambda f: pd.concat([f, f.head(5)], ignore_index=True)), "validation",
     ["expect_compound_columns_to_be_unique on ['account_id', 'snapshot_date']"]),
    ("null-ids", edit(DAY, rows(slice(0, 3), "account_id", np.nan)), "validation",
     ["expect_column_values_to_not_be_null on account_id"]),
    ("negative-spend-against-the-yaml", edit(DAY, rows(slice(0, 4), "monthly_spend", -10.0)), "validation",
     ["expect_column_values_to_be_between on monthly_spend", "-10.0"]),
    ("plan-outside-the-yaml-set", edit_accounts(share_of_rows(0.01, "plan", "platinum")), "validation",
     ["expect_column_values_to_be_in_set on plan", "platinum"]),
    ("feature-dropped-everywhere", edit_all(lambda f: f.drop(columns=["device"])), "validation",
     ["expect_column_to_exist on device"]),
    ("feature-null-everywhere", edit_all(rows(slice(None), "avg_session_minutes", np.nan)), "validation",
     ["expect_column_values_to_not_be_null on avg_session_minutes", "column 'avg_session_minutes' is null",
      "35 daily partition(s) of 35"]),
    ("too-few-rows", edit_all(lambda f: f.head(10)), "validation", ["expect_table_row_count_to_be_between"]),
    ("timestamps-that-are-not-timestamps", edit(DAY, as_text("snapshot_date", "yesterday", 2)), "snapshot",
     ["source 'activity': column 'snapshot_date' has 2 values that are not timestamps", "yesterday"]),
    ("timestamp-column-renamed-in-one-partition",
     edit(DAY, lambda f: f.rename(columns={"snapshot_date": "date"})), "snapshot",
     [f"partition {'{root}'}/activity/date={DAY}/part.parquet has no timestamp column 'snapshot_date'"]),
    ("partition-not-parquet", write_bytes(DAY, b"id,spend\n1,2\n"), "snapshot",
     [f"date={DAY}/part.parquet cannot be read as parquet"]),
    ("truncated-parquet", lambda r: _part(r, DAY).write_bytes(_part(r, DAY).read_bytes()[:200]), "snapshot",
     ["cannot be read as parquet"]),
    ("repeated-join-key", edit_accounts(lambda f: pd.concat([f, f.head(2)])), "snapshot",
     ["source 'accounts': join keys ['account_id'] are not unique"]),
    ("join-key-renamed", edit_accounts(lambda f: f.rename(columns={"account_id": "id"})), "snapshot",
     ["source 'accounts': join keys ['account_id'] are missing on one side"]),
    ("ids-as-text-cannot-join", edit_all(lambda f: f.assign(account_id="A" + f["account_id"].astype(str))), "snapshot",
     ["source 'accounts': cannot join on ['account_id'], the key types differ"]),
    ("lookup-file-gone", lambda r: (r / "accounts.csv").unlink(), "snapshot", ["accounts.csv does not exist"]),
    ("lookup-file-empty", lambda r: (r / "accounts.csv").write_text(""), "snapshot",
     ["source 'accounts': join keys ['account_id'] are missing on one side"]),
]  # fmt: skip

# Warnings by default: caught and counted, the run goes on (each has a failing variant past the limit above).
WARN_CASES = [
    ("unseen-category-on-a-few-rows", edit(DAY, rows(slice(0, 5), "device", "smart_tv")), "unseen_categories",
     "device", 5, ["column 'device' has 5 values the champion's contract never saw", "smart_tv", WHERE]),
    ("outliers-1e12-on-a-few-rows", edit(DAY, rows(slice(0, 3), "monthly_spend", 1e12)), "out_of_range",
     "monthly_spend", 3, ["column 'monthly_spend' has 3 values far outside the champion's range", WHERE]),
]  # fmt: skip


# --- one attempt: the retrain's first tasks, as Airflow runs them ------------------------------------------


@dataclass
class Attempt:
    stage: str | None  # the stage that refused the window; None: it went through
    error: Exception | None
    report: dict[str, Any] | None
    snapshot_uri: str
    features_uri: str


def attempt(config: PipelineConfig, champion: dict[str, Any], run_id: str) -> Attempt:
    snapshot_uri = storage.artifact_uri(config.name, run_id, "raw", "snapshot.parquet")
    features_uri = storage.artifact_uri(config.name, run_id, "features", "contract.json")

    def result(stage, error=None, report=None) -> Attempt:
        return Attempt(stage, error, report, snapshot_uri, features_uri)

    try:
        snap = ingestion.snapshot(config, AS_OF, WINDOW, snapshot_uri)
    except ingestion.SourceError as err:
        return result("snapshot", err)
    frame = storage.read_parquet(snap["uri"], snap["sha256"])  # as the validation task reads it: the record too
    try:
        report = validation.validate(frame, config, contract=champion, where=WHERE)
    except validation.DataValidationError as err:
        return result("validation", err, err.report)
    try:
        contract.record(config, run_id, time_split(frame, config)["train"])  # the features task's first write
    except SplitError as err:
        return result("features", err, report)
    return result(None, None, report)


@pytest.fixture
def corrupted(clean_root, tmp_path):
    def make(change) -> tuple[PipelineConfig, Path]:
        root = tmp_path / "demo_churn"
        shutil.copytree(clean_root, root)
        change(root)
        return _config(root), root

    return make


def test_the_clean_window_goes_through(clean_root, champion_contract):
    config = _config(clean_root)
    result = attempt(config, champion_contract, "catalogue__clean")
    assert result.stage is None, result.error
    checked = result.report["contract"]
    assert checked["success"] and checked["contract"] and not [r for r in checked["rules"] if r["fails"]]
    assert storage.exists(result.features_uri)


@pytest.mark.parametrize(("change", "stage", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_corrupted_window_is_caught_at_its_stage(change, stage, words, corrupted, champion_contract, request,
                                                  record_property):  # fmt: skip
    record_property("catalogue", f"training window: {stage}")  # first: a case that fails counts as tried
    config, root = corrupted(change)
    result = attempt(config, champion_contract, f"catalogue__{request.node.callspec.id}")
    assert result.stage == stage, f"expected the {stage} to refuse it, got {result.stage}: {result.error}"
    message = str(result.error)
    for word in words:
        assert word.replace("{root}", str(root)) in message, message
    # Nothing past the failed stage: no snapshot when ingestion refused, no features when validation did.
    assert not storage.exists(result.features_uri)
    if stage == "snapshot":
        assert not storage.exists(result.snapshot_uri)


@pytest.mark.parametrize(
    ("change", "rule", "column", "count", "words"), [c[1:] for c in WARN_CASES], ids=[c[0] for c in WARN_CASES]
)
def test_a_window_with_a_few_odd_values_is_warned_and_counted(change, rule, column, count, words, corrupted,
                                                            champion_contract, request, record_property):  # fmt: skip
    record_property("catalogue", "training window: validation (warning)")
    config, _ = corrupted(change)
    result = attempt(config, champion_contract, f"catalogue__{request.node.callspec.id}")
    assert result.stage is None, result.error
    checked = result.report["contract"]
    (found,) = [r for r in checked["rules"] if r["rule"] == rule and r["column"] == column]
    assert found["severity"] == "warn" and not found["fails"] and found["count"] == count
    counted = checked["counts"]["unseen" if rule == "unseen_categories" else "out_of_range"]
    assert counted[column] == count  # what the drift report can show
    warning = next(w for w in checked["warnings"] if f"'{column}'" in w)
    for word in words:
        assert word in warning, warning
    assert storage.exists(result.features_uri)  # a warning does not stop the run


def test_a_first_training_without_a_champion_still_holds_the_reference_free_rules(corrupted, record_property):
    """No champion, no contract: nulls per partition, empty partitions and timestamps are still judged."""
    record_property("catalogue", "training window: validation")
    record_property("catalogue_extra", 1)  # two corruptions in one window
    config, _ = corrupted(both(edit(DAY, lambda f: f.iloc[0:0]), restamp("2026-02-04", "2027-01-01", 2)))
    result = attempt(config, None, "catalogue__first")
    assert result.stage == "validation"
    message = str(result.error)
    assert "1 daily partition(s) of 35 of source 'activity' exist but hold no rows (2026-02-03)" in message
    assert "column 'snapshot_date': 2 in the future" in message
    assert not storage.exists(result.features_uri)


@pytest.mark.airflow
def test_through_airflow_a_type_change_fails_the_retrain_at_validation(champion, demo_data, tmp_path, dag_runner):
    """After the wiring: the champion's run holds its contract, and a window whose integer column turned
    float fails validation.validate_snapshot naming it; no MLflow run starts, the champion stays."""
    import mlflow

    from lifecycle.registry.tracking import champion as champion_version
    from lifecycle.registry.tracking import mlflow_client

    version = champion_version("demo_churn")
    recorded = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/{contract.ARTIFACT}")
    assert recorded["columns"]["support_tickets"]["kind"] == "integer"
    root = tmp_path / "data"
    shutil.copytree(demo_data, root / "demo_churn")
    for part in sorted((root / "demo_churn" / "activity").glob("date=*/part.parquet")):
        frame = pd.read_parquet(part)
        frame.assign(support_tickets=frame["support_tickets"] + 0.5).to_parquet(part, index=False)
    client = mlflow_client()
    experiment = client.get_experiment_by_name("lifecycle/demo_churn").experiment_id
    runs_before = len(client.search_runs([experiment], "tags.`airflow.dag_id` = 'demo_churn__retrain'"))
    os.environ["DATA_ROOT"] = str(root)
    try:
        result: subprocess.CompletedProcess = dag_runner("demo_churn__retrain", "2026-02-14", {"reason": "contract"})
    finally:
        os.environ["DATA_ROOT"] = str(demo_data.parent)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "column 'support_tickets' changed type: integer in the champion's contract, float in training window" in (
        output
    )
    assert "[DAG TEST] starting task_id=features.prepare_features" not in output
    assert len(client.search_runs([experiment], "tags.`airflow.dag_id` = 'demo_churn__retrain'")) == runs_before
    assert str(champion_version("demo_churn").version) == str(version.version)
