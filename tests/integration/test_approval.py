"""Gate mode `approve`: a challenger that passes waits for a person in Airflow (human-in-the-loop), and the
answer and who gave it are recorded with the model version. Runs on a real scheduler and api-server."""

from __future__ import annotations

import os
import time
import urllib.parse
from pathlib import Path

import pytest

from lifecycle.devtools import local_airflow as la

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]
DAG_ID = "demo_churn__retrain"


def _state(airflow, run_id: str, task_id: str) -> str | None:
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}"
    try:
        return airflow.api("GET", path).get("state")
    except la.AirflowApiError as err:
        if err.status == 404:
            return None
        raise


def test_a_person_approves_the_promotion_and_is_recorded(demo_data, tmp_path):
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    text = (REPO / "include" / "pipelines" / "demo_churn.yaml").read_text()
    assert "  mode: enforce" in text
    (pipelines / "demo_churn.yaml").write_text(text.replace("  mode: enforce", "  mode: approve"))
    env = {
        **os.environ,
        "PIPELINES_DIR": str(pipelines),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "mlartifacts"),
        "ARTIFACT_ROOT": f"file://{tmp_path / 'artifacts'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
    }
    conf = {"as_of_date": "2026-02-10", "reason": "approval test", "grid": {"num_leaves": [15], "n_estimators": [100]}}
    with la.running_airflow(env, log_dir=tmp_path / "logs") as airflow:
        la.wait_for_dag(airflow, DAG_ID)
        la.unpause(airflow, DAG_ID)
        run_id = la.trigger(airflow, DAG_ID, conf)["dag_run_id"]
        deadline = time.monotonic() + 900
        while (state := _state(airflow, run_id, "evaluation.approve")) not in ("awaiting_input", "deferred"):
            assert state not in ("failed", "upstream_failed", "skipped"), f"approval task is {state}"
            assert time.monotonic() < deadline, f"the approval request never came (last state {state})"
            time.sleep(3)
        details = f"/api/v2/dags/{DAG_ID}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/evaluation.approve/-1/hitlDetails"
        request = airflow.api("GET", details)
        assert request["options"] == ["Approve", "Reject"]
        assert "no champion yet; floors and baseline passed" in request["body"]
        from lifecycle.registry.tracking import champion

        os.environ["MLFLOW_TRACKING_URI"], saved = env["MLFLOW_TRACKING_URI"], os.environ["MLFLOW_TRACKING_URI"]
        try:
            assert champion("demo_churn") is None, "nothing is promoted before a person answers"
            la.wait_until_parked(airflow, DAG_ID, "evaluation.approve", run_id)  # else Airflow may ask again
            airflow.api("PATCH", details, {"chosen_options": ["Approve"]})
            run = la.wait_for_run(airflow, DAG_ID, run_id, timeout=600)
            assert run["state"] == "success"
            version = champion("demo_churn")
        finally:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    assert version is not None and str(version.version) == "1"
    assert version.tags["gate.approval"] == "approved"
    assert version.tags["gate.approved_by"] == airflow.username
