"""The performance DAG through Airflow: labels that arrive late fill realised metrics, estimates come first.

The session's champion (trained as of 2026-02-10) scores four batches, two before the demo data's drift
(2026-02-20) and two after; the demo's labels land four days after the activity they label.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]
PERFORMANCE = "demo_churn__performance"
DAYS = ["2026-02-17", "2026-02-18", "2026-02-21", "2026-02-22"]


def _score(config, url: str, days: list[str]) -> None:
    """Write the batches with the task functions the batch-prediction DAG calls (its own test runs the DAG)."""
    from lifecycle.registry import tracking
    from lifecycle.tasks import batch_scoring

    version = tracking.champion(config.registered_model_name)
    champion = {"model_name": config.registered_model_name, "version": str(version.version),
                "model_uri": f"models:/{config.registered_model_name}/{version.version}", "run_id": version.run_id}  # fmt: skip
    for day in days:
        run_id = f"performance-test-{day}"
        batch = batch_scoring.stage(config, run_id, day, None, None)
        parts = [batch_scoring.score(config, run_id, batch, champion, list(range(batch["row_groups"])))]
        batch_scoring.write(config, run_id, url, batch, champion, parts)


def _run(as_of: str, url: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "airflow", "dags", "test", PERFORMANCE, as_of, "--conf",
               json.dumps({"as_of_date": as_of})]  # fmt: skip
    env = {**os.environ, "AIRFLOW_CONN_PREDICTIONS_DB": url.replace("postgresql+psycopg://", "postgresql://")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    return result


def _table(url: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            frame = pd.read_sql_query(
                sa.text("SELECT * FROM performance_metrics WHERE pipeline = 'demo_churn' "
                        "ORDER BY batch_key, metric, kind"), conn
            )  # fmt: skip
    finally:
        engine.dispose()
    frame["batch_key"] = pd.to_datetime(frame["batch_key"]).dt.strftime("%Y-%m-%d")
    return frame


@pytest.fixture
def database_url(request, tmp_path) -> Iterator[str]:
    """A predictions database of this test's own: other tests' batches of demo_churn must not be counted here."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'p.db'}"
        return
    with request.getfixturevalue("postgres_helper").throwaway_database("performance_test") as url:
        yield url


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_labels_trickle_in_and_each_batch_keeps_one_answer(database_url, champion, demo_data):
    from lifecycle.config.pipeline import load_pipeline
    from lifecycle.persistence.predictions_db import engine_for

    url = database_url
    config = load_pipeline(REPO / "include" / "pipelines" / "demo_churn.yaml")
    _score(config, url, DAYS)

    first = _run("2026-02-22", url)  # labels up to the 18th have arrived (4 days late), none of the 21st and 22nd
    table = _table(url)
    realised = table[table["kind"] == "realised"]
    estimated = table[table["kind"] == "estimated"]
    assert sorted(set(estimated["batch_key"])) == DAYS, "every batch is estimated, labels or not"
    assert sorted(set(realised["batch_key"])) == DAYS[:2], "only the labelled batches are realised"
    auc = realised[realised["metric"] == "roc_auc"].set_index("batch_key")
    assert (auc["rows"] == 600).all() and (auc["batch_rows"] == 600).all()
    assert ((auc["ci_low"] <= auc["value"]) & (auc["value"] <= auc["ci_high"])).all()
    assert auc["reference"].notna().all(), "the version's holdout value is the reference"
    errors = table[(table["kind"] == "estimate_error") & (table["metric"] == "roc_auc")].set_index("batch_key")
    estimate = estimated[estimated["metric"] == "roc_auc"].set_index("batch_key")
    for day in DAYS[:2]:
        assert errors.loc[day, "value"] == pytest.approx(estimate.loc[day, "value"] - auc.loc[day, "value"])
    assert "retrain:" in first.stdout

    # The realised ROC AUC is the metric of the champion's scores against the labels, computed independently.
    engine = engine_for(url)
    with engine.connect() as conn:
        scored = pd.read_sql_query(
            sa.text("SELECT entity_id, score FROM predictions WHERE pipeline='demo_churn' AND batch_key=:b"),
            conn, params={"b": dt.date(2026, 2, 17)},
        )  # fmt: skip
    engine.dispose()
    labels = pd.read_parquet(demo_data / "labels" / "date=2026-02-21" / "part.parquet")
    merged = scored.merge(labels.assign(entity_id=labels["account_id"].astype(str)), on="entity_id")
    from sklearn.metrics import roc_auc_score

    assert auc.loc["2026-02-17", "value"] == pytest.approx(roc_auc_score(merged["churned"], merged["score"]))
    if database_url.startswith("postgresql"):
        return

    again = _run("2026-02-22", url)
    assert "0 updated" in again.stdout, "nothing new arrived: every batch is left as it was"
    pd.testing.assert_frame_equal(_table(url), table)

    _run("2026-02-26", url)  # the labels of the 21st and 22nd have landed now
    later = _table(url)
    assert sorted(set(later[later["kind"] == "realised"]["batch_key"])) == DAYS
    assert len(later) == len(later.drop_duplicates(["batch_key", "model_version", "metric", "kind"]))
    kept = later[later["batch_key"].isin(DAYS[:2])].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, table[table["batch_key"].isin(DAYS[:2])].reset_index(drop=True))
