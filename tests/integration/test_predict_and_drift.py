"""Batch prediction and drift checks end to end through Airflow, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.airflow
PREDICT, DRIFT = "demo_churn__batch_predict", "demo_churn__drift_check"


def _airflow_uri(sqlalchemy_url: str) -> str:
    """An Airflow connection URI for a SQLAlchemy URL (Airflow knows postgresql://, not +psycopg)."""
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")


def _run(dag_id: str, date: str, conf: dict | None = None, **env: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "airflow", "dags", "test", dag_id, date]
    if conf:
        command += ["--conf", json.dumps(conf)]
    return subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ, **env})


def _rows(url: str, batch_key: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return pd.read_sql_query(
                sa.text(
                    "SELECT * FROM predictions WHERE pipeline = 'demo_churn' AND batch_key = :b ORDER BY entity_id"
                ),
                conn,
                params={"b": batch_key},
            )
    finally:
        engine.dispose()


def test_no_champion_fails_clearly_and_writes_nothing(demo_data, airflow_db, tmp_path):
    database = f"sqlite:///{tmp_path / 'predictions.db'}"
    result = _run(
        PREDICT,
        "2026-02-15",
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'empty-mlflow.db'}",
        AIRFLOW_CONN_PREDICTIONS_DB=database,
    )
    assert result.returncode != 0
    assert "has no champion: models:/demo_churn@champion is not set" in result.stdout + result.stderr
    assert not (tmp_path / "predictions.db").exists() or sa.inspect(sa.create_engine(database)).get_table_names() == []


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_batch_is_scored_by_mapped_partitions_and_written_once(dialect, champion, demo_data, tmp_path, request):
    if dialect == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'predictions.db'}"
    env = {"AIRFLOW_CONN_PREDICTIONS_DB": _airflow_uri(url)}
    first = _run(PREDICT, "2026-02-15", {"partitions": 2}, **env)
    assert first.returncode == 0, first.stdout[-4000:]
    assert first.stdout.count("[DAG TEST] starting task_id=prediction.score_partition") == 2, "two mapped partitions"
    rows = _rows(url, "2026-02-15")
    assert len(rows) == 600 and rows["entity_id"].is_unique
    assert set(rows["model_version"]) == {"1"} and set(rows["model_name"]) == {"demo_churn"}
    assert rows["score"].between(0, 1).all() and set(rows["label"]) <= {"0", "1"}
    first_run_id = rows["airflow_run_id"].iloc[0]

    again = _run(PREDICT, "2026-02-15", {"partitions": 3}, **env)
    assert again.returncode == 0, again.stdout[-4000:]
    rerun = _rows(url, "2026-02-15")
    assert len(rerun) == 600, "a rerun replaces the batch: exactly one copy"
    assert (rerun["airflow_run_id"] != first_run_id).all()
    pd.testing.assert_series_equal(rerun["score"], rows["score"])


def test_bad_scoring_batch_is_rejected_and_nothing_is_written(champion, demo_data, tmp_path):
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    bad = pd.read_parquet(demo_data / "activity" / "date=2026-02-16" / "part.parquet").drop(columns=["device"])
    bad["monthly_spend"] = bad["monthly_spend"].astype(str).str.replace(".", ",", regex=False)
    bad_path = demo_data / "activity" / "uploads" / "bad.parquet"  # under the source folder, where input_uri may point
    bad_path.parent.mkdir(exist_ok=True)
    bad.to_parquet(bad_path, index=False)
    result = _run(PREDICT, "2026-02-16", {"input_uri": str(bad_path)}, AIRFLOW_CONN_PREDICTIONS_DB=url)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "does not match the champion's signature" in output
    assert "column 'device' is missing" in output and "column 'monthly_spend' must be numeric" in output
    assert "[DAG TEST] starting task_id=write.write_predictions" not in output
    engine = sa.create_engine(url)
    assert "predictions" not in sa.inspect(engine).get_table_names() or _rows(url, "2026-02-16").empty


ASSET_EVENTS = """
import json, sys
from sqlalchemy import select
from airflow.models.asset import AssetEvent, AssetModel
from airflow.utils.session import create_session
with create_session() as session:
    rows = session.execute(
        select(AssetEvent.extra).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
        .where(AssetModel.name == sys.argv[1]).order_by(AssetEvent.id)
    ).all()
print(json.dumps([r[0] for r in rows]))
"""


def _asset_events(name: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-c", ASSET_EVENTS, name], capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_drift_is_found_where_injected_and_the_policy_requests_a_retrain(champion, demo_data, tmp_path):
    from lifecycle.persistence import storage

    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    env = {"AIRFLOW_CONN_PREDICTIONS_DB": url}
    days = ["2026-02-19", "2026-02-20", "2026-02-21"]  # the demo data drifts from 2026-02-20
    for day in days:
        predicted = _run(PREDICT, day, **env)
        assert predicted.returncode == 0, predicted.stdout[-4000:]
        checked = _run(DRIFT, day, {"batch_date": day}, **env)
        assert checked.returncode == 0, checked.stdout[-4000:]

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        dataset = dict(conn.execute(sa.text(
            "SELECT batch_key, drifted FROM drift_metrics WHERE feature = '__dataset__' ORDER BY batch_key"
        )).all())  # fmt: skip
        drifted = conn.execute(sa.text(
            "SELECT DISTINCT feature FROM drift_metrics WHERE drifted AND batch_key = '2026-02-21' AND kind != 'dataset'"
        )).scalars().all()  # fmt: skip
        per_batch = conn.execute(sa.text("SELECT count(*) FROM drift_metrics WHERE batch_key = '2026-02-19'")).scalar()
        requests = conn.execute(sa.text("SELECT batch_key, reason FROM retrain_requests")).all()
    assert [bool(v) for v in dataset.values()] == [False, True, True], dataset
    assert {"days_since_last_login", "device"} <= set(drifted)
    assert per_batch >= 13, "one row per feature per batch, plus the prediction and dataset rows"
    # Drift in 2 of the last 3 batches: the policy fires on the second drifted day, not on the first.
    assert [str(r[0])[:10] for r in requests] == ["2026-02-21"]
    assert "drift on 2026-02-21" in requests[0][1]

    events = [e for e in _asset_events("demo_churn__retrain_request") if e.get("batch_key") == "2026-02-21"]
    assert events and events[-1]["as_of_date"] == "2026-02-22" and "drift on 2026-02-21" in events[-1]["reason"]
    report = storage.read_json(events[-1]["drift_report_uri"].replace("report.html", "report.json"))
    assert report["dataset_drift"] and report["features"]["days_since_last_login"]["drifted"]
    assert b"reference vs current" in storage.read_bytes(events[-1]["drift_report_uri"])
    predictions_events = _asset_events("demo_churn__predictions")
    assert {e["batch_key"] for e in predictions_events} >= set(days)
