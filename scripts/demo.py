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

from lifecycle.config.settings import LOCAL_DIR as LOCAL  # where the embedded default keeps its state
from lifecycle.config.settings import embedded_environment

REPO = Path(__file__).resolve().parents[1]
PIPELINE = "demo_churn"

DATA_START = dt.date(2026, 1, 1)
DATA_END = dt.date(2026, 3, 31)
DRIFT_FROM = dt.date(2026, 3, 10)
RETRAIN_DAYS = [dt.date(2026, 3, 1), dt.date(2026, 3, 2)]
SCORE_DAYS = [dt.date(2026, 3, 6) + dt.timedelta(days=i) for i in range(7)]  # four before the drift, three after
LABEL_DELAY = 4  # demo_data.LABEL_DELAY_DAYS: the churn labels land four days after the activity
BACKFILL_DAYS = [dt.date(2026, 3, 13) + dt.timedelta(days=i) for i in range(7)]  # the week after the scored one


def embedded_defaults() -> dict[str, str]:
    """The embedded default; DAGs start paused: the demo unpauses what it runs, so no cron run sneaks in."""
    # LIFECYCLE_SIMULATED_CLOCK: weeks of days replayed in minutes, so each promotion is dated at its as-of day in
    # the registry history (by the wall clock every move would come after every simulated batch).
    return {**embedded_environment(), "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "LIFECYCLE_SIMULATED_CLOCK": "1"}  # fmt: skip


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
    from lifecycle.config.pipeline import load_pipeline
    from lifecycle.registry.tracking import champion, mlflow_client

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
            f"      selection: {tags.get('selection.reason', '-')}\n"
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


def score_and_watch() -> bool:
    """Trigger the daily batches; the scheduler runs the drift checks the predictions Asset schedules,
    and the retrain that the drift policy requests."""
    from lifecycle.devtools import local_airflow as la

    log_dir = LOCAL / "logs" / "airflow"
    prefix = PIPELINE
    with la.running_airflow(dict(os.environ), log_dir=log_dir) as airflow:
        print(f"   Airflow is up at {airflow.base_url} after {airflow.startup_seconds:.0f}s (logs: {log_dir})")
        for kind in ("batch_predict", "drift_check", "performance", "retrain"):
            la.wait_for_dag(airflow, f"{prefix}__{kind}")
            la.unpause(airflow, f"{prefix}__{kind}")
        earlier_retrains = {r["dag_run_id"] for r in la.list_runs(airflow, f"{prefix}__retrain")}
        started = time.perf_counter()
        runs = [
            la.trigger(airflow, f"{prefix}__batch_predict", {}, f"{day.isoformat()}T06:00:00Z")["dag_run_id"]
            for day in SCORE_DAYS
        ]
        for day, run_id in zip(SCORE_DAYS, runs, strict=True):
            run = la.wait_for_run(airflow, f"{prefix}__batch_predict", run_id, timeout=900)
            print(f"   {prefix}__batch_predict {day}: {run['state']}")
            if run["state"] != "success":
                print(f"   see the task logs under {os.environ['AIRFLOW_HOME']}/logs")
                return False
        print("   waiting for the asset-triggered drift checks and the retrain they request...")
        retrain = la.wait_for_run(airflow, f"{prefix}__retrain", timeout=1200, ignore=earlier_retrains)
        drift_runs = wait_for_drift(len(SCORE_DAYS), timeout=600)
        settled = wait_until_idle(airflow, [f"{prefix}__{k}" for k in ("drift_check", "performance", "retrain")])
        print(f"   drift checks recorded for {drift_runs} batches; retrain run {retrain['dag_run_id']}: {retrain['state']}"
              f" ({time.perf_counter() - started:.0f}s); {settled}")  # fmt: skip
        early = performance_snapshot()  # before the backfill's later batches bring their labels' arrival days
        backfilled = backfill(airflow)
    summarise_scoring()
    summarise_backfill(backfilled)
    summarise_performance(early, BACKFILL_DAYS[-1] + dt.timedelta(days=LABEL_DELAY))
    return retrain["state"] == "success" and all(r["state"] == "success" for r in backfilled)


def backfill(airflow) -> list[dict]:
    """Airflow's own backfill of the batch predictions over a week nobody scored: each day with its champion.

    A replay, so the retrain DAG is paused first: the drift and performance checks that follow each batch still
    run and record, but a retrain they request waits for the next real run instead of starting now.
    """
    from lifecycle.devtools import local_airflow as la

    dag_id = f"{PIPELINE}__batch_predict"
    airflow.api("PATCH", f"/api/v2/dags/{PIPELINE}__retrain?update_mask=is_paused", {"is_paused": True})
    start, end = f"{BACKFILL_DAYS[0]}T00:00:00Z", f"{BACKFILL_DAYS[-1]}T23:00:00Z"
    step(f"Backfilling {dag_id} over {BACKFILL_DAYS[0]}..{BACKFILL_DAYS[-1]} (Airflow's backfill, model: auto)")
    started = time.perf_counter()
    created = la.backfill(airflow, dag_id, start, end, conf={}, max_active_runs=2)
    la.wait_for_backfill(airflow, created["id"], timeout=1200)
    runs = la.backfill_runs(airflow, dag_id, start, end)
    wait_until_idle(airflow, [f"{PIPELINE}__{k}" for k in ("drift_check", "performance")])
    print(f"   backfill {created['id']}: {len(runs)} runs, {[r['state'] for r in runs]} "
          f"({time.perf_counter() - started:.0f}s, drift checks and performance included)")  # fmt: skip
    return runs


def summarise_backfill(runs: list[dict]) -> None:
    import sqlalchemy as sa

    from lifecycle.persistence.predictions_db import engine_for
    from lifecycle.registry import registry_history

    engine = engine_for(os.environ["AIRFLOW_CONN_PREDICTIONS_DB"])
    for run in runs:
        when = dt.datetime.fromisoformat(run["logical_date"].replace("Z", "+00:00"))
        with engine.connect() as conn:
            scored = conn.execute(
                sa.text("SELECT count(*), min(model_version), max(model_version) FROM predictions "
                        "WHERE pipeline = :p AND batch_key = :b"), {"p": PIPELINE, "b": when.date()}
            ).one()  # fmt: skip
        champion = registry_history.version_on(engine, PIPELINE, when)
        print(f"   {when.date()}: {scored[0]} rows by version {scored[1]}; the registry history's champion at "
              f"{when:%Y-%m-%d %H:%M}Z: version {champion} ({run['state']})")  # fmt: skip
    engine.dispose()


def wait_until_idle(airflow, dag_ids: list[str], timeout: float = 1200) -> str:
    """Let the asset-triggered runs finish (a retrain both policies asked for may queue a second one)."""
    from lifecycle.devtools import local_airflow as la

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [
            (d, r["state"]) for d in dag_ids for r in la.list_runs(airflow, d) if r["state"] not in la.FINISHED_STATES
        ]
        if not busy:
            counts = {d.split("__")[-1]: len(la.list_runs(airflow, d)) for d in dag_ids}
            return "runs: " + ", ".join(f"{k} {v}" for k, v in counts.items())
        time.sleep(5)
    return f"still running after {timeout:.0f}s: {busy}"


def performance_table() -> tuple[dict, list]:
    """The accuracy rows of performance_metrics per (batch, version), and the retrains performance requested."""
    import sqlalchemy as sa

    from lifecycle.persistence.predictions_db import engine_for

    engine = engine_for(os.environ["AIRFLOW_CONN_PREDICTIONS_DB"])
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT batch_key, model_version, kind, value, rows, batch_rows FROM performance_metrics "
                    "WHERE pipeline = :p AND metric = 'accuracy' ORDER BY batch_key"), {"p": PIPELINE}
        ).all()  # fmt: skip
        requests = conn.execute(
            sa.text("SELECT batch_key, reason FROM retrain_requests WHERE pipeline = :p AND reason LIKE "
                    "'performance%' ORDER BY batch_key"), {"p": PIPELINE}
        ).all()  # fmt: skip
    engine.dispose()
    found: dict = {}
    for batch_key, version, kind, value, rows_, batch_rows in rows:
        found.setdefault((str(batch_key), version), {})[kind] = (value, rows_, batch_rows)
    return found, requests


