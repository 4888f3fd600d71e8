"""Airflow's overhead on the retrain DAG against the same functions in a plain script (issue 12, item 4c).

The demo pipeline (include/pipelines/demo_churn.yaml) on the demo data (`demo_data.write`, 1,000 rows a day from
2026-01-01, drift from 2026-03-10 as in `make demo`): an untimed plain retrain as of 2026-03-01 makes the first
champion, and that state (MLflow SQLite store and artifacts, artifact folder, predictions database) is copied back
before every timed run, so each timed run retrains as of 2026-03-02 and meets the same champion at the gate.
Everything lives in a private folder under /tmp (AIRFLOW_HOME, MLflow, artifacts, data), deleted at the end.

Sides, in an order that rotates every round:

  plain          one fresh process: the include/lifecycle/tasks/retraining.py functions the DAG's tasks call, with the same
                 arguments, in the DAG's order (wall time from the launch, imports included)
  per-process    the same functions, one fresh process per task (outputs passed through a JSON file): Airflow's
                 process-per-task shape without Airflow, so the cost of re-importing in each task shows apart
  dags-test      `airflow dags test demo_churn__retrain` (one process, no scheduler), embedded default
  scheduler      a real run: api-server, scheduler (LocalExecutor), dag-processor and triggerer from
                 `lifecycle.devtools.local_airflow.running_airflow`, then trigger + wait_for_run; the services' start-up
                 (until healthy and the DAG parsed) and tear-down are timed apart from the run
  scheduler-preload  the same with `running_airflow(preload=TASK_PRELOAD)`: the scheduler imports the tasks'
                 heavy libraries before it forks its LocalExecutor workers, so each forked task finds them loaded
  scheduler-preload-serial  and with AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG=1: grid_search and baseline one
                 after the other, as in plain, instead of side by side on the same cores

Beside them, the fixed costs, each measured on its own in fresh processes: the interpreter, `import airflow.sdk`,
the Airflow CLI doing nothing (`airflow version`), one parse of dags/retrain.py, MLflow's import and client start-up
against the SQLite store, and a null DAG of the same shape (8 empty tasks passing dicts through XCom like the real
ones, and the same without XCom) run by `dags test` and by the scheduler: Airflow's cost per task and per XCom
with no work in the task. Task instance start/end dates come from the metadata database (dags test) and from the
REST API (scheduler): the gap between a task's start and its upstream's end is the scheduler's latency.

The ratios are each side's wall time over plain's in the same round, median over rounds. Target (issue 12):
scheduler and dags-test at most 1.3x plain.

    .venv/bin/python benchmarks/airflow_overhead.py                   # 3 rounds, about 15 minutes
    .venv/bin/python benchmarks/airflow_overhead.py --rounds 1 --sides plain,dags-test
    .venv/bin/python benchmarks/airflow_overhead.py --scheduler-env AIRFLOW__SCHEDULER__X=1 --out FILE
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))

PIPELINE = "demo_churn"
DAG_ID = f"{PIPELINE}__retrain"
NULL_DAG = "airflow_overhead__null"
NULL_DAG_NO_XCOM = "airflow_overhead__null_no_xcom"
DATA_START, DATA_END, DRIFT_FROM = dt.date(2026, 1, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 10)
BASE_AS_OF, AS_OF = "2026-03-01", "2026-03-02"
MARKER = "@@AIRFLOW_OVERHEAD@@"
SIDES = ("plain", "per-process", "dags-test", "scheduler", "scheduler-preload", "scheduler-preload-serial")
# The scheduler-preload-serial side: one task of a DAG run at a time, so grid_search and baseline do not share
# the cores (a measurement, not a setting of the project)
SERIAL = {"AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "1"}
TARGET = 1.3
# (task id in the DAG, its upstream task ids), in the DAG's order
TASKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ingestion.snapshot", ()),
    ("validation.run_suite", ("ingestion.snapshot",)),
    ("features.split_and_fit", ("ingestion.snapshot", "validation.run_suite")),
    ("training.start_mlflow_run", ("ingestion.snapshot", "features.split_and_fit")),
    ("training.grid_search", ("training.start_mlflow_run", "features.split_and_fit")),
    ("training.baseline", ("training.start_mlflow_run", "features.split_and_fit")),
    (
        "evaluation.score_and_decide",
        ("training.start_mlflow_run", "features.split_and_fit", "training.grid_search", "training.baseline"),
    ),
    (
        "evaluation.promote",
        ("training.start_mlflow_run", "training.grid_search", "evaluation.score_and_decide", "ingestion.snapshot"),
    ),
)
UPSTREAM = dict(TASKS)

NULL_DAG_SOURCE = '''"""Written by benchmarks/airflow_overhead.py: the retrain DAG's shape with no work in the tasks."""

