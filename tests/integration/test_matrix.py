"""Every task and every base-source layout through Airflow: retrain → batch predict → drift check.

Three pipelines, written as YAML files into a PIPELINES_DIR of their own so the real DAG files build them:

- binary on one CSV file, local storage;
- multiclass (five classes, one under 2 %) on monthly Parquet files matched by a glob, on S3 (moto's server
  over HTTP): sources, artifacts and MLflow's model artifacts all in the bucket;
- regression on a SQL query (`WHERE event_ts >= :start AND event_ts < :end`) over a real Airflow connection to
  PostgreSQL, with a SQL lookup too, writing its predictions to PostgreSQL.

(date_partitioned is the demo's layout, covered by the other integration tests; here a fourth pipeline on
daily partitions with a day missing proves the retrain fails fast listing it.) Each pipeline is retrained
until it has a champion, scores one day (exactly that day's rows land in the predictions table), and its
drift check runs on that batch and writes its report. Then one more step each: the multiclass pipeline is
retrained against its champion (the paired bootstrap through Airflow), the SQL pipeline scores a file given
as `input_uri`, and the file pipeline's lookup gets a repeated join key, which scoring refuses.

The pipelines run side by side, each with its own Airflow and MLflow databases. Every cell of the full
matrix is covered function by function in tests/unit/test_matrix_layouts.py.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.airflow

AS_OF = "2026-04-01"  # trains on 2026-03-02 .. 2026-03-31
BATCH_DAY = dt.date(2026, 4, 3)
BUCKET = "matrix"
AGAIN = {"matrix_multiclass_glob": "2026-04-06"}  # retrained a second time, with a champion to beat
DURATIONS: dict[str, float] = {}
LOGS: list[Path] = []  # where each run's output is kept, for a failing test to point at


def _load(name: str, filename: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(filename))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


md = _load("lifecycle_tests_matrix_data", "matrix_data.py")

CELLS = {
    "matrix_binary_file": {"task": "binary", "layout": "file", "storage": "local", "format": "csv"},
    "matrix_multiclass_glob": {"task": "multiclass", "layout": "glob", "storage": "s3", "format": "parquet"},
    "matrix_regression_sql": {"task": "regression", "layout": "sql", "storage": "local", "format": None},
}
GAPS = "matrix_gaps"  # binary on daily partitions, one day of the training window missing
GAP_DAY = dt.date(2026, 3, 15)
INPUT_DAY, CHOSEN_ROWS = dt.date(2026, 4, 4), 137  # the SQL pipeline scores a chosen file as this batch
REPEATED_DAY = dt.date(2026, 4, 5)  # the file pipeline's batch with a repeated lookup key


def _airflow_uri(sqlalchemy_url: str) -> str:
    return sqlalchemy_url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(scope="module")
def matrix(s3_endpoint, postgres_url, airflow_db, tmp_path_factory):
    """The three pipelines' data, YAML files and subprocess environments."""
    from lifecycle.persistence import storage

    state = tmp_path_factory.mktemp("matrix")
    pipelines = state / "pipelines"
    LOGS.append(state)
    # Bytecode for the subprocesses, in a folder of this module's: the environment may turn it off
    # (PYTHONDONTWRITEBYTECODE), and every `airflow dags test` would then compile Airflow, MLflow and the rest
    # from source again (half of each run). Warmed up while the data is written.
    bytecode = {"PYTHONDONTWRITEBYTECODE": "", "PYTHONPYCACHEPREFIX": str(state / "pycache")}
    warm = subprocess.Popen([sys.executable, "-c", WARM_UP], env={**os.environ, **bytecode},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(
            {
                "conn_type": "aws",
                "login": "testing",
                "password": "testing",
                "extra": {"endpoint_url": s3_endpoint["url"], "region_name": "us-east-1"},
            }
        ),
    }
    common = {
        **os.environ,
        **bytecode,
        "PIPELINES_DIR": str(pipelines),
        "LIFECYCLE_TASK_RETRIES": "0",
        # Tiny grids: one process fits faster than spawning search workers on this 2-core machine.
        "LIFECYCLE_SEARCH_JOBS": "1",
    }
    cells: dict[str, dict] = {}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in aws.items():
            patch.setenv(key, value)
        storage.s3_client.cache_clear()
        try:
            storage.s3_client().create_bucket(Bucket=BUCKET)
            for name, cell in CELLS.items():
                data = md.frame(cell["task"])
                env = {**common, "AIRFLOW_CONN_PREDICTIONS_DB": f"sqlite:///{state / f'{name}-predictions.db'}",
                       "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _airflow_db_copy(state / f"{name}-airflow.db"),
                       # One MLflow store each too: MLflow's first use of a SQLite store migrates it, racily.
                       "MLFLOW_TRACKING_URI": f"sqlite:///{state / f'{name}-mlflow.db'}"}  # fmt: skip
                if cell["storage"] == "s3":
                    root = f"s3://{BUCKET}/data/{name}"
                    env.update(aws, ARTIFACT_ROOT=f"s3://{BUCKET}/artifacts", MLFLOW_ARTIFACT_ROOT=f"s3://{BUCKET}/mlflow",
                               MLFLOW_S3_ENDPOINT_URL=s3_endpoint["url"])  # fmt: skip
                else:
                    root = str(state / "data" / name)
                    env.update(ARTIFACT_ROOT=f"file://{state / 'artifacts'}",
                               MLFLOW_ARTIFACT_ROOT=str(state / "mlartifacts"))  # fmt: skip
                if cell["layout"] == "sql":
                    env["AIRFLOW_CONN_MATRIX_WAREHOUSE"] = _airflow_uri(postgres_url)
                    env["AIRFLOW_CONN_PREDICTIONS_DB"] = _airflow_uri(postgres_url)
                    base = md.write_base(data, "sql", root, sql_url=postgres_url, conn_id="matrix_warehouse")
                    lookup = md.write_lookup(sql_url=postgres_url, conn_id="matrix_warehouse")
                else:
                    base = md.write_base(data, cell["layout"], root, cell["format"])
                    lookup = md.write_lookup(root)
                # A SQL base source has no folder: the file chosen at trigger time must be allowed by name.
                uploads = (
                    {"prediction": {"input_prefixes": [str(state / "uploads")]}} if cell["layout"] == "sql" else {}
                )
                md.write_pipeline(pipelines, md.pipeline_dict(name, cell["task"], [base, lookup], **uploads))
                cells[name] = {**cell, "env": env, "day_rows": len(md.day_rows(data, BATCH_DAY)), "rows": len(data),
                               "lookup_uri": lookup.get("uri")}  # fmt: skip
                if cell["layout"] == "sql":
                    chosen = md.day_rows(data, REPEATED_DAY).head(CHOSEN_ROWS)
                    (state / "uploads").mkdir(exist_ok=True)
                    chosen.to_parquet(state / "uploads" / "chosen.parquet", index=False)
                    cells[name]["chosen"] = {
                        "uri": str(state / "uploads" / "chosen.parquet"),
                        "ids": sorted(map(str, chosen[md.ID])),
                    }
            data = md.frame("binary")
            root = str(state / "data" / GAPS)
            base = md.write_base(data[data[md.TS].dt.date != GAP_DAY], "date_partitioned", root)
            md.write_pipeline(pipelines, md.pipeline_dict(GAPS, "binary", [base, md.write_lookup(root)]))
            gaps_env = {**common, "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": _airflow_db_copy(state / f"{GAPS}-airflow.db"),
                        "MLFLOW_TRACKING_URI": f"sqlite:///{state / f'{GAPS}-mlflow.db'}",
                        "ARTIFACT_ROOT": f"file://{state / 'artifacts'}"}  # fmt: skip
            cells[GAPS] = {"task": "binary", "layout": "date_partitioned", "storage": "local", "env": gaps_env}
        finally:
            storage.s3_client.cache_clear()
    warm.wait(timeout=600)
    return cells