def performance_snapshot() -> dict:
    """The table and the performance policy's verdict on the last scored day, before later labels land."""
    from lifecycle.config.pipeline import load_pipeline
    from lifecycle.ml import performance_tracking

    config = load_pipeline(REPO / "include" / "pipelines" / f"{PIPELINE}.yaml")
    found, requests = performance_table()
    decision = performance_tracking.policy(
        config, SCORE_DAYS[-1].isoformat(), os.environ["AIRFLOW_CONN_PREDICTIONS_DB"]
    )
    return {"found": found, "requests": requests, "decision": decision}


def _show_performance(found: dict) -> None:
    for (batch_key, version), kinds in sorted(found.items()):
        real, est, err = kinds.get("realised"), kinds.get("estimated"), kinds.get("estimate_error")
        line = f"   {batch_key} v{version}: estimated {est[0]:.3f}" if est else f"   {batch_key} v{version}:"
        if real and err:
            line += f", realised {real[0]:.3f} ({real[1]}/{real[2]} labelled), estimate error {err[0]:+.3f}"
        else:
            line += ", realised: labels not arrived yet"
        print(line)


def summarise_performance(snapshot: dict, label_day: dt.date) -> None:
    """What the performance DAG recorded while the batches were scored, then once every label has landed."""
    step(f"Performance while the batches were scored (labels land {LABEL_DELAY} days late; table performance_metrics, "
         f"accuracy at the threshold)")  # fmt: skip
    _show_performance(snapshot["found"])
    for batch_key, reason in snapshot["requests"]:
        print(f"   retrain requested on {batch_key}: {reason}")
    decision = snapshot["decision"]
    print(f"   the performance policy on {SCORE_DAYS[-1]}, before the labels of the drifted days arrived: "
          f"{'fire' if decision['retrain'] else 'no new request'}: {decision['reason']}")  # fmt: skip
    step(f"The labels of every batch have landed by {label_day}: the performance DAG once more")
    if run_dag(f"{PIPELINE}__performance", label_day, {"as_of_date": label_day.isoformat()}):
        _show_performance(performance_table()[0])


