"""The lifecycle on the CeleryExecutor: two local Celery workers over a throwaway Redis, sharing no local folder.

Airflow's metadata, MLflow's tracking store and the predictions database are throwaway PostgreSQL databases;
data, artifacts and models are in S3 (moto's server). Each worker has its own working directory, HOME, TMPDIR,
AIRFLOW_HOME and copies of the DAGs and pipelines (celery_stack.py). Celery's remote control says which worker
takes tasks, so the hand-offs are certain: the retrain runs on w2, the model it registers is loaded on w1, then
both take batch prediction (four mapped partitions) and the asset-triggered drift check.

The thread plan: four grid searches at once on w1 (4 slots, 4 cores) each get one thread, and a /proc sampler
of w1's task processes sees about 4 busy threads while all four search (the plan before worker slots gave
each search every core: 16 busy threads).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import boto3
import pytest
import sqlalchemy as sa

from lifecycle.devtools import local_airflow as la

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BUCKET = "lifecycle-celery"
NAME = "demo_churn"
RETRAIN, PREDICT, DRIFT, SEARCHES = (
    f"{NAME}__retrain",
    f"{NAME}__batch_predict",
    f"{NAME}__drift_check",
    "celery_searches",
)
AS_OF, BATCH = "2026-02-10", "2026-02-12"
GRID = {"num_leaves": [7], "n_estimators": [30]}  # tiny: what is tested is where and how it runs
WINDOW_DAYS = 21
# Settings of the session (tests/conftest.py) that must not reach this stack: each is set below or left unset.
DROPPED = ("LIFECYCLE_SEARCH_JOBS", "LIFECYCLE_WORKER_CORES", "LIFECYCLE_WORKER_SLOTS", "LIFECYCLE_PARSE_CACHE")


def _stack_module() -> ModuleType:
    import importlib.util

    name = "lifecycle_tests_celery_stack"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "celery_stack.py")
        assert spec and spec.loader
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


cs = _stack_module()


@dataclass
class Stack:
    airflow: la.LocalAirflow
    broker: str
    w1: object
    w2: object
    predictions_url: str
    timings: dict[str, float]


def _s3(url: str):
    return boto3.client(
        "s3", endpoint_url=url, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )


def _upload_demo_data(url: str, demo_data: Path) -> None:
    client = _s3(url)
    client.create_bucket(Bucket=BUCKET)
    for path in demo_data.rglob("*"):
        if path.is_file() and ("2026-02" in str(path) or "2026-01" in str(path) or path.name == "accounts.csv"):
            client.upload_file(str(path), BUCKET, f"data/{NAME}/{path.relative_to(demo_data)}")


def _create_mlflow_tables(env: dict[str, str]) -> None:
    """MLflow creates its tables on first use: once here, not raced by four tasks starting at once."""
    code = "import mlflow; mlflow.MlflowClient().search_experiments()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def _environment(root: Path, s3_url: str, broker: str, databases: dict[str, str]) -> dict[str, str]:
    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": "testing",
        "extra": {"endpoint_url": s3_url, "region_name": "us-east-1"},
    }
    env = {key: value for key, value in os.environ.items() if key not in DROPPED}
    env.update(
        {
            "AIRFLOW_HOME": str(root / "airflow"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": databases["airflow"],
            "AIRFLOW__CELERY__BROKER_URL": broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": broker.rsplit("/", 1)[0] + "/1",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "lifecycle.devtools.local_airflow.hostname",
            "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "PIPELINES_DIR": str(root / "pipelines"),
            "DATA_ROOT": f"s3://{BUCKET}/data",
            "ARTIFACT_ROOT": f"s3://{BUCKET}/artifacts",
            "MLFLOW_TRACKING_URI": databases["mlflow"],
            "MLFLOW_ARTIFACT_ROOT": f"s3://{BUCKET}/mlflow",
            "MLFLOW_S3_ENDPOINT_URL": s3_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(connection),
            "AIRFLOW_CONN_PREDICTIONS_DB": databases["predictions"].replace("postgresql+psycopg://", "postgresql://"),
        }
    )
    return env


@pytest.fixture(scope="module")
def stack(demo_data, s3_endpoint, postgres_helper, tmp_path_factory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("celery")
    timings: dict[str, float] = {}
    started = time.monotonic()
    _upload_demo_data(s3_endpoint["url"], demo_data)
    # What the dag-processor parses; every worker gets a copy of its own.
    shutil.copytree(REPO / "dags", root / "dags", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(HERE / "celery_searches_dag.py", root / "dags" / "celery_searches.py")
    (root / "pipelines").mkdir()
    text = (REPO / "include" / "pipelines" / f"{NAME}.yaml").read_text()
    assert "  mode: enforce" in text
    (root / "pipelines" / f"{NAME}.yaml").write_text(text.replace("  mode: enforce", '  mode: "off"'))  # no bootstrap
    with (
        cs.redis_broker(root / "redis") as broker,
        postgres_helper.throwaway_database("celery_airflow") as airflow_db,
        postgres_helper.throwaway_database("celery_mlflow") as mlflow_db,
        postgres_helper.throwaway_database("celery_predictions") as predictions_db,
    ):
        databases = {"airflow": airflow_db, "mlflow": mlflow_db, "predictions": predictions_db}
        env = _environment(root, s3_endpoint["url"], broker, databases)
        _create_mlflow_tables(env)
        # w1 takes nothing until the retrain is done: the model it loads then can only come through S3 and MLflow.
        w1 = cs.Worker("w1", concurrency=4, cores=4, root=root / "w1", queues=("parked_w1",))
        w2 = cs.Worker("w2", concurrency=2, cores=2, root=root / "w2")
        extra = {w.name: w.prepare(root / "dags", root / "pipelines") for w in (w1, w2)}
        timings["set-up"] = time.monotonic() - started
        with la.running_airflow(env, log_dir=root / "logs", executor="CeleryExecutor", extra=extra) as airflow:
            timings["airflow startup"] = airflow.startup_seconds
            cs.wait_for_workers(broker, [w1, w2], airflow)
            for dag_id in (RETRAIN, PREDICT, DRIFT, SEARCHES):
                la.wait_for_dag(airflow, dag_id, timeout=180)
                la.unpause(airflow, dag_id)
            timings["workers and DAGs ready"] = time.monotonic() - started - sum(timings.values())
            yield Stack(airflow, broker, w1, w2, predictions_db, timings)
    print("timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))


def _quoted(*parts: str) -> str:
    return "/".join(urllib.parse.quote(p, safe="") for p in parts)


def _task_instances(airflow: la.LocalAirflow, dag_id: str, run_id: str) -> list[dict]:
    path = f"/api/v2/dags/{_quoted(dag_id)}/dagRuns/{_quoted(run_id)}/taskInstances?limit=200"
    return airflow.api("GET", path)["task_instances"]


def _xcom(airflow: la.LocalAirflow, dag_id: str, run_id: str, task_id: str, map_index: int = -1):
    path = f"/api/v2/dags/{_quoted(dag_id, 'dagRuns', run_id, 'taskInstances', task_id)}/xcomEntries/return_value"
    value = airflow.api("GET", f"{path}?map_index={map_index}&deserialize=true")["value"]
    return json.loads(value) if isinstance(value, str) else value


def _run(stack: Stack, dag_id: str, conf: dict, logical_date: str | None = None, timeout: float = 600) -> dict:
    started = time.monotonic()
    run = la.trigger(stack.airflow, dag_id, conf, logical_date=logical_date)
    finished = la.wait_for_run(stack.airflow, dag_id, run["dag_run_id"], timeout=timeout)
    stack.timings[dag_id] = time.monotonic() - started
    tasks = _task_instances(stack.airflow, dag_id, run["dag_run_id"])
    states = {(t["task_id"], t["map_index"]): t["state"] for t in tasks}
    assert finished["state"] == "success", f"{dag_id}: {states}; logs under {stack.w1.root.parent}"
    return {"run": finished, "tasks": tasks}


def _hosts(tasks: list[dict]) -> set[str]:
    return {t["hostname"] for t in tasks if t["state"] == "success"}


def _midnight(day: str) -> str:
    return dt.datetime.fromisoformat(day).replace(tzinfo=dt.UTC).isoformat()


def test_lifecycle_and_thread_plan_on_two_celery_workers(stack: Stack):
    airflow, broker = stack.airflow, stack.broker

    # 1. The retrain, on w2 alone.
    retrain = _run(
        stack,
        RETRAIN,
        {"reason": "celery", "search": "grid", "grid": GRID, "window_days": WINDOW_DAYS},
        _midnight(AS_OF),
    )
    assert _hosts(retrain["tasks"]) == {"w2"}, [(t["task_id"], t["hostname"]) for t in retrain["tasks"]]
    features = _xcom(airflow, RETRAIN, retrain["run"]["dag_run_id"], "features.split_and_fit")
    train_uri = features["splits"]["train"]
    assert train_uri.startswith(f"s3://{BUCKET}/artifacts/")

    # 2. Four searches at once on w1 (4 slots, 4 cores), w2 parked.
    cs.consume(broker, stack.w1, on=True)
    cs.consume(broker, stack.w2, on=False)
    conf = {"pipeline": NAME, "train_uri": train_uri, "grid": GRID}
    with cs.ThreadSampler(airflow.processes["w1"].pid) as sampler:
        searches = _run(stack, SEARCHES, conf, timeout=420)
    results = [_xcom(airflow, SEARCHES, searches["run"]["dag_run_id"], "search", i) for i in range(4)]
    assert {r["host"] for r in results} == {"w1"} == _hosts(searches["tasks"])
    assert len({r["pid"] for r in results}) == 4
    for result in results:
        assert result["plan"] == {"search_jobs": 1, "lgbm_threads": 1, "cores": 4, "slots": 4}, result
    assert max(r["started"] for r in results) < min(r["ended"] for r in results), "the four fits overlapped"
    assert sum(r["plan"]["search_jobs"] * r["plan"]["lgbm_threads"] for r in results) <= 4
    together = [s for s in sampler.samples if s.tasks == 4]
    assert together, f"the sampler never saw the four searches at once: {sampler.samples}"
    # While the four search, they keep about 4 threads busy; a sample may catch one more thread that is not
    # LightGBM's (a task's supervisor shipping logs, the next task importing). The nearest plan that would
    # oversubscribe (2 threads a search) keeps 8 busy, the plan before worker slots 16.
    peak = max(s.busy_threads for s in sampler.samples)
    typical = statistics.median(s.busy_threads for s in together)
    assert typical <= 4, f"{typical} busy threads (median) on a worker given 4 cores: {sampler.samples}"
    assert peak < 8, f"{peak} busy threads on a worker given 4 cores: {sampler.samples}"
    assert max(s.busy_threads for s in together) >= 1, "the sampler sees the searches compute"
    stack.timings["busy threads, peak with 4 searches"] = peak

    # 3. Batch prediction (four mapped partitions) and the asset-triggered drift check, on both workers.
    cs.consume(broker, stack.w2, on=True)
    before = {r["dag_run_id"] for r in la.list_runs(airflow, DRIFT)}
    predict = _run(stack, PREDICT, {"partitions": 4}, _midnight(BATCH))
    partitions = [t for t in predict["tasks"] if t["task_id"] == "prediction.score_partition"]
    # Four asked for; the plan caps them at the staged batch's row groups (3 for the demo's 600-row day).
    assert sorted(t["map_index"] for t in partitions) == list(range(len(partitions))) and len(partitions) >= 3
    assert {t["state"] for t in partitions} == {"success"}
    started = time.monotonic()
    drift = la.wait_for_run(airflow, DRIFT, ignore=before, timeout=420)
    stack.timings[DRIFT] = time.monotonic() - started
    drift_tasks = _task_instances(airflow, DRIFT, drift["dag_run_id"])
    assert drift["state"] == "success", [(t["task_id"], t["state"]) for t in drift_tasks]
    hosts = _hosts(retrain["tasks"]) | _hosts(searches["tasks"]) | _hosts(predict["tasks"]) | _hosts(drift_tasks)
    assert hosts == {"w1", "w2"}
    print("batch prediction tasks per worker:", {t["task_id"]: t["hostname"] for t in predict["tasks"]})

    engine = sa.create_engine(stack.predictions_url)
    try:
        with engine.connect() as conn:
            rows, versions, ids = conn.execute(
                sa.text(
                    "SELECT count(*), count(DISTINCT model_version), count(DISTINCT entity_id) FROM predictions "
                    "WHERE pipeline = :p AND CAST(batch_key AS text) LIKE :b"
                ),
                {"p": NAME, "b": f"{BATCH}%"},
            ).one()
            checked = conn.execute(
                sa.text("SELECT count(*) FROM drift_metrics WHERE CAST(batch_key AS text) LIKE :b"), {"b": f"{BATCH}%"}
            ).scalar()
    finally:
        engine.dispose()
    assert (rows, versions, ids) == (600, 1, 600), "the day's rows scored once, by the one registered version"
    assert checked >= 13, "one drift row per feature, plus the prediction and dataset rows"
    for worker in (stack.w1, stack.w2):
        assert any(worker.log_folder.rglob("*.log")), f"{worker.name} kept its task logs in its own AIRFLOW_HOME"
