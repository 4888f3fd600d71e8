"""The retrain DAG end to end through Airflow (`airflow dags test`), on the embedded stack."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.airflow
DAG_ID = "demo_churn__retrain"


def _mlflow():
    from lifecycle.registry.tracking import mlflow_client

    return mlflow_client()


def _latest_parent_run():
    client = _mlflow()
    experiment = client.get_experiment_by_name("lifecycle/demo_churn")
    runs = client.search_runs(
        [experiment.experiment_id],
        "tags.`airflow.dag_id` = 'demo_churn__retrain'",
        order_by=["attributes.start_time DESC"],
    )
    return runs[0], len(runs)


def _champion():
    from lifecycle.registry.tracking import champion

    return champion("demo_churn")


def _copy_data(demo_data: Path, tmp_path: Path, mutate) -> Path:
    """A copy of the demo data with every activity partition changed by `mutate`."""
    root = tmp_path / "data"
    shutil.copytree(demo_data, root / "demo_churn")
    for part in sorted((root / "demo_churn" / "activity").glob("date=*/part.parquet")):
        frame = pd.read_parquet(part)
        mutate(frame).to_parquet(part, index=False)
    return root


@pytest.fixture(scope="module")
def first_run(champion):
    return champion


def test_first_run_promotes_a_champion_with_lineage(first_run):
    from lifecycle.persistence import storage

    version = _champion()
    assert version is not None and str(version.version) == "1"
    run, _ = _latest_parent_run()
    tags = run.data.tags
    assert tags["gate.verdict"] == "promote"
    assert tags["trigger.reason"] == "first champion"
    # Lineage: the model version names the snapshot it was trained on, and the snapshot is there.
    assert version.tags["snapshot.sha256"] == tags["snapshot.sha256"]
    assert storage.exists(version.tags["snapshot.uri"])
    decision = storage.read_json(version.tags["gate.decision_uri"])
    assert decision["verdict"] == "promote" and decision["champion"] is None
    assert decision["challenger"]["roc_auc"] > decision["baseline"]["roc_auc"]
    report = version.tags["gate.decision_uri"].replace("decision.json", "report.html")
    assert b"<table>" in storage.read_bytes(report)
    assert storage.read_bytes(report.replace(".html", ".png")).startswith(b"\x89PNG")
    # Every candidate of the search is a nested run under the parent.
    client = _mlflow()
    children = client.search_runs(
        [run.info.experiment_id], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'", max_results=500
    )
    assert len(children) >= 24
    assert all("mean_cv_score" in c.data.metrics for c in children)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/decision.json", "evaluation/report.html", "evaluation/report.png"} <= artifacts


def test_champion_scores_raw_rows_through_its_signature(first_run, demo_data):
    import mlflow

    from lifecycle.registry.tracking import champion_uri

    rows = pd.read_parquet(demo_data / "activity" / "date=2026-02-15" / "part.parquet").head(50)
    rows = rows.merge(pd.read_csv(demo_data / "accounts.csv"), on="account_id", how="left")
    model = mlflow.pyfunc.load_model(champion_uri("demo_churn"))
    scores = np.asarray(model.predict(rows.drop(columns=["churned"])))
    assert scores.shape[0] == 50 and np.all((scores >= 0) & (scores <= 1))
    assert {i.name for i in model.metadata.get_input_schema().inputs} >= {"monthly_spend", "device", "plan"}


def test_worse_challenger_is_rejected_and_champion_stays(first_run, demo_data, tmp_path, dag_runner):
    rng = np.random.default_rng(0)

    def shuffle_labels(frame: pd.DataFrame) -> pd.DataFrame:
        frame["churned"] = rng.permutation(frame["churned"].to_numpy())
        return frame

    data_root = _copy_data(demo_data, tmp_path, shuffle_labels)
    before = _champion()
    os.environ["DATA_ROOT"] = str(data_root)
    try:
        conf = {"reason": "shuffled labels", "window_days": 30, "grid": {"num_leaves": [7, 15], "n_estimators": [50]}}
        result = dag_runner(DAG_ID, "2026-02-11", conf)
    finally:
        os.environ["DATA_ROOT"] = str(demo_data.parent)
    assert result.returncode == 0, result.stdout[-4000:]
    run, _ = _latest_parent_run()
    assert run.data.tags["gate.verdict"] == "reject"
    assert "misses the floor" in run.data.tags["gate.reason"]
    # The trigger form's values are recorded with the run.
    params = json.loads(run.data.tags["trigger.params"])
    assert params["window_days"] == 30 and params["grid"] == {"num_leaves": [7, 15], "n_estimators": [50]}
    assert run.data.tags["snapshot.window"] == "2026-01-12..2026-02-11"
    after = _champion()
    assert str(after.version) == str(before.version) == "1"


def test_invalid_data_fails_validation_and_nothing_downstream_runs(first_run, demo_data, tmp_path, dag_runner):
    def break_data(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[frame.index[:5], "monthly_spend"] = -10.0
        return frame.drop(columns=["device"])

    data_root = _copy_data(demo_data, tmp_path, break_data)
    _, runs_before = _latest_parent_run()
    os.environ["DATA_ROOT"] = str(data_root)
    try:
        result = dag_runner(DAG_ID, "2026-02-12", {"reason": "broken data"})
    finally:
        os.environ["DATA_ROOT"] = str(demo_data.parent)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "DataValidationError" in output and "expect_column_to_exist on device" in output
    _, runs_after = _latest_parent_run()
    assert runs_after == runs_before, "no MLflow run may start for data that failed validation"
    assert str(_champion().version) == "1"
    reports = [
        json.loads(p.read_text())
        for p in Path(os.environ["ARTIFACT_ROOT"].removeprefix("file://")).glob("demo_churn/*/validation/report.json")
    ]
    failed = [r for r in reports if not r["success"]]
    assert failed, "the failing validation report is saved with the run's artifacts"
    columns = {str(f["column"]) for f in failed[-1]["failures"]}
    assert {"device", "monthly_spend"} <= columns
    spend = next(f for f in failed[-1]["failures"] if f["column"] == "monthly_spend")
    assert -10.0 in spend["sample_values"]


def test_a_task_that_fails_for_good_ends_its_mlflow_run_failed_naming_it(first_run, dag_runner):
    """num_leaves 1 passes the form's schema but LightGBM refuses it: retried, then the run ends FAILED."""
    _, runs_before = _latest_parent_run()
    conf = {"reason": "impossible grid", "grid": {"num_leaves": [1]}, "search": "grid"}
    result = dag_runner(DAG_ID, "2026-02-13", conf)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "retryable: " in output, "the log says the error is worth a retry"
    run, runs_after = _latest_parent_run()
    assert runs_after == runs_before + 1, "retries reuse the run: one MLflow run per Airflow run"
    assert run.data.tags["trigger.reason"] == "impossible grid"
    assert run.info.status == "FAILED"
    assert run.data.tags["failed_task"] == "training.grid_search"
    assert "num_leaves" in run.data.tags["failed_error"]
    assert str(_champion().version) == "1"