from airflow.sdk import DAG, TaskGroup, task

PAYLOAD = {"uri": "file:///tmp/" + "x" * 120, "sha256": "0" * 64, "metrics": {f"m{i}": 0.5 for i in range(12)}}

with DAG("%(xcom)s", schedule=None, catchup=False, tags=["benchmark"]):

    @task
    def snapshot(): return PAYLOAD

    @task
    def run_suite(snap): return PAYLOAD

    @task
    def split_and_fit(snap, checked): return PAYLOAD

    @task
    def start_mlflow_run(snap): return "0" * 32

    @task
    def grid_search(run, features): return PAYLOAD

    @task
    def baseline(run, features): return PAYLOAD

    @task
    def score_and_decide(run, features, challenger, base): return PAYLOAD

    @task
    def promote(run, challenger, evaluation, snap): return PAYLOAD

    with TaskGroup("ingestion"):
        snap = snapshot()
    with TaskGroup("validation"):
        checked = run_suite(snap)
    with TaskGroup("features"):
        features = split_and_fit(snap, checked)
    with TaskGroup("training"):
        run = start_mlflow_run(snap)
        features >> run
        challenger = grid_search(run, features)
        base = baseline(run, features)
    with TaskGroup("evaluation"):
        evaluation = score_and_decide(run, features, challenger, base)
        promote(run, challenger, evaluation, snap)

with DAG("%(plain)s", schedule=None, catchup=False, tags=["benchmark"]):

    @task(task_id="snapshot")
    def nothing(): pass

    names = ["snapshot", "run_suite", "split_and_fit", "start_mlflow_run", "grid_search", "baseline",
             "score_and_decide", "promote"]
    made = {name: nothing.override(task_id=name)() for name in names}
    made["snapshot"] >> made["run_suite"] >> made["split_and_fit"] >> made["start_mlflow_run"]
    made["start_mlflow_run"] >> [made["grid_search"], made["baseline"]] >> made["score_and_decide"]
    made["score_and_decide"] >> made["promote"]
