"""Segment models through Airflow: 22 stores, each its own model, gate and champion; batches routed by store.

The example pipeline (examples/pipelines/store_orders.yaml) is copied into a temporary PIPELINES_DIR so the
real DAG files build its DAGs; the predictions go to a PostgreSQL database of this module's own over a real
connection. Retrain runs one mapped task group per store (plus the pooled fallback model); batch
prediction must score each row with its own store's champion (the scores equal to loading that champion
and predicting), the popup store's rows (too few to train) with the pooled model, and, once the fallback is
switched off, refuse a batch holding them, naming the store, with nothing written.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]
YAML = REPO / "examples" / "pipelines" / "store_orders.yaml"
NAME = "store_orders"
STORES = 22
AS_OF = "2026-02-01"
BATCH = "2026-02-02"


@pytest.fixture(scope="module")
def setup(airflow_db, postgres_helper, tmp_path_factory) -> dict:
    from lifecycle.devtools import demo_segments

    root = Path(os.environ["DATA_ROOT"]) / NAME
    demo_segments.write(root, dt.date(2026, 1, 1), dt.date(2026, 2, 3), STORES, rows=1500)
    pipelines = tmp_path_factory.mktemp("pipelines")
    shutil.copy(YAML, pipelines / YAML.name)
    with postgres_helper.throwaway_database("segments_test") as url:
        env = {
            **os.environ,
            "PIPELINES_DIR": str(pipelines),
            "AIRFLOW_CONN_PREDICTIONS_DB": url.replace("postgresql+psycopg://", "postgresql://"),
        }
        yield {"env": env, "url": url, "pipelines": pipelines, "root": root}


def _run(setup: dict, dag_id: str, date: str, conf: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "airflow", "dags", "test", dag_id, date]
    if conf:
        command += ["--conf", json.dumps(conf)]
    return subprocess.run(command, capture_output=True, text=True, timeout=1500, env=setup["env"])


def _tail(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-4000:] + result.stderr[-3000:]


@pytest.fixture(scope="module")
def retrained(setup) -> subprocess.CompletedProcess:
    result = _run(setup, f"{NAME}__retrain", AS_OF, {"reason": "segment models"})
    assert result.returncode == 0, _tail(result)
    return result


def _registered() -> dict[str, object]:
    from lifecycle.registry.tracking import mlflow_client

    return {m.name: m for m in mlflow_client().search_registered_models(f"name LIKE '{NAME}%'", max_results=1000)}


def _window_counts(setup: dict) -> pd.Series:
    days = pd.date_range("2026-01-04", "2026-01-31")  # the 28-day window before the as-of date
    frames = [pd.read_parquet(setup["root"] / "orders" / f"date={d.date()}" / "part.parquet") for d in days]
    return pd.concat(frames)["store"].value_counts()


def test_every_store_with_enough_rows_gets_its_own_registered_champion(setup, retrained):
    from lifecycle.config.pipeline import load_pipeline

    config = load_pipeline(setup["pipelines"] / YAML.name)
    counts = _window_counts(setup)
    trained = sorted(s for s, n in counts.items() if n >= config.segments.min_rows)
    assert len(trained) >= 20 and "popup" not in trained
    models = _registered()
    for store in trained:
        model = models.get(f"{NAME}__{store}")
        assert model is not None, f"no registered model for {store}: {sorted(models)[:5]}..."
        assert model.tags["lifecycle.segment"] == store and model.tags["lifecycle.pipeline"] == NAME
        assert "champion" in model.aliases, f"{store}: the gate promoted nothing ({model.aliases})"
    assert f"{NAME}__popup" not in models  # too few rows: not trained, and the log says so
    assert "popup (" in retrained.stdout + retrained.stderr
    assert "champion" in models[NAME].aliases  # the pooled fallback
    with sa.create_engine(setup["url"]).connect() as conn:  # each segment's promotion is in the registry history
        moved = conn.execute(sa.text("SELECT DISTINCT model_name FROM lifecycle_registry_history")).scalars().all()
    assert {f"{NAME}__{s}" for s in trained} | {NAME} <= set(moved)


def test_batch_prediction_routes_each_row_to_its_stores_champion(setup, retrained):
    import mlflow

    from lifecycle.registry.tracking import mlflow_client

    result = _run(setup, f"{NAME}__batch_predict", BATCH, {"partitions": 3})
    assert result.returncode == 0, _tail(result)
    batch = pd.read_parquet(setup["root"] / "orders" / f"date={BATCH}" / "part.parquet")
    with sa.create_engine(setup["url"]).connect() as conn:
        rows = pd.read_sql(sa.text("SELECT * FROM predictions WHERE pipeline = :p"), conn, params={"p": NAME})
    assert len(rows) == len(batch) and rows["entity_id"].is_unique
    joined = batch.assign(entity_id=batch["order_id"].astype(str)).merge(rows, on="entity_id")
    models = _registered()
    expected_model = np.where(joined["store"] == "popup", NAME, NAME + "__" + joined["store"])
    assert (joined["model_name"] == expected_model).all()
    assert (joined["store"] == "popup").any()  # the fallback did score something
    client = mlflow_client()
    for store in ["store_001", "store_011", "store_022", "popup"]:
        name = NAME if store == "popup" else f"{NAME}__{store}"
        version = client.get_model_version_by_alias(name, "champion").version
        mine = joined[joined["store"] == store]
        assert set(mine["model_version"]) == {str(version)}
        model = mlflow.sklearn.load_model(f"models:/{name}/{version}")
        features = mine[["visits_90d", "basket_value", "discount", "channel", "weekday"]]
        expected = model.predict_proba(features)[:, 1]
        np.testing.assert_allclose(mine["score"].to_numpy(), expected, rtol=1e-9, atol=1e-12)
    assert len(models) >= 21


def test_without_a_fallback_a_batch_with_an_untrained_store_is_refused_and_nothing_written(setup, retrained):
    path = setup["pipelines"] / YAML.name
    data = yaml.safe_load(path.read_text())
    data["segments"]["fallback"] = "none"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    day = "2026-02-03"
    try:
        result = _run(setup, f"{NAME}__batch_predict", day)
    finally:
        shutil.copy(YAML, path)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "segments with no champion in column 'store': 'popup'" in output, _tail(result)
    with sa.create_engine(setup["url"]).connect() as conn:
        written = conn.execute(
            sa.text("SELECT count(*) FROM predictions WHERE pipeline = :p AND batch_key = :d"), {"p": NAME, "d": day}
        ).scalar()
    assert written == 0