def wait_for_drift(batches: int, timeout: float) -> int:
    import sqlalchemy as sa

    from lifecycle.persistence.predictions_db import engine_for

    engine = engine_for(os.environ["AIRFLOW_CONN_PREDICTIONS_DB"])
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline:
        try:
            with engine.connect() as conn:
                seen = conn.execute(
                    sa.text("SELECT count(*) FROM drift_metrics WHERE pipeline = :p AND feature = '__dataset__'"),
                    {"p": PIPELINE},
                ).scalar_one()
        except sa.exc.OperationalError:  # the table appears with the first check
            seen = 0
        if seen >= batches:
            break
        time.sleep(3)
    engine.dispose()
    return seen


def summarise_scoring() -> None:
    import sqlalchemy as sa

    from lifecycle.persistence.predictions_db import engine_for
    from lifecycle.registry.tracking import mlflow_client

    engine = engine_for(os.environ["AIRFLOW_CONN_PREDICTIONS_DB"])
    with engine.connect() as conn:
        written = conn.execute(
            sa.text("SELECT batch_key, count(*), model_version, round(avg(score), 3) FROM predictions "
                    "WHERE pipeline = :p GROUP BY batch_key, model_version ORDER BY batch_key"), {"p": PIPELINE}
        ).all()  # fmt: skip
        drift = conn.execute(
            sa.text("SELECT batch_key, feature, value, drifted FROM drift_metrics WHERE pipeline = :p "
                    "AND (drifted OR feature = '__dataset__') ORDER BY batch_key, feature"), {"p": PIPELINE}
        ).all()  # fmt: skip
        requests = conn.execute(
            sa.text("SELECT batch_key, reason FROM retrain_requests WHERE pipeline = :p ORDER BY batch_key"),
            {"p": PIPELINE},
        ).all()
    engine.dispose()
    step("Predictions written (table predictions)")
    for batch_key, rows, version, mean in written:
        print(f"   {batch_key}: {rows} rows scored by version {version} (mean score {mean})")
    step("Drift per batch (table drift_metrics)")
    by_batch: dict[str, list] = {}
    for batch_key, feature, value, drifted in drift:
        by_batch.setdefault(str(batch_key), []).append((feature, value, drifted))
    for batch_key, rows in sorted(by_batch.items()):
        dataset = next((r for r in rows if r[0] == "__dataset__"), None)
        features = [f"{f} {v:.2f}" for f, v, d in rows if d and f != "__dataset__"]
        verdict = "DRIFT" if dataset and dataset[2] else "stable"
        print(f"   {batch_key}: {verdict:6s} {', '.join(features) if features else ''}")
    step("Retrain requested by the drift policy")
    for batch_key, reason in requests:
        print(f"   {batch_key}: {reason}")
    client = mlflow_client()
    experiment = client.get_experiment_by_name(f"lifecycle/{PIPELINE}")
    triggered = client.search_runs(
        [experiment.experiment_id], "tags.`trigger.reason` LIKE 'drift on%'", order_by=["attributes.start_time DESC"]
    )
    for run in triggered[:1]:
        tags = run.data.tags
        print(f"   the retrain it triggered (MLflow run {run.info.run_id}, window {tags.get('snapshot.window')}):")
        print(f"      gate: {tags.get('gate.verdict')}: {tags.get('gate.reason')}")
        if tags.get("registered_version"):
            print(f"      registered version {tags['registered_version']} and moved the champion alias to it")


