"""The segment-models demo: one model per store for 24 stores, trained, gated and used through Airflow.

On the embedded default, in its own folder (.local/segments/): writes the store-order data, puts the example
pipeline examples/pipelines/store_orders.yaml in a pipelines folder of its own, runs
`store_orders__retrain` (one mapped task group per store, plus the pooled model for stores without one) and
`store_orders__batch_predict` for the next day, then prints each store's gate decision and which model
scored how many rows. `make demo-segments` calls this.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOME = REPO / ".local" / "segments"
NAME = "store_orders"
STORES = 24
AS_OF, BATCH = dt.date(2026, 2, 1), dt.date(2026, 2, 2)


def environment() -> dict[str, str]:
    sys.path.insert(0, str(REPO / "include"))
    from lifecycle.config.settings import embedded_environment

    env = {**os.environ, **embedded_environment()}
    env.update({
        "AIRFLOW_HOME": str(HOME / "airflow"), "MLFLOW_TRACKING_URI": f"sqlite:///{HOME / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(HOME / "mlartifacts"), "ARTIFACT_ROOT": f"file://{HOME / 'artifacts'}",
        "DATA_ROOT": str(HOME / "data"), "AIRFLOW_CONN_PREDICTIONS_DB": f"sqlite:///{HOME / 'predictions.db'}",
        "PIPELINES_DIR": str(HOME / "pipelines"),
    })  # fmt: skip
    return env


def airflow(env: dict[str, str], log: Path, *args: str) -> float:
    began = time.perf_counter()
    with log.open("w") as out:
        result = subprocess.run([sys.executable, "-m", "airflow", *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"airflow {' '.join(args)} failed; its log: {log}")
    return time.perf_counter() - began


def decisions(env: dict[str, str]) -> list[tuple[str, str, str, str]]:
    """(model, gate action, champion version, reason) for every store model and the pooled one."""
    os.environ.update(env)
    from lifecycle.registry.tracking import mlflow_client

    client = mlflow_client()
    rows = []
    for experiment in client.search_experiments(filter_string=f"name LIKE 'lifecycle/{NAME}%'"):
        runs = client.search_runs([experiment.experiment_id], "tags.`gate.action` != ''", max_results=1,
                                  order_by=["attributes.start_time DESC"])  # fmt: skip
        if not runs:
            continue
        model = experiment.name.removeprefix("lifecycle/")
        tags = runs[0].data.tags
        rows.append(
            (model, tags.get("gate.action", "?"), tags.get("registered_version", "-"), tags.get("gate.reason", ""))
        )
    return sorted(rows)


def main() -> None:
    shutil.rmtree(HOME, ignore_errors=True)
    (HOME / "pipelines").mkdir(parents=True)
    (HOME / "logs").mkdir()
    shutil.copy(REPO / "examples" / "pipelines" / f"{NAME}.yaml", HOME / "pipelines")
    env = environment()
    from lifecycle.devtools import demo_segments

    print(f"== data: {STORES} stores (and a popup store too small to train), 2026-01-01..{BATCH}", flush=True)
    demo_segments.write(HOME / "data" / NAME, dt.date(2026, 1, 1), BATCH + dt.timedelta(days=1), STORES)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=env)
    print(f"== {NAME}__retrain as of {AS_OF}: one mapped task group per store, plus the pooled model", flush=True)
    seconds = airflow(env, HOME / "logs" / "retrain.log", "dags", "test", f"{NAME}__retrain", AS_OF.isoformat())
    table = decisions(env)
    print(f"   {seconds:.0f} s; {sum(1 for r in table if r[1] == 'promote')} of {len(table)} models promoted")
    for model, action, version, reason in table:
        print(f"   {model:28s} {action:10s} v{version:3s} {reason[:90]}")
    print(f"== {NAME}__batch_predict for {BATCH}: each row to its store's champion", flush=True)
    seconds = airflow(env, HOME / "logs" / "batch_predict.log", "dags", "test", f"{NAME}__batch_predict",
                      BATCH.isoformat(), "--conf", json.dumps({"partitions": 3}))  # fmt: skip
    with sqlite3.connect(HOME / "predictions.db") as db:
        scored = db.execute(
            "SELECT model_name, model_version, count(*) FROM predictions WHERE batch_key = ? GROUP BY 1, 2 "
            "ORDER BY 3 DESC", (BATCH.isoformat(),),
        ).fetchall()  # fmt: skip
    print(f"   {seconds:.0f} s; {sum(n for *_, n in scored)} rows scored by {len(scored)} models:")
    for model, version, count in scored:
        print(f"   {model:28s} v{version:3s} {count:5d} rows")
    print(f"\nEverything is under {HOME}; the logs in {HOME / 'logs'}.")


if __name__ == "__main__":
    main()