WARM_UP = """
import airflow.cli.commands.dag_command, airflow.sdk, airflow.providers.standard.operators.hitl
import great_expectations, lightgbm, matplotlib.pyplot, mlflow.sklearn, psycopg, sklearn.linear_model
import lifecycle.tasks.batch_scoring, lifecycle.tasks.drift_monitoring, lifecycle.ui.report, lifecycle.tasks.retraining, lifecycle.ml.training
"""


def _airflow_db_copy(path: Path) -> str:
    """A copy of the session's migrated Airflow database: each pipeline's runs go side by side, unlocked."""
    from airflow.configuration import conf

    source = conf.get("database", "sql_alchemy_conn").removeprefix("sqlite:///")
    with sqlite3.connect(source) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    return f"sqlite:///{path}"


def _run(env: dict, dag_id: str, date: str, conf: dict | None = None, label: str = "") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "airflow", "dags", "test", dag_id, date]
    if conf:
        command += ["--conf", json.dumps(conf)]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    DURATIONS[dag_id + label] = round(time.perf_counter() - started, 1)
    result.log = LOGS[0] / f"{dag_id}{label}.log"
    result.log.write_text(result.stdout + result.stderr)
    return result


def _tail(result: subprocess.CompletedProcess) -> str:
    return f"(whole output: {result.log})\n" + result.stdout[-6000:] + result.stderr[-3000:]