'''


# --- the plain script: the retrain functions the DAG's tasks call, with the DAG's arguments ------------------------


def _config() -> Any:
    from lifecycle.config.pipeline import load_all

    return next(c for c in load_all() if c.name == PIPELINE)


def run_task(task_id: str, config: Any, run_id: str, as_of: str, done: dict[str, Any]) -> Any:
    """One task body of dags/retrain.py without Airflow: the same call, the arguments Airflow would pass."""
    from lifecycle.config.pipeline import with_training_overrides
    from lifecycle.tasks import retraining
    from lifecycle.tasks.airflow_glue import as_sqlalchemy_url

    training = config.training
    params = {"as_of_date": as_of, "window_days": training.window_days, "search": training.search,
              "grid": training.grid, "reason": "benchmark"}  # fmt: skip
    snap = done.get("ingestion.snapshot")
    features, mlflow_run = done.get("features.split_and_fit"), done.get("training.start_mlflow_run")
    if task_id == "ingestion.snapshot":
        return retraining.ingest(config, run_id, as_of, params["window_days"], {})  # the demo has no conn_id sources
    if task_id == "validation.run_suite":
        return retraining.validate_snapshot(config, run_id, snap["uri"], snap["sha256"])
    if task_id == "features.split_and_fit":
        return retraining.prepare_features(config, run_id, snap["uri"], snap["sha256"])
    if task_id == "training.start_mlflow_run":
        with_training_overrides(config, grid=params["grid"], search=params["search"])
        return retraining.start_run(config, DAG_ID, run_id, params, snap)
    if task_id == "training.grid_search":
        tuned = with_training_overrides(config, grid=params["grid"], search=params["search"])
        return retraining.train_challenger(tuned, mlflow_run, features, tuned.training.grid, tuned.training.search)
    if task_id == "training.baseline":
        return retraining.train_baseline(config, mlflow_run, features)
    if task_id == "evaluation.score_and_decide":
        return retraining.evaluate(config, run_id, mlflow_run, features, done["training.grid_search"],
                                done["training.baseline"])  # fmt: skip
    if task_id == "evaluation.promote":
        database_url = as_sqlalchemy_url(os.environ["AIRFLOW_CONN_PREDICTIONS_DB"])
        return retraining.promote(config, mlflow_run, done["training.grid_search"], done["evaluation.score_and_decide"],
                               snap, None, run_id=run_id, database_url=database_url)  # fmt: skip
    raise ValueError(f"unknown task {task_id!r} (known: {', '.join(UPSTREAM)})")


def child_plain(run_id: str, as_of: str) -> dict[str, Any]:
    """All tasks in this process; seconds per task (the first to import a library pays for it)."""
    config, done, seconds = _config(), {}, {}
    for task_id, _ in TASKS:
        started = time.perf_counter()
        done[task_id] = run_task(task_id, config, run_id, as_of, done)
        seconds[task_id] = time.perf_counter() - started
    return {"tasks": seconds, "decision": done["evaluation.score_and_decide"].get("verdict")}


def child_step(task_id: str, run_id: str, as_of: str, state_file: Path) -> dict[str, Any]:
    """One task in this fresh process; earlier outputs come from and go back to state_file."""
    done = json.loads(state_file.read_text()) if state_file.exists() else {}
    started = time.perf_counter()
    done[task_id] = run_task(task_id, _config(), run_id, as_of, done)
    seconds = time.perf_counter() - started
    state_file.write_text(json.dumps(done, default=str))
    return {"seconds": seconds}


def child_probe(what: str) -> dict[str, Any]:
    """A fixed cost measured in this fresh process (the interpreter's own start is measured by the parent)."""
    started = time.perf_counter()
    if what == "airflow-sdk":
        import airflow.sdk  # noqa: F401
    elif what == "dag-parse":
        import importlib.machinery
        import importlib.util

        import airflow.sdk  # noqa: F401  (the DAG processor and a task have it already)

        started = time.perf_counter()
        path = Path(os.environ["AIRFLOW__CORE__DAGS_FOLDER"]) / "retrain.py"
        loader = importlib.machinery.SourceFileLoader("bench_retrain_dag", str(path))
        module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
        loader.exec_module(module)
    elif what == "mlflow":
        import mlflow  # noqa: F401

        imported = time.perf_counter()
        from lifecycle.registry.tracking import experiment_id, mlflow_client

        experiment_id(PIPELINE)
        mlflow_client().search_runs([experiment_id(PIPELINE)], max_results=1)
        return {"import": imported - started, "client": time.perf_counter() - imported}
    elif what == "task-imports":
        import lightgbm  # noqa: F401
        import mlflow  # noqa: F401
        import pandas  # noqa: F401
        import sklearn  # noqa: F401
    elif what == "gx":
        import great_expectations  # noqa: F401
    else:
        raise ValueError(f"unknown probe {what!r}")
    return {"seconds": time.perf_counter() - started}


def child_main(role: str, args: list[str]) -> None:
    if role == "plain":
        result = child_plain(*args)
    elif role == "step":
        result = child_step(args[0], args[1], args[2], Path(args[3]))
    elif role == "probe":
        result = child_probe(args[0])
    else:
        raise SystemExit(f"unknown child role {role!r}")
    print(MARKER + json.dumps(result), flush=True)


# --- the parent: folders, environments, sides --------------------------------------------------------------------


class Bench:
    """The private folders and environments of one benchmark run."""

    def __init__(self, root: Path, scheduler_env: dict[str, str], bytecode_cache: bool = False) -> None:
        self.root = root
        self.state, self.base = root / "state", root / "base"
        self.dags = root / "dags"
        self.scheduler_env = scheduler_env
        self.env = {
            **os.environ,
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "MLFLOW_TRACKING_URI": f"sqlite:///{self.state / 'mlflow.db'}",
            "MLFLOW_ARTIFACT_ROOT": str(self.state / "mlartifacts"),
            "ARTIFACT_ROOT": f"file://{self.state / 'artifacts'}",
            "AIRFLOW_CONN_PREDICTIONS_DB": f"sqlite:///{self.state / 'predictions.db'}",
            "DATA_ROOT": str(root / "data"),
            "PYTHONUNBUFFERED": "1",
            "GX_ANALYTICS_ENABLED": "false",
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "DO_NOT_TRACK": "true",
        }
        for key in ("PIPELINES_DIR", "LIFECYCLE_SIMULATED_CLOCK", "LIFECYCLE_TASK_RETRIES"):
            self.env.pop(key, None)
        if bytecode_cache:  # what a pip-installed venv has: every module compiled once, not in every process
            self.env.pop("PYTHONDONTWRITEBYTECODE", None)
            self.env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")

    def home(self, side: str) -> dict[str, str]:
        return {**self.env, "AIRFLOW_HOME": str(self.root / f"airflow-{side}")}

    def prepare(self) -> dict[str, float]:
        """Data, the DAGs folder, migrated metadata databases, and the base state with its first champion."""
        from lifecycle.devtools import demo_data
        from lifecycle.devtools.local_airflow import migrate_db

        seconds = {}
        started = time.perf_counter()
        demo_data.write(self.root / "data" / PIPELINE, DATA_START, DATA_END, drift_from=DRIFT_FROM)
        seconds["demo data"] = time.perf_counter() - started
        self.dags.mkdir()
        for path in sorted((REPO / "dags").glob("*.py")):
            (self.dags / path.name).symlink_to(path)
        (self.dags / "airflow_overhead_null.py").write_text(
            NULL_DAG_SOURCE % {"xcom": NULL_DAG, "plain": NULL_DAG_NO_XCOM}
        )
        for side in ("dags-test", "scheduler"):
            home = self.home(side)
            Path(home["AIRFLOW_HOME"]).mkdir()
            started = time.perf_counter()
            migrate_db(home, self.root / f"migrate-{side}.log")
            seconds[f"db migrate ({side})"] = time.perf_counter() - started
        self.state.mkdir()
        started = time.perf_counter()
        result = in_child(self.env, "plain", "plain__base", BASE_AS_OF)
        seconds["first champion (plain, untimed)"] = time.perf_counter() - started
        if result["decision"] != "promote":
            raise RuntimeError(f"the base retrain as of {BASE_AS_OF} did not promote a champion: {result}")
        shutil.copytree(self.state, self.base)
        return seconds

    def restore(self) -> None:
        """Every timed run starts from the same state: one champion, nothing else."""
        shutil.rmtree(self.state)
        shutil.copytree(self.base, self.state)


def in_child(env: dict[str, str], role: str, *args: str, timeout: float = 1800) -> dict[str, Any]:
    """Run this file as a child; the JSON it prints after MARKER (its output shown when it fails)."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", role, *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER) :])
    raise RuntimeError(f"child {role} {args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def timed(function: Any, *args: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - started, result


def side_plain(bench: Bench, round_: int) -> dict[str, Any]:
    bench.restore()
    wall, result = timed(in_child, bench.env, "plain", f"plain__r{round_}", AS_OF)
    _check_decision(result["decision"], "plain")
    return {"wall": wall, "tasks": result["tasks"]}


def side_per_process(bench: Bench, round_: int) -> dict[str, Any]:
    bench.restore()
    state_file = bench.root / f"steps-r{round_}.json"
    tasks, walls = {}, {}
    started = time.perf_counter()
    for task_id, _ in TASKS:
        walls[task_id], result = timed(in_child, bench.env, "step", task_id, f"steps__r{round_}", AS_OF,
                                       str(state_file))  # fmt: skip
        tasks[task_id] = result["seconds"]
    wall = time.perf_counter() - started
    _check_decision(json.loads(state_file.read_text())["evaluation.score_and_decide"].get("verdict"), "per-process")
    return {"wall": wall, "tasks": tasks, "process": walls}


def _check_decision(verdict: str | None, side: str) -> None:
    """Every side must reach the gate with the same champion; a different path would not be the same work."""
    if verdict not in ("promote", "reject"):
        raise RuntimeError(f"{side}: the gate's verdict is {verdict!r}")


def dags_test(bench: Bench, dag_id: str, logical_date: str, conf: dict | None) -> dict[str, Any]:
    """`airflow dags test` in a fresh process; its wall time and its task instances from the metadata DB."""
    env = bench.home("dags-test")
    command = [sys.executable, "-m", "airflow", "dags", "test", dag_id, logical_date]
    if conf:
        command += ["--conf", json.dumps(conf)]
    launched = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    ended = launched + dt.timedelta(seconds=wall)
    if done.returncode != 0:
        raise RuntimeError(f"dags test {dag_id} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    with sqlite3.connect(Path(env["AIRFLOW_HOME"]) / "airflow.db") as db:
        run_id, state = db.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
        ).fetchone()
        rows = db.execute(
            "SELECT task_id, start_date, end_date, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
            (dag_id, run_id),
        ).fetchall()
    if state != "success":
        raise RuntimeError(f"dags test {dag_id}: run {run_id} is {state}")
    tis = {task: (_when(start), _when(end)) for task, start, end, _ in rows}
    return {"wall": wall, **timeline(tis, launched, ended)}


def _when(value: str) -> dt.datetime:
    found = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return found if found.tzinfo else found.replace(tzinfo=dt.UTC)


def timeline(tis: dict[str, tuple[dt.datetime, dt.datetime]], begin: dt.datetime, end: dt.datetime) -> dict:
    """Per task: duration, and the gap since the task it waited on ended (the latest to end before it started: an
    upstream, or in dags test the task run before it); before the first task, after the last, and the critical
    path (that chain back from the last task to end) split into work and gaps."""
    waited_on: dict[str, str | None] = {}
    tasks, gaps = {}, {}
    for task_id, (start, stop) in tis.items():
        before = [t for t, (_, end) in tis.items() if t != task_id and end <= start]
        waited_on[task_id] = max(before, key=lambda t: tis[t][1]) if before else None
        tasks[task_id] = (stop - start).total_seconds()
        gaps[task_id] = (start - tis[waited_on[task_id]][1]).total_seconds() if waited_on[task_id] else 0.0
    first = min(start for start, _ in tis.values())
    last_task = max(tis, key=lambda t: tis[t][1])
    path, node = [], last_task
    while node:
        path.append(node)
        node = waited_on[node]
    return {
        "dates": {t: [start.isoformat(), end.isoformat()] for t, (start, end) in tis.items()},
        "tasks": tasks,
        "gaps": gaps,
        "before_first_task": (first - begin).total_seconds(),
        "after_last_task": (end - tis[last_task][1]).total_seconds(),
        "critical_path": path[::-1],
        "path_work": sum(tasks[t] for t in path),
        "path_gaps": sum(gaps[t] for t in path),
    }


def side_dags_test(bench: Bench, round_: int) -> dict[str, Any]:
    bench.restore()
    day = (dt.date(2030, 1, 1) + dt.timedelta(days=round_)).isoformat()  # a fresh run id per round
    result = dags_test(bench, DAG_ID, day, {"as_of_date": AS_OF, "reason": "benchmark"})
    result["null"] = dags_test(bench, NULL_DAG, day, None)["wall"]
    result["null_no_xcom"] = dags_test(bench, NULL_DAG_NO_XCOM, day, None)["wall"]
    return result


def side_scheduler(
    bench: Bench, round_: int, preload: tuple[str, ...] = (), extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Start the services, run the retrain and the null DAGs through the scheduler, stop the services."""
    from lifecycle.devtools import local_airflow as la

    bench.restore()
    env = {**bench.home("scheduler"), **bench.scheduler_env, **(extra_env or {})}
    log_dir = bench.root / f"services-r{round_}{'-preload' if preload else ''}{'-env' if extra_env else ''}"
    started = time.perf_counter()
    result: dict[str, Any] = {}
    with la.running_airflow(env, log_dir=log_dir, startup_timeout=600, preload=preload) as airflow:
        for dag_id in (DAG_ID, NULL_DAG, NULL_DAG_NO_XCOM):
            la.wait_for_dag(airflow, dag_id, timeout=300, poll=0.5)
            la.unpause(airflow, dag_id)
        result["startup"] = time.perf_counter() - started
        result["healthy"] = airflow.startup_seconds
        run = scheduled_run(airflow, DAG_ID, {"as_of_date": AS_OF, "reason": "benchmark"})
        result.update(run)
        result["null"] = scheduled_run(airflow, NULL_DAG, {})
        result["null_no_xcom"] = scheduled_run(airflow, NULL_DAG_NO_XCOM, {})
        others = [r["dag_run_id"] for r in la.list_runs(airflow, DAG_ID) if r["run_type"] != "manual"]
        result["other_runs"] = others  # a cron or asset run after the unpause would share the machine with ours
        stopping = time.perf_counter()
    result["teardown"] = time.perf_counter() - stopping
    return result


def side_scheduler_preload(bench: Bench, round_: int) -> dict[str, Any]:
    from lifecycle.devtools.local_airflow import TASK_PRELOAD

    return side_scheduler(bench, round_, TASK_PRELOAD)


def side_scheduler_preload_serial(bench: Bench, round_: int) -> dict[str, Any]:
    from lifecycle.devtools.local_airflow import TASK_PRELOAD

    return side_scheduler(bench, round_, TASK_PRELOAD, SERIAL)


def scheduled_run(airflow: Any, dag_id: str, conf: dict) -> dict[str, Any]:
    """Trigger, wait (polling every 0.25 s), then the task instances' dates from REST."""
    from urllib.parse import quote

    from lifecycle.devtools import local_airflow as la

    began = dt.datetime.now(dt.UTC)
    started = time.perf_counter()
    run = la.trigger(airflow, dag_id, conf)
    done = la.wait_for_run(airflow, dag_id, run["dag_run_id"], timeout=1800, poll=0.25)
    wall = time.perf_counter() - started
    if done["state"] != "success":
        raise RuntimeError(f"{dag_id} run {run['dag_run_id']} is {done['state']} (logs: {airflow.log_dir})")
    path = f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run['dag_run_id'], safe='')}/taskInstances"
    found = airflow.api("GET", path + "?limit=100")["task_instances"]
    tis = {ti["task_id"]: (_when(ti["start_date"]), _when(ti["end_date"])) for ti in found}
    if dag_id == NULL_DAG_NO_XCOM:  # the same shape under bare names
        tis = {next(t for t, _ in TASKS if t.endswith("." + k)): v for k, v in tis.items()}
    return {"wall": wall, "run_id": run["dag_run_id"],
            **timeline(tis, began, _when(done["end_date"]))}  # fmt: skip


def probes(bench: Bench) -> dict[str, float]:
    """The fixed costs, one fresh process each."""
    env = bench.home("dags-test")
    out = {}
    out["interpreter"], _ = timed(subprocess.run, [sys.executable, "-c", "pass"])
    out["airflow CLI doing nothing (airflow version)"], _ = timed(
        _quiet, [sys.executable, "-m", "airflow", "version"], env
    )
    out["import airflow.sdk"] = in_child(env, "probe", "airflow-sdk")["seconds"]
    out["parse dags/retrain.py (airflow.sdk loaded)"] = in_child(env, "probe", "dag-parse")["seconds"]
    mlflow = in_child(env, "probe", "mlflow")
    out["import mlflow"] = mlflow["import"]
    out["MLflow client start-up (SQLite store, 2 calls)"] = mlflow["client"]
    out["import pandas+sklearn+lightgbm+mlflow"] = in_child(env, "probe", "task-imports")["seconds"]
    out["import great_expectations"] = in_child(env, "probe", "gx")["seconds"]
    return out


def _quiet(command: list[str], env: dict[str, str]) -> None:
    subprocess.run(command, env=env, capture_output=True, check=True)


RUNNERS = {"plain": side_plain, "per-process": side_per_process, "dags-test": side_dags_test,
           "scheduler": side_scheduler, "scheduler-preload": side_scheduler_preload,
           "scheduler-preload-serial": side_scheduler_preload_serial}  # fmt: skip


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def load_average() -> float:
    return os.getloadavg()[0]


def report(rounds: list[dict[str, Any]], fixed: list[dict[str, float]], sides: list[str]) -> dict[str, Any]:
    """Print the tables; the summary as a dict."""
    med = {s: median([r[s]["wall"] for r in rounds if s in r]) for s in sides}
    ratio = {s: median([r[s]["wall"] / r["plain"]["wall"] for r in rounds if s in r]) for s in sides}
    print("\n== Wall time per side (median over rounds), ratio to plain within each round")
    print(f"   {'side':14s} {'wall s':>8s} {'ratio':>6s}  per round")
    for s in sides:
        walls = " ".join(f"{r[s]['wall']:.1f}" for r in rounds if s in r)
        print(f"   {s:14s} {med[s]:8.1f} {ratio[s]:6.2f}x  [{walls}]")
    for side in [s for s in sides if s.startswith("scheduler")]:
        start = median([r[side]["startup"] for r in rounds])
        stop = median([r[side]["teardown"] for r in rounds])
        total = median([(r[side]["wall"] + r[side]["startup"] + r[side]["teardown"])
                        / r["plain"]["wall"] for r in rounds])  # fmt: skip
        others = sum(len(r[side]["other_runs"]) for r in rounds)
        print(f"   {side} services: start-up {start:.1f} s (healthy and the DAGs parsed), tear-down {stop:.1f} s;"
              f" counting both the ratio is {total:.2f}x; other retrain runs seen: {others}")  # fmt: skip
    if "scheduler" in sides and "scheduler-preload" in sides:
        after = median([r["scheduler-preload"]["wall"] / r["scheduler"]["wall"] for r in rounds])
        print(f"   scheduler-preload / scheduler, same round: {after:.2f}x")
    print("\n== Per task, median seconds")
    columns = [("plain", "tasks"), ("per-process", "process"), ("dags-test", "tasks"), ("scheduler", "tasks"),
               ("scheduler", "gaps"), ("scheduler-preload", "tasks"), ("scheduler-preload", "gaps"),
               ("scheduler-preload-serial", "tasks")]  # fmt: skip
    columns = [(s, k) for s, k in columns if s in sides]
    heads = {"tasks": "", "process": " proc", "gaps": " gap"}
    print(f"   {'task':30s}" + "".join(f"{s.replace('scheduler', 'sched') + heads[k]:>21s}" for s, k in columns))
    for task_id, _ in TASKS:
        cells = "".join(f"{median([r[s][k][task_id] for r in rounds if s in r]):21.2f}" for s, k in columns)
        print(f"   {task_id:30s}{cells}")
    fixed_med = {k: median([f[k] for f in fixed]) for k in fixed[0]} if fixed else {}
    if fixed_med:
        print("\n== Fixed costs, each in a fresh process (median)")
        for key, value in fixed_med.items():
            print(f"   {key:52s} {value:6.2f} s")
    where = where_it_goes(rounds, sides)
    for side, parts in where.items():
        print(f"\n== Where {side} - plain goes (median seconds; the parts need not add up exactly)")
        for key, value in parts.items():
            print(f"   {key:62s} {value:7.2f}")
    return {"median_wall": med, "ratio": ratio, "fixed": fixed_med, "where": where}


def where_it_goes(rounds: list[dict[str, Any]], sides: list[str]) -> dict[str, dict[str, float]]:
    """The difference to plain split by what the timelines show."""
    out: dict[str, dict[str, float]] = {}

    def m(fn: Any) -> float:
        return median([fn(r) for r in rounds])

    if "per-process" in sides:
        out["per-process"] = {
            "total difference": m(lambda r: r["per-process"]["wall"] - r["plain"]["wall"]),
            "process start + imports per task (process wall - in-task time), sum": m(
                lambda r: sum(r["per-process"]["process"][t] - r["per-process"]["tasks"][t] for t in UPSTREAM)
            ),
        }
    for side in ("dags-test", "scheduler", "scheduler-preload", "scheduler-preload-serial"):
        if side not in sides:
            continue
        parts = {
            "total difference": m(lambda r, s=side: r[s]["wall"] - r["plain"]["wall"]),
            "before the first task starts (start-up, parse, DB, queueing)": m(
                lambda r, s=side: r[s]["before_first_task"]
            ),
            "after the last task ends (run end, tear-down)": m(lambda r, s=side: r[s]["after_last_task"]),
            "between tasks on the critical path (scheduling latency, DB and XCom)": m(
                lambda r, s=side: r[s]["path_gaps"]
            ),
            "in tasks on the critical path, beyond plain's time for them": m(
                lambda r, s=side: r[s]["path_work"] - sum(r["plain"]["tasks"][t] for t in r[s]["critical_path"])
            ),
            "off the critical path (ran beside it), plain's time for it": m(
                lambda r, s=side: -sum(v for t, v in r["plain"]["tasks"].items() if t not in r[s]["critical_path"])
            ),
            "null DAG, same shape, no work in the tasks: wall": m(
                lambda r, s=side: r[s]["null"]["wall"] if isinstance(r[s]["null"], dict) else r[s]["null"]
            ),  # fmt: skip
            "null DAG without XCom: wall": m(
                lambda r, s=side: (
                    r[s]["null_no_xcom"]["wall"] if isinstance(r[s]["null_no_xcom"], dict) else r[s]["null_no_xcom"]
                )
            ),  # fmt: skip
        }
        if side.startswith("scheduler"):
            parts["services start-up (apart from the run)"] = m(lambda r, s=side: r[s]["startup"])
            parts["null DAG: per task in the task instance (fork, supervisor, parse, XCom)"] = m(
                lambda r, s=side: median(list(r[s]["null"]["tasks"].values()))
            )
            parts["null DAG: per gap between tasks (scheduler latency)"] = m(
                lambda r, s=side: median([g for t, g in r[s]["null"]["gaps"].items() if UPSTREAM[t]])
            )
            parts["null DAG without XCom: per task in the task instance"] = m(
                lambda r, s=side: median(list(r[s]["null_no_xcom"]["tasks"].values()))
            )
        out[side] = parts
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sides", default=",".join(SIDES), help=f"comma-separated, among {', '.join(SIDES)}")
    parser.add_argument("--scheduler-env", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for the scheduler side's services (to try a setting)")  # fmt: skip
    parser.add_argument(
        "--bytecode-cache",
        action="store_true",
        help="every process writes and reads a bytecode cache in the private folder (PYTHONPYCACHEPREFIX), as a "
        "venv with .pyc files would; by default the environment decides (PYTHONDONTWRITEBYTECODE, the venv's .pyc)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the private folder (its path is printed)")
    parser.add_argument("--check", action="store_true", help=f"exit 1 when a side is over {TARGET}x plain")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--report-from", type=Path, help="print the tables of a saved --out or progress file")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args.child[0], args.child[1:])
        return 0
    if args.report_from:
        saved = json.loads(args.report_from.read_text())
        done = [r for r in saved["rounds"] if all(s in r for s in SIDES if s in saved["rounds"][0])]
        report(done, saved["fixed"], [s for s in SIDES if s in saved["rounds"][0]])
        return 0
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = set(sides) - set(SIDES)
    if unknown or "plain" not in sides:
        parser.error(f"--sides must include plain and only {', '.join(SIDES)} (got {args.sides})")
    scheduler_env = dict(item.split("=", 1) for item in args.scheduler_env)
    root = Path(tempfile.mkdtemp(prefix="airflow-overhead-"))
    bench = Bench(root, scheduler_env, args.bytecode_cache)
    bytecode = (
        "private cache"
        if args.bytecode_cache
        else f"PYTHONDONTWRITEBYTECODE={bench.env.get('PYTHONDONTWRITEBYTECODE')}"
    )
    print(f"private folder {root}; load average {load_average():.1f}; sides {', '.join(sides)}; bytecode: {bytecode}",
          flush=True)  # fmt: skip
    try:
        for key, value in bench.prepare().items():
            print(f"   set-up: {key} {value:.1f} s", flush=True)
        rounds, fixed = [], []
        for round_ in range(args.rounds):
            order = sides[round_ % len(sides) :] + sides[: round_ % len(sides)]
            results: dict[str, Any] = {"load": [load_average()]}
            for side in order:
                try:
                    results[side] = RUNNERS[side](bench, round_)
                finally:  # what was measured so far survives a failing side
                    progress = root.with_name(root.name + "-progress.json")
                    progress.write_text(json.dumps({"rounds": [*rounds, results], "fixed": fixed}, default=str))
                results["load"].append(load_average())
                print(f"   round {round_ + 1}: {side} {results[side]['wall']:.1f} s (load {load_average():.1f})",
                      flush=True)  # fmt: skip
            fixed.append(probes(bench))
            rounds.append(results)
        summary = report(rounds, fixed, sides)
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    result = {"rounds": rounds, "fixed": fixed, "summary": summary, "scheduler_env": scheduler_env, "target": TARGET,
              "bytecode": bytecode}  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, default=str))
    over = [s for s in sides if s != "plain" and s != "per-process" and summary["ratio"][s] > TARGET]
    return 1 if args.check and over else 0


if __name__ == "__main__":
    sys.exit(main())
