"""Airflow's own backfill of `demo_churn__batch_predict` scores each day with the version that was champion
on it (the registry history), writes each batch once, and the drift check follows with that version's
reference; the `model` Param chooses otherwise on a normal trigger. A real scheduler and api-server.

Two real versions: the demo model trained twice through `demo_churn__retrain` (as of 2026-02-22 and
2026-02-25, small grids, the gate off so that both are promoted), then an alias history as it would read
had the cron retrains promoted them: version 1 champion from day 1 of four, version 2 from day 3.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from lifecycle.devtools import local_airflow as la

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]
NAME = "demo_churn"
PREDICT, DRIFT, RETRAIN = f"{NAME}__batch_predict", f"{NAME}__drift_check", f"{NAME}__retrain"
DAYS = [(dt.date(2026, 2, 22) + dt.timedelta(days=i)).isoformat() for i in range(4)]  # kept short: CI time
FROM, TO = "2026-02-22T00:00:00Z", "2026-02-25T23:00:00Z"
A_FROM = dt.datetime(2026, 2, 22, 2, 0, tzinfo=dt.UTC)  # the retrain cron time of day 1: before its 06:00 batch
B_FROM = dt.datetime(2026, 2, 24, 2, 0, tzinfo=dt.UTC)  # day 3
EXPECTED = {day: ("1" if day < "2026-02-24" else "2") for day in DAYS}
# Only what the in-process calls read: this module's MLflow, artifacts, pipelines and predictions database.
OWN_KEYS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_ARTIFACT_ROOT",
    "ARTIFACT_ROOT",
    "AIRFLOW_CONN_PREDICTIONS_DB",
    "PIPELINES_DIR",
)


@dataclass
class Stack:
    airflow: la.LocalAirflow
    env: dict[str, str]
    url: str
    config: object
    timings: dict[str, float]
    direct: dict[tuple[str, str], pd.Series] = field(default_factory=dict)


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in OWN_KEYS}
    os.environ.update({key: env[key] for key in OWN_KEYS})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _airflow_cli(env: dict[str, str], *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "airflow", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def stack(demo_data, tmp_path_factory) -> Iterator[Stack]:
    from lifecycle.config.pipeline import load_pipeline
    from lifecycle.registry import registry_history

    root = tmp_path_factory.mktemp("backfill")
    pipelines = root / "pipelines"
    pipelines.mkdir()
    text = (REPO / "include" / "pipelines" / f"{NAME}.yaml").read_text()
    assert "  mode: enforce" in text
    (pipelines / f"{NAME}.yaml").write_text(text.replace("  mode: enforce", '  mode: "off"'))
    url = f"sqlite:///{root / 'predictions.db'}"
    env = {
        **os.environ,
        "PIPELINES_DIR": str(pipelines),
        "AIRFLOW_HOME": str(root / "airflow"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(root / "mlartifacts"),
        "ARTIFACT_ROOT": f"file://{root / 'artifacts'}",
        "AIRFLOW_CONN_PREDICTIONS_DB": url,
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "LIFECYCLE_SEARCH_JOBS": "1",
    }
    timings: dict[str, float] = {}
    started = time.monotonic()
    la.migrate_db(env, root / "db-migrate.log")
    timings["migrate"] = time.monotonic() - started
    grid = {"num_leaves": [15], "n_estimators": [100]}
    for as_of in ("2026-02-22", "2026-02-25"):  # version 1, then version 2 (the gate is off: both promoted)
        started = time.monotonic()
        conf = {"reason": f"backfill test, as of {as_of}", "search": "grid", "grid": grid}
        result = _airflow_cli(env, "dags", "test", RETRAIN, as_of, "--conf", json.dumps(conf))
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        timings[f"retrain {as_of}"] = time.monotonic() - started

    with _environment(env):
        from lifecycle.registry.tracking import champion

        assert str(champion(NAME).version) == "2", "the MLflow alias is at B, as it would be now"
        engine = sa.create_engine(url)
        history = registry_history.history
        try:
            with registry_history.alias_lock(engine, NAME) as conn:  # the history as the cron retrains left it
                conn.execute(sa.delete(history).where(history.c.model_name == NAME, history.c.alias == "champion"))
                registry_history.record(
                    conn, NAME, "1", previous=None, moved_by="backfill test", how="gate", reason="first", at=A_FROM
                )
                registry_history.record(
                    conn, NAME, "2", previous="1", moved_by="backfill test", how="gate", reason="better", at=B_FROM
                )
        finally:
            engine.dispose()
        config = load_pipeline(pipelines / f"{NAME}.yaml")

    with la.running_airflow(env, log_dir=root / "logs") as airflow:
        timings["airflow startup"] = airflow.startup_seconds
        for dag_id in (PREDICT, DRIFT):
            la.wait_for_dag(airflow, dag_id)
            la.unpause(airflow, dag_id)  # tasks of a paused DAG are never scheduled, backfill runs' included
        yield Stack(airflow, env, url, config, timings)
    print("timings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))


def _predictions(url: str) -> pd.DataFrame:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            frame = pd.read_sql_query(
                sa.text("SELECT * FROM predictions WHERE pipeline = :p ORDER BY batch_key, entity_id"),
                conn,
                params={"p": NAME},
            )
    finally:
        engine.dispose()
    frame["batch_key"] = frame["batch_key"].astype(str).str[:10]
    return frame


def _direct_scores(stack: Stack, day: str, version: str) -> pd.Series:
    """The day's batch scored in this process by version `version` itself: what the DAG must have written."""
    if (day, version) not in stack.direct:
        from lifecycle.persistence import storage
        from lifecycle.tasks import batch_scoring

        with _environment(stack.env):
            run_id = f"direct__{day}__v{version}"
            batch = batch_scoring.stage(stack.config, run_id, day, None)
            model = {"model_uri": f"models:/{NAME}/{version}"}
            part = batch_scoring.score(stack.config, run_id, batch, model, list(range(batch["row_groups"])))
            scores = storage.read_parquet(part["uri"])
        stack.direct[(day, version)] = scores.set_index("entity_id")["score"].sort_index()
    return stack.direct[(day, version)]