CHECK = r"""
import json, os, sys
import sqlalchemy as sa
from lifecycle.persistence import storage
from lifecycle.registry import tracking
from lifecycle.persistence.predictions_db import engine_for

name, batch, others = sys.argv[1], sys.argv[2], sys.argv[3:]
client = tracking.mlflow_client()
version = tracking.champion(name)
out = {"champion": str(version.version) if version else None}
if version:
    run = client.get_run(version.run_id)
    out["verdict"] = run.data.tags.get("gate.verdict")
    out["holdout"] = {k: v for k, v in run.data.metrics.items() if k.startswith("holdout_challenger_")}
    out["model_source"] = version.source
experiment = client.get_experiment_by_name(f"lifecycle/{name}")
parents = [] if experiment is None else client.search_runs(
    [experiment.experiment_id], f"tags.`airflow.dag_id` = '{name}__retrain'", order_by=["attributes.start_time DESC"])
out["retrains"] = len(parents)
out["registered"] = [str(v.version) for v in client.search_model_versions(f"name='{name}'")]
if not version:
    out["gate_reason"] = [r.data.tags.get("gate.reason") for r in parents]
    print(json.dumps(out, default=str))
    sys.exit(0)
if parents:
    import mlflow
    latest = parents[0]
    decision = mlflow.artifacts.load_dict(f"runs:/{latest.info.run_id}/evaluation/decision.json")
    out["latest_decision"] = {k: decision.get(k) for k in ("verdict", "reason", "margin", "checks", "champion_version")}
engine = engine_for(os.environ["AIRFLOW_CONN_PREDICTIONS_DB"])
with engine.connect() as conn:
    rows = conn.execute(sa.text(
        "SELECT entity_id, score, label, model_version FROM predictions WHERE pipeline = :p AND batch_key = :b"
    ), {"p": name, "b": batch}).all()
    drift = conn.execute(sa.text(
        "SELECT feature, kind, drifted FROM drift_metrics WHERE pipeline = :p AND batch_key = :b"
    ), {"p": name, "b": batch}).all()
    out["other_batches"] = {
        other: sorted(r[0] for r in conn.execute(sa.text(
            "SELECT entity_id FROM predictions WHERE pipeline = :p AND batch_key = :b"), {"p": name, "b": other}))
        for other in others
    }
engine.dispose()
out["predictions"] = len(rows)
out["entities"] = len({r[0] for r in rows})
out["labels"] = sorted({str(r[2]) for r in rows})
out["score_range"] = [min(r[1] for r in rows), max(r[1] for r in rows)] if rows else None
out["versions"] = sorted({r[3] for r in rows})
out["drift_rows"] = {r[0]: [r[1], bool(r[2])] for r in drift}
root = os.environ["ARTIFACT_ROOT"]
reports = storage.glob(f"{root}/{name}/*/drift/report.json")
out["drift_reports"] = reports
if reports:
    report = storage.read_json(reports[-1])
    out["report"] = {"rows": report["rows"], "batch_key": report["batch_key"], "features": sorted(report["features"]),
                     "dataset_drift": report["dataset_drift"], "reason": report["reason"]}
    out["report_html"] = storage.exists(reports[-1].replace("report.json", "report.html"))
print(json.dumps(out, default=str))
"""