def check_portable() -> bool:
    from lifecycle.config.pipeline import load_pipeline
    from lifecycle.registry.portable import PortabilityError, check

    config = load_pipeline(REPO / "include" / "pipelines" / f"{PIPELINE}.yaml")
    try:
        result = check(config, os.environ["AIRFLOW_CONN_PREDICTIONS_DB"])
    except PortabilityError as err:
        print(f"   FAILED: {err}")
        return False
    print(f"   {result['model_uri']} (version {result['version']}): virtualenv built in {result['venv_seconds']}s "
          f"from {len(result['requirements'])} pinned requirements, no `lifecycle` package in it")  # fmt: skip
    print(f"   batch {result['batch_key']}, {result['rows']} rows, compared with {result['compared_with']}:")
    print(f"      mlflow.pyfunc.load_model: max |score difference| {result['pyfunc_max_abs_diff']:.1e}")
    print(f"      mlflow models serve:      max |score difference| {result['serve_max_abs_diff']:.1e}")
    print(f"   again any time: make portable PIPELINE=include/pipelines/{PIPELINE}.yaml")
    return True


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
    from lifecycle.devtools import demo_data

    paths = demo_data.write(
        Path(os.environ["DATA_ROOT"]) / PIPELINE,
        DATA_START,
        DATA_END,
        drift_from=DRIFT_FROM,
        label_delay_days=LABEL_DELAY,
    )
    print(f"   {len(paths)} daily partitions, accounts.csv and the churn labels (landing {LABEL_DELAY} days later) "
          f"under {os.environ['DATA_ROOT']}")  # fmt: skip

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

    step(f"Scoring {len(SCORE_DAYS)} daily batches on a running Airflow (scheduler, LocalExecutor)")
    if not score_and_watch():
        return 1

    step("The champion outside this repository: a clean virtualenv from its own requirements.txt")
    if not check_portable():
        return 1

    print(f"\nDemo finished in {time.perf_counter() - started:.0f}s. Browse it all with `make airflow` and")
    print(f"`.venv/bin/mlflow ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']}`.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
