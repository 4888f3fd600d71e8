"""`python -m lifecycle check` on the demo data, and `python -m lifecycle run` through `airflow dags test`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]
DEMO_YAML = REPO / "include" / "pipelines" / "demo_churn.yaml"


def lifecycle(*args: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lifecycle", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        cwd=REPO,
    )


def test_check_passes_on_the_demo_data(demo_data):
    result = lifecycle("check", "include/pipelines/demo_churn.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    # The data ends on 2026-03-01: by default the check reads the window tomorrow's retrain would.
    assert "(35 days before the as-of date 2026-03-02)" in result.stdout
    assert "35/35 partitions; 21000 rows" in result.stdout
    assert result.stdout.rstrip().endswith("OK: 0 error(s), 0 warning(s)")


def test_check_reads_a_sql_source_over_an_airflow_connection_and_fails_on_errors(demo_data, tmp_path):
    warehouse = tmp_path / "warehouse.db"
    engine = sa.create_engine(f"sqlite:///{warehouse}")
    pd.read_csv(demo_data / "accounts.csv").to_sql("accounts", engine, index=False)
    engine.dispose()
    config = yaml.safe_load(DEMO_YAML.read_text())
    config["sources"][1] = {"name": "accounts", "sql": "select * from accounts", "conn_id": "warehouse",
                            "join": {"keys": ["account_id"]}}  # fmt: skip
    config["features"]["numeric"][0] = "sessions_3d"  # a typo
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(config))

    result = lifecycle("check", str(path), "--as-of", "2026-02-20", AIRFLOW_CONN_WAREHOUSE=f"sqlite:///{warehouse}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"source +accounts: sql; connection warehouse; 20000 rows", result.stdout), result.stdout
    assert "feature 'sessions_3d' is in no source (did you mean ['sessions_30d']?)" in result.stdout
    assert "FAILED: 1 error(s), 0 warning(s)" in result.stdout
    assert f"set PIPELINES_DIR={tmp_path}" in result.stderr, "a file outside PIPELINES_DIR gets a note"


def test_run_retrains_once_in_the_environment_it_is_given(demo_data, airflow_db, tmp_path):
    # Its own MLflow and artifact store: the session's champion (version 1) stays what other tests expect.
    env = {
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(tmp_path / "mlartifacts"),
        "ARTIFACT_ROOT": f"file://{tmp_path / 'artifacts'}",
    }
    conf = {"grid": {"num_leaves": [7]}, "search": "grid", "reason": "cli test"}
    result = lifecycle("run", "demo_churn__retrain", "2026-02-12", "--conf", json.dumps(conf), timeout=900, **env)
    out = result.stdout
    assert result.returncode == 0, out[-4000:] + result.stderr[-2000:]
    assert "[DAG TEST] starting task_id=training.grid_search" in out, "Airflow's output is streamed"
    summary = out[out.index("\n== demo_churn__retrain 2026-02-12: success") :]
    for task in ("ingestion.snapshot", "validation.run_suite", "training.grid_search", "evaluation.promote"):
        assert re.search(rf"success +{re.escape(task)}\n", summary), summary
    assert f"artifacts: file://{tmp_path}/artifacts/demo_churn/manual__" in summary
    assert "(evaluation, features, raw, validation)" in summary and "gate: " in summary
    assert f"MLflow: experiment lifecycle/demo_churn at sqlite:///{tmp_path}/mlflow.db" in summary
    assert "next: make run DAG=demo_churn__batch_predict DATE=2026-02-12" in summary
    assert list((tmp_path / "artifacts" / "demo_churn").glob("*/raw/snapshot.parquet"))
    assert (Path(os.environ["AIRFLOW_HOME"]) / "db-migrate.log").exists(), "the session's Airflow, not .local/"


def test_run_names_the_dags_it_knows(tmp_path):
    result = lifecycle("run", "demo_churn__retrian", "2026-02-12", PIPELINES_DIR=str(REPO / "include" / "pipelines"))
    assert result.returncode == 1
    assert "no DAG 'demo_churn__retrian'" in result.stdout and "'demo_churn__retrain'" in result.stdout