def _assert_scored_by(stack: Stack, rows: pd.DataFrame, day: str, version: str) -> None:
    batch = rows[rows["batch_key"] == day]
    assert len(batch) == 600 and batch["entity_id"].is_unique, f"{day}: {len(batch)} rows"
    assert set(batch["model_version"]) == {version}, f"{day} scored by {set(batch['model_version'])}, not {version}"
    expected = _direct_scores(stack, day, version)
    got = batch.set_index("entity_id")["score"].sort_index()
    assert list(got.index) == list(expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=0)


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


def _asset_events(env: dict[str, str], name: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-c", ASSET_EVENTS, name], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _wait_for_drift_checks(stack: Stack, days: list[str], timeout: float = 900) -> pd.DataFrame:
    """Until every day has its dataset row in drift_metrics and no drift run is queued or running."""
    deadline = time.monotonic() + timeout
    while True:
        runs = la.list_runs(stack.airflow, DRIFT)
        busy = [r["dag_run_id"] for r in runs if r["state"] not in la.FINISHED_STATES]
        engine = sa.create_engine(stack.url)
        try:
            if sa.inspect(engine).has_table("drift_metrics"):
                with engine.connect() as conn:
                    metrics = pd.read_sql_query(sa.text("SELECT * FROM drift_metrics"), conn)
            else:
                metrics = pd.DataFrame(columns=["batch_key", "feature"])
        finally:
            engine.dispose()
        metrics["batch_key"] = metrics["batch_key"].astype(str).str[:10]
        checked = set(metrics.loc[metrics["feature"] == "__dataset__", "batch_key"])
        if not busy and set(days) <= checked:
            assert all(r["state"] == "success" for r in runs), [(r["dag_run_id"], r["state"]) for r in runs]
            return metrics
        assert time.monotonic() < deadline, f"drift checks of {sorted(set(days) - checked)} missing; runs {busy}"
        time.sleep(3)


def _task_log(airflow: la.LocalAirflow, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
    path = (
        f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/"
        f"{task_id}/logs/{try_number}?full_content=true"
    )
    return json.dumps(airflow.api("GET", path))


def _task(airflow: la.LocalAirflow, dag_id: str, run_id: str, task_id: str) -> dict:
    path = f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}/taskInstances/{task_id}"
    return airflow.api("GET", path)


def test_a_backfill_scores_each_day_with_the_champion_of_that_day_and_writes_each_batch_once(stack):
    from lifecycle.ml import drift
    from lifecycle.persistence import storage
    from lifecycle.registry.tracking import mlflow_client

    airflow = stack.airflow
    started = time.monotonic()
    created = la.backfill(airflow, PREDICT, FROM, TO, conf={"partitions": 1}, max_active_runs=2)
    la.wait_for_backfill(airflow, created["id"], timeout=1800)
    stack.timings[f"backfill of {len(DAYS)} days"] = time.monotonic() - started
    runs = la.backfill_runs(airflow, PREDICT, FROM, TO)
    assert [r["logical_date"] for r in runs] == [f"{day}T06:00:00Z" for day in DAYS], "one run per cron time"
    assert {r["run_type"] for r in runs} == {"backfill"}
    assert [r["state"] for r in runs] == ["success"] * len(DAYS), [(r["logical_date"], r["state"]) for r in runs]

    rows = _predictions(stack.url)
    assert sorted(set(rows["batch_key"])) == DAYS and len(rows) == len(DAYS) * 600, "each batch exactly once"
    for day in DAYS:
        _assert_scored_by(stack, rows, day, EXPECTED[day])
    # The comparison can tell the versions apart: on day 1 they score differently.
    assert not np.allclose(_direct_scores(stack, DAYS[0], "1"), _direct_scores(stack, DAYS[0], "2"))

    events = {e["batch_key"]: e for e in _asset_events(stack.env, f"{NAME}__predictions")}
    assert sorted(events) == DAYS
    for day in DAYS:
        assert events[day]["model_version"] == EXPECTED[day] and events[day]["rows"] == 600
        assert events[day]["model_chosen_by"] == (
            f"champion on {day}T06:00Z (registry history, model auto: a backfill run)"
        )

    # Each predictions event triggered the drift check, which read the version from the predictions table:
    # each batch is compared with the reference of the version that scored it.
    metrics = _wait_for_drift_checks(stack, DAYS)
    stack.timings["drift checks after the backfill"] = time.monotonic() - started
    dataset = metrics[metrics["feature"] == "__dataset__"].groupby("batch_key")["model_version"].agg(set)
    assert {day: versions for day, versions in dataset.items()} == {day: {v} for day, v in EXPECTED.items()}
    with _environment(stack.env):
        client = mlflow_client()
        import mlflow

        references = {
            v: mlflow.artifacts.load_dict(f"runs:/{client.get_model_version(NAME, v).run_id}/drift/reference.json")
            for v in ("1", "2")
        }
        for day in (DAYS[0], DAYS[2]):
            frame = storage.read_parquet(events[day]["batch_uri"])
            recorded = metrics[(metrics["batch_key"] == day) & (metrics["kind"] == "numeric")]
            recorded = recorded.set_index("feature")["value"]
            by = {v: drift.check(references[v], frame, None, stack.config.drift)["features"] for v in references}
            own, other = EXPECTED[day], "1" if EXPECTED[day] == "2" else "2"
            ours = pd.Series({f: by[own][f]["value"] for f in recorded.index})
            theirs = pd.Series({f: by[other][f]["value"] for f in recorded.index})
            np.testing.assert_allclose(recorded.to_numpy(), ours[recorded.index].to_numpy(), rtol=1e-9)
            assert not np.allclose(recorded.to_numpy(), theirs[recorded.index].to_numpy()), f"{day}: references alike"

    # The same backfill again: by default Airflow skips every date that has a run, and nothing changes ...
    airflow.api("PATCH", f"/api/v2/dags/{DRIFT}?update_mask=is_paused", {"is_paused": True})  # checked above
    skipped = la.backfill(airflow, PREDICT, FROM, TO, conf={"partitions": 1})
    la.wait_for_backfill(airflow, skipped["id"], timeout=600)
    seen = [(r["dag_run_id"], r["state"], r["end_date"]) for r in la.backfill_runs(airflow, PREDICT, FROM, TO)]
    assert seen == [(r["dag_run_id"], r["state"], r["end_date"]) for r in runs], "no run created, none touched"
    pd.testing.assert_frame_equal(_predictions(stack.url), rows)
    # ... and reprocessing the first two days (one per version would do; these are cheap) runs those runs again,
    # which replace their batches: still one copy each, and the other days untouched.
    first_scored = pd.to_datetime(rows["scored_at"]).max()
    started = time.monotonic()
    again_to = "2026-02-23T23:00:00Z"
    again = la.backfill(
        airflow, PREDICT, FROM, again_to, conf={"partitions": 1}, reprocess="completed", max_active_runs=2
    )
    la.wait_for_backfill(airflow, again["id"], timeout=1800)
    stack.timings["reprocessed backfill of 2 days"] = time.monotonic() - started
    rerun = la.backfill_runs(airflow, PREDICT, FROM, again_to)
    assert [r["dag_run_id"] for r in rerun] == [r["dag_run_id"] for r in runs[:2]], "the same runs, cleared"
    assert [r["state"] for r in rerun] == ["success"] * 2
    rows_again = _predictions(stack.url)
    assert len(rows_again) == len(DAYS) * 600 and (rows_again.groupby("batch_key").size() == 600).all()
    rewritten = pd.to_datetime(rows_again["scored_at"]) > first_scored
    assert set(rows_again.loc[rewritten, "batch_key"]) == set(DAYS[:2]), "exactly the reprocessed batches rewritten"
    for day in DAYS:
        _assert_scored_by(stack, rows_again, day, EXPECTED[day])


def test_the_model_param_chooses_the_version_of_a_normal_run(stack):
    airflow = stack.airflow
    cases = {  # batch: (conf, logical date, the version expected, how it was chosen)
        "2026-02-23": ({"model": "on_date", "batch_date": "2026-02-23"}, None, "1",
                       "champion on 2026-02-23T23:59:59Z (registry history)"),
        # (auto on a manual run, the current champion, is what every other batch-prediction test runs)
        "2026-02-25": ({"model": "1", "batch_date": "2026-02-25"}, None, "1", "version 1 (the run's model Param)"),
    }  # fmt: skip
    started = time.monotonic()
    triggered = {
        day: la.trigger(airflow, PREDICT, {**conf, "partitions": 1}, logical_date=when)["dag_run_id"]
        for day, (conf, when, _, _) in cases.items()
    }
    failing = {
        "2026-02-20": {"model": "on_date", "batch_date": "2026-02-20", "partitions": 1},
        "2026-02-21": {"model": "99", "batch_date": "2026-02-21", "partitions": 1},
    }
    failed = {day: la.trigger(airflow, PREDICT, conf)["dag_run_id"] for day, conf in failing.items()}
    with pytest.raises(la.AirflowApiError) as refused:  # the Param's pattern: the trigger form refuses it too
        la.trigger(airflow, PREDICT, {"model": "latest"})
    assert refused.value.status in (400, 422) and "model" in refused.value.body

    for day, run_id in {**triggered, **failed}.items():
        run = la.wait_for_run(airflow, PREDICT, run_id, timeout=900)
        assert run["state"] == ("success" if day in triggered else "failed"), (day, run["state"])
    stack.timings["2 manual runs and 2 failing ones"] = time.monotonic() - started

    rows = _predictions(stack.url)
    events = _asset_events(stack.env, f"{NAME}__predictions")
    for day, (_, _, version, chosen_by) in cases.items():
        _assert_scored_by(stack, rows, day, version)
        extra = [e for e in events if e["batch_key"] == day][-1]
        assert (extra["model_version"], extra["model_chosen_by"]) == (version, chosen_by)

    assert not set(failing) & set(rows["batch_key"]), "a run that cannot resolve its model writes nothing"
    task = "ingestion.resolve_champion"
    for day, message in {
        "2026-02-20": "no champion of models:/demo_churn@champion on 2026-02-20T23:59:59Z: its first "
        "recorded move made version 1 champion at 2026-02-22T02:00:00+00:00",
        "2026-02-21": "the run's model Param asks for version 99, but models:/demo_churn/99 is not in the registry",
    }.items():
        instance = _task(airflow, PREDICT, failed[day], task)
        assert instance["state"] == "failed" and instance["try_number"] == 1, "failed at once, not retried"
        assert message in _task_log(airflow, PREDICT, failed[day], task)