def _check(env: dict, name: str) -> dict:
    """What the runs left behind, read in the pipeline's environment (its MLflow, database and store)."""
    days = [d.isoformat() for d in (BATCH_DAY, INPUT_DAY, REPEATED_DAY)]
    result = subprocess.run(
        [sys.executable, "-c", CHECK, name, *days], capture_output=True, text=True, env=env, timeout=300
    )
    if result.returncode != 0:
        return {"error": result.stderr[-4000:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def _through_airflow(name: str, cell: dict) -> dict:
    """Retrain → batch predict → drift check of one pipeline, then its extra step; each only if the last passed."""
    env = cell["env"]
    runs = {"retrain": _run(env, f"{name}__retrain", AS_OF, {"reason": "matrix"})}
    if name == GAPS:
        return {"runs": runs, "found": _check(env, name)}
    if runs["retrain"].returncode == 0:
        runs["predict"] = _run(env, f"{name}__batch_predict", BATCH_DAY.isoformat())
    if runs.get("predict") and runs["predict"].returncode == 0:
        day = BATCH_DAY.isoformat()
        runs["drift"] = _run(env, f"{name}__drift_check", day, {"batch_date": day})
    if runs.get("drift") and runs["drift"].returncode == 0:
        if name in AGAIN:  # against the champion now: the paired bootstrap on a multiclass holdout
            runs["again"] = _run(env, f"{name}__retrain", AGAIN[name], {"reason": "matrix: again"}, " (again)")
        if cell.get("chosen"):  # a SQL source's batch from a file chosen at trigger time
            conf = {"input_uri": cell["chosen"]["uri"]}
            runs["input_uri"] = _run(env, f"{name}__batch_predict", INPUT_DAY.isoformat(), conf, " (input_uri)")
        if cell["layout"] == "file":  # the lookup now repeats a join key: scoring must refuse it
            from lifecycle.persistence import storage

            repeated = md.stores().iloc[[0, 1, 2, 2]]
            storage.write_bytes(cell["lookup_uri"], pd.concat([md.stores(), repeated]).to_csv(index=False).encode())
            runs["repeated"] = _run(env, f"{name}__batch_predict", REPEATED_DAY.isoformat(), None, " (repeated key)")
    return {"runs": runs, "found": _check(env, name)}


@pytest.fixture(scope="module")
def lifecycle(matrix):
    """Each pipeline through Airflow once for the module, the three side by side (own Airflow databases)."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(matrix)) as pool:
        futures = {name: pool.submit(_through_airflow, name, cell) for name, cell in matrix.items()}
        outcome = {name: future.result() for name, future in futures.items()}
    DURATIONS["all pipelines, wall"] = round(time.perf_counter() - started, 1)
    return outcome


@pytest.mark.parametrize("name", list(CELLS))
def test_retrain_ends_with_a_champion(lifecycle, name):
    run, found = lifecycle[name]["runs"]["retrain"], lifecycle[name]["found"]
    assert run.returncode == 0, _tail(run)
    assert "error" not in found, found
    assert found["champion"] == "1" and found["verdict"] == "promote", found
    task = CELLS[name]["task"]
    primary = {"binary": "roc_auc", "multiclass": "roc_auc", "regression": "r2"}[task]
    floor = {"binary": 0.7, "multiclass": 0.7, "regression": 0.5}[task]
    assert found["holdout"][f"holdout_challenger_{primary}"] > floor, found["holdout"]
    if CELLS[name]["storage"] == "s3":
        assert found["model_source"].startswith(("models:/", f"s3://{BUCKET}/")), found["model_source"]


@pytest.mark.parametrize("name", list(CELLS))
def test_batch_predict_writes_exactly_the_days_rows(lifecycle, matrix, name):
    run, found = lifecycle[name]["runs"].get("predict"), lifecycle[name]["found"]
    assert run is not None, "no champion to score with"
    assert run.returncode == 0, _tail(run)
    expected = matrix[name]["day_rows"]
    assert 300 <= expected < matrix[name]["rows"] / 30
    assert found["predictions"] == found["entities"] == expected, found
    assert found["versions"] == ["1"]
    task = CELLS[name]["task"]
    if task == "binary":
        assert set(found["labels"]) <= {"0", "1"} and 0 <= found["score_range"][0] <= found["score_range"][1] <= 1
    elif task == "multiclass":
        assert set(found["labels"]) <= {*md.CLASSES, md.RARE} and len(found["labels"]) >= 3, found["labels"]
        assert 0.2 <= found["score_range"][0] <= found["score_range"][1] <= 1
    else:
        assert found["labels"] == ["None"] and 0 < found["score_range"][0] < found["score_range"][1] < 500


@pytest.mark.parametrize("name", list(CELLS))
def test_drift_check_runs_on_the_batch_and_writes_its_report(lifecycle, matrix, name):
    run, found = lifecycle[name]["runs"].get("drift"), lifecycle[name]["found"]
    assert run is not None, "no batch to check"
    assert run.returncode == 0, _tail(run)
    features = {*md.NUMERIC, *md.CATEGORICAL}
    assert features <= set(found["drift_rows"]), found["drift_rows"]
    assert "__dataset__" in found["drift_rows"] and "__prediction__" in found["drift_rows"]
    assert len(found["drift_reports"]) == 1, found["drift_reports"]
    report = found["report"]
    assert report["batch_key"] == BATCH_DAY.isoformat() and report["rows"] == matrix[name]["day_rows"]
    assert features <= set(report["features"]) and found["report_html"]
    if CELLS[name]["storage"] == "s3":
        assert found["drift_reports"][0].startswith(f"s3://{BUCKET}/artifacts/{name}/")


@pytest.mark.parametrize("name", list(AGAIN))
def test_retrain_against_the_champion_bootstraps_the_multiclass_holdout(lifecycle, name):
    run, found = lifecycle[name]["runs"].get("again"), lifecycle[name]["found"]
    assert run is not None, "the first lifecycle did not finish"
    assert run.returncode == 0, _tail(run)
    decision = found["latest_decision"]
    assert found["retrains"] == 2 and str(decision["champion_version"]["version"]) == "1", decision
    assert decision["margin"]["resamples"] == 50, decision["margin"]
    assert any(c["check"] == "champion" for c in decision["checks"]), decision["checks"]
    assert found["champion"] in ("1", "2"), "promoted or kept, there is a champion"


@pytest.mark.parametrize("name", ["matrix_binary_file", "matrix_multiclass_glob", "matrix_regression_sql"])
def test_a_batch_from_the_training_distribution_shows_no_drift(lifecycle, name):
    """The generator does not drift: the batch day is drawn like the training days."""
    report = lifecycle[name]["found"].get("report")
    assert report is not None, "no drift report"
    assert report["dataset_drift"] is False, report["reason"]


def test_sql_source_scores_the_input_uri_when_given(lifecycle, matrix):
    name = "matrix_regression_sql"
    run, found = lifecycle[name]["runs"].get("input_uri"), lifecycle[name]["found"]
    assert run is not None, "the first lifecycle did not finish"
    assert run.returncode == 0, _tail(run)
    assert found["other_batches"][INPUT_DAY.isoformat()] == matrix[name]["chosen"]["ids"], (
        "the file's rows, not the query's"
    )


def test_repeated_lookup_key_is_refused_at_scoring_and_nothing_written(lifecycle):
    name = "matrix_binary_file"
    run, found = lifecycle[name]["runs"].get("repeated"), lifecycle[name]["found"]
    assert run is not None, "the first lifecycle did not finish"
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "source 'stores': join keys ['store'] are not unique" in output, _tail(run)
    assert "[DAG TEST] starting task_id=write.write_predictions" not in output
    assert found["other_batches"][REPEATED_DAY.isoformat()] == []


def test_missing_partition_fails_the_retrain_fast_listing_the_day(lifecycle):
    run, found = lifecycle[GAPS]["runs"]["retrain"], lifecycle[GAPS]["found"]
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert (
        "daily partitions missing between 2026-03-02 and 2026-04-01, more than validation.max_missing_partitions=0: "
        "source 'events': 1 missing (2026-03-15)"
    ) in output, _tail(run)
    assert "[DAG TEST] starting task_id=validation.run_suite" not in output, "nothing after the snapshot ran"
    assert found["champion"] is None and found["registered"] == [], found


def test_durations(lifecycle):
    """Each `airflow dags test` in seconds, and the wall time of all of them (shown with -rA)."""
    print(json.dumps(DURATIONS, indent=1))
    assert len(DURATIONS) == 3 * len(CELLS) + 3 + 1 + 1, DURATIONS
    for name, outcome in lifecycle.items():
        print(name, json.dumps(outcome["found"].get("latest_decision", {}).get("reason")))
