"""The demo: generate data, then run the lifecycle through Airflow for several simulated days.

Runs on the embedded default (SQLite for Airflow and MLflow, a local artifact folder, a local SQLite
predictions database), all under .local/, and prints what happened. `make demo` calls this.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOCAL = REPO / ".local"
PIPELINE = "demo_churn"

DATA_START = dt.date(2026, 1, 1)
DATA_END = dt.date(2026, 3, 31)
DRIFT_FROM = dt.date(2026, 3, 10)
RETRAIN_DAYS = [dt.date(2026, 2, 20), dt.date(2026, 2, 21), dt.date(2026, 2, 22)]


def embedded_defaults() -> dict[str, str]:
    return {
        "AIRFLOW_HOME": str(LOCAL / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MLFLOW_TRACKING_URI": f"sqlite:///{LOCAL / 'mlflow' / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(LOCAL / "mlflow" / "artifacts"),
        "ARTIFACT_ROOT": f"file://{LOCAL / 'artifacts'}",
        "DATA_ROOT": str(LOCAL / "data"),
        "AIRFLOW_CONN_PREDICTIONS_DB": f"sqlite:///{LOCAL / 'predictions.db'}",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_TELEMETRY": "false",
    }


def step(message: str) -> None:
    print(f"\n== {message}", flush=True)


def airflow(*args: str, log: Path) -> tuple[bool, float]:
    """Run an Airflow CLI command, its output to a log file; True when it succeeded."""
    started = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        result = subprocess.run([sys.executable, "-m", "airflow", *args], stdout=out, stderr=subprocess.STDOUT)
    return result.returncode == 0, time.perf_counter() - started


def run_dag(dag_id: str, day: dt.date, conf: dict | None = None) -> bool:
    log = LOCAL / "logs" / f"{dag_id}-{day.isoformat()}.log"
    args = ["dags", "test", dag_id, day.isoformat()]
    if conf:
        args += ["--conf", json.dumps(conf)]
    ok, seconds = airflow(*args, log=log)
    print(f"   {dag_id} {day}: {'success' if ok else 'FAILED'} in {seconds:.0f}s (log: {log.relative_to(REPO)})")
    if not ok:
        print("   last lines of the log:\n" + "\n".join(log.read_text().splitlines()[-15:]))
    return ok


def summarise_training() -> None:
    from lifecycle.config import load_pipeline
    from lifecycle.tracking import champion, mlflow_client

    config = load_pipeline(REPO / "include" / "pipelines" / f"{PIPELINE}.yaml")
    client = mlflow_client()
    experiment = client.get_experiment_by_name(f"lifecycle/{PIPELINE}")
    runs = client.search_runs(
        [experiment.experiment_id], "tags.`airflow.dag_id` != ''", order_by=["attributes.start_time ASC"]
    )
    metric = config.training.primary_metric
    step("Gate decisions")
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        print(
            f"   as of {json.loads(tags.get('trigger.params', '{}')).get('as_of_date')}: "
            f"{tags.get('gate.verdict', '?'):8s} challenger {metric} {metrics.get(f'holdout_challenger_{metric}', 0):.4f}"
            f" (baseline {metrics.get(f'holdout_baseline_{metric}', 0):.4f})"
            f"{' -> registered v' + tags['registered_version'] if 'registered_version' in tags else ''}\n"
            f"      reason: {tags.get('gate.reason', '')}"
        )
    current = champion(config.registered_model_name)
    step("Champion")
    if current is None:
        print("   no champion: every challenger was rejected")
        return
    run = client.get_run(current.run_id)
    holdout = {
        k.removeprefix("holdout_challenger_"): round(v, 4)
        for k, v in run.data.metrics.items()
        if k.startswith("holdout_challenger_")
    }
    print(
        f"   models:/{config.registered_model_name}@champion = version {current.version} (MLflow run {current.run_id})"
    )
    print(f"   holdout metrics: {holdout}")
    decision_uri = current.tags.get("gate.decision_uri", "")
    print(f"   decision record: {decision_uri}")
    print(f"   evaluation report: {decision_uri.replace('decision.json', 'report.html')}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", action="store_true", help="keep .local/ from an earlier run instead of starting clean"
    )
    args = parser.parse_args()
    for key, value in embedded_defaults().items():
        os.environ.setdefault(key, value)
    started = time.perf_counter()

    if not args.keep:
        step("Starting from a clean embedded stack in .local/")
        for name in ("airflow", "mlflow", "artifacts", "data", "logs", "predictions.db"):
            target = LOCAL / name
            shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)

    step(f"Generating demo data {DATA_START}..{DATA_END} (drift injected from {DRIFT_FROM})")
    from lifecycle import demo_data

    paths = demo_data.write(Path(os.environ["DATA_ROOT"]) / PIPELINE, DATA_START, DATA_END, drift_from=DRIFT_FROM)
    print(f"   {len(paths)} daily partitions and accounts.csv under {os.environ['DATA_ROOT']}")

    step("Preparing Airflow's metadata database (SQLite)")
    ok, seconds = airflow("db", "migrate", log=LOCAL / "logs" / "db-migrate.log")
    if not ok:
        print("   airflow db migrate failed: see .local/logs/db-migrate.log")
        return 1
    print(f"   done in {seconds:.0f}s")

    step(f"Retraining through Airflow for {len(RETRAIN_DAYS)} simulated days")
    for day in RETRAIN_DAYS:
        if not run_dag(f"{PIPELINE}__retrain", day, {"reason": f"demo: nightly retrain for {day}"}):
            return 1
    summarise_training()

    print(f"\nDemo finished in {time.perf_counter() - started:.0f}s. Browse it all with `make airflow` and")
    print(f"`.venv/bin/mlflow ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']}`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
