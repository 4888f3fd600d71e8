"""Registry writes under retries and concurrent people, against a real MLflow store (SQLite + local artifacts)."""

from __future__ import annotations

import datetime as dt
import hashlib
import threading

import mlflow
import numpy as np
import pytest
import sqlalchemy as sa
from sklearn.linear_model import LogisticRegression

from lifecycle.persistence.predictions_db import engine_for
from lifecycle.registry import registry_history, tracking
from lifecycle.ui.models_page import rollback

NAME = ""  # each test's own registered model name, set by the `store` fixture


@pytest.fixture
def store(mlflow_store, request):
    global NAME
    name = request.node.name.removeprefix("test_")
    NAME = f"{name[:50]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"  # parametrised tests differ
    return mlflow_store


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """The predictions database, where the registry history and the alias lock live."""
    engine = engine_for(f"sqlite:///{tmp_path_factory.mktemp('history') / 'predictions.db'}")
    yield engine
    engine.dispose()


def _promote(engine, uri: str, run_id: str, expected: str | None, **tags: str) -> str:
    return tracking.register_champion(
        uri, NAME, tags, run_id, expected, engine=engine, moved_by="the gate", reason="better", airflow_run_id="r"
    )


def _history(engine) -> list[tuple[str, str | None, str]]:
    return [(p["version"], p["previous_version"], p["how"]) for p in registry_history.periods(engine, NAME)][::-1]


def _logged(experiment: str) -> tuple[str, str]:
    """A tiny model logged in its own run, as a retrain would: (run id, model URI)."""
    model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="skops", pip_requirements=[])
    return run.info.run_id, info.model_uri


def _versions(client) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))


def test_a_retried_promotion_registers_one_version(store, engine):
    client, experiment = store
    run_id, uri = _logged(experiment)
    assert _promote(engine, uri, run_id, None, t="1") == "1"
    # The retry after a failure once the alias had moved: the same version, nothing new.
    assert _promote(engine, uri, run_id, None, t="1") == "1"
    assert _versions(client) == ["1"]
    assert _history(engine) == [("1", None, "gate")]


def test_a_retry_after_dying_between_register_and_alias_reuses_the_version(store, engine):
    client, experiment = store
    first_run, first_uri = _logged(experiment)
    _promote(engine, first_uri, first_run, None)
    run_id, uri = _logged(experiment)
    mlflow.register_model(uri, NAME, tags={"lifecycle.model_uri": uri})  # the first attempt died here
    assert tracking.champion(NAME).version == 1
    assert _promote(engine, uri, run_id, "1") == "2"
    assert _versions(client) == ["1", "2"]
    assert tracking.champion(NAME).version == 2
    assert client.get_model_version(NAME, "2").tags["previous_champion"] == "1"


def test_a_rollback_during_an_approval_wait_is_not_overwritten(store, engine):
    client, experiment = store
    for expected in (None, "1"):
        run_id, uri = _logged(experiment)
        _promote(engine, uri, run_id, expected)
    # A challenger's gate compared against version 2; while it waits for approval, a person rolls back to 1.
    waiting_run, waiting_uri = _logged(experiment)
    rollback(client, NAME, 1, user="ana", reason="v2 misbehaves", expected_current=2, engine=engine)
    with pytest.raises(tracking.ChampionMovedError) as info:
        _promote(engine, waiting_uri, waiting_run, "2")
    assert "is version 1, but the gate compared against version 2" in str(info.value)
    assert tracking.champion(NAME).version == 1
    assert client.get_model_version(NAME, "1").tags["rollback.by"] == "ana"
    assert _history(engine) == [("1", None, "gate"), ("2", "1", "gate"), ("1", "2", "rollback")]


def test_two_racing_retrains_move_the_alias_once(store, engine):
    """Both gates compared against no champion and reach the alias at the same moment: one moves it."""
    client, experiment = store
    logged = [_logged(experiment), _logged(experiment)]
    start, outcomes = threading.Barrier(2), {}

    def race(i: int) -> None:
        start.wait()
        try:
            outcomes[i] = _promote(engine, logged[i][1], logged[i][0], None)
        except tracking.ChampionMovedError as err:
            outcomes[i] = err

    threads = [threading.Thread(target=race, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    moved = [o for o in outcomes.values() if isinstance(o, str)]
    refused = [o for o in outcomes.values() if isinstance(o, tracking.ChampionMovedError)]
    assert len(moved) == 1 and len(refused) == 1, outcomes
    assert "compared against no champion" in str(refused[0])
    assert str(tracking.champion(NAME).version) == moved[0]
    assert _history(engine) == [(moved[0], None, "gate")]


@pytest.mark.parametrize("step", ["register_model", "set_model_version_tag", "set_registered_model_alias", "record"])
def test_a_promotion_that_fails_at_any_step_and_is_retried_makes_one_version(store, engine, monkeypatch, step):
    """The failure happens after the step did its work (the worst case: the effect is there, the task died)."""
    client, experiment = store
    first_run, first_uri = _logged(experiment)
    _promote(engine, first_uri, first_run, None)
    run_id, uri = _logged(experiment)
    owner = {"register_model": mlflow, "record": registry_history}.get(step, type(client))
    real, calls = getattr(owner, step), []

    def dies_after(*args, **kwargs):
        out = real(*args, **kwargs)
        if not calls:
            calls.append(step)
            raise ConnectionError(f"the worker died after {step}")
        return out

    monkeypatch.setattr(owner, step, dies_after)
    with pytest.raises(ConnectionError):
        _promote(engine, uri, run_id, "1")
    assert _promote(engine, uri, run_id, "1") == "2"  # Airflow's retry
    assert _versions(client) == ["1", "2"]
    assert str(tracking.champion(NAME).version) == "2"
    assert _history(engine) == [("1", None, "gate"), ("2", "1", "gate")]


def test_a_move_made_outside_the_lifecycle_is_recorded_when_next_seen(store, engine):
    client, experiment = store
    for expected in (None, "1"):
        run_id, uri = _logged(experiment)
        _promote(engine, uri, run_id, expected)
    client.set_registered_model_alias(NAME, "champion", "1")  # someone in MLflow's UI
    rollback(client, NAME, 2, user="ana", reason="back to 2", expected_current=1, engine=engine)
    assert _history(engine) == [("1", None, "gate"), ("2", "1", "gate"), ("1", "2", "observed"), ("2", "1", "rollback")]
    periods = registry_history.periods(engine, NAME)
    assert periods[0]["until"] is None and periods[1]["until"] == periods[0]["moved_at"]


def test_the_version_on_a_date_comes_from_the_history(store, engine):
    client, experiment = store
    run_id, uri = _logged(experiment)
    _promote(engine, uri, run_id, None)
    moved = registry_history.periods(engine, NAME)[0]["moved_at"]
    moved = moved if moved.tzinfo else moved.replace(tzinfo=dt.UTC)
    assert registry_history.version_on(engine, NAME, moved - dt.timedelta(seconds=1)) is None
    assert registry_history.version_on(engine, NAME, moved + dt.timedelta(seconds=1)) == "1"
    with engine.connect() as conn:
        assert conn.execute(sa.select(registry_history.aliases.c.version).where(
            registry_history.aliases.c.model_name == NAME)).scalar() == "1"  # fmt: skip


def test_the_demos_simulated_clock_dates_a_promotion_at_its_as_of_day(store, engine, monkeypatch):
    from lifecycle.tasks.retraining import simulated_move_time

    snapshot = {"window_end": "2026-03-01"}
    monkeypatch.delenv("LIFECYCLE_SIMULATED_CLOCK", raising=False)
    assert simulated_move_time(snapshot) is None, "outside the demo the history has the real time"
    monkeypatch.setenv("LIFECYCLE_SIMULATED_CLOCK", "1")
    at = simulated_move_time(snapshot)
    assert at == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    _, experiment = store
    run_id, uri = _logged(experiment)
    tracking.register_champion(uri, NAME, {}, run_id, None, engine=engine, moved_by="the gate", at=at)
    assert registry_history.version_on(engine, NAME, dt.datetime(2026, 3, 6, 6, tzinfo=dt.UTC)) == "1"
    assert registry_history.version_on(engine, NAME, dt.datetime(2026, 2, 28, tzinfo=dt.UTC)) is None


def test_a_retried_start_reuses_the_run_and_a_failure_ends_it_naming_the_task(store, monkeypatch):
    from lifecycle.config.pipeline import PipelineConfig
    from lifecycle.tasks.retraining import fail_run, start_run

    client, _ = store
    config = PipelineConfig.model_validate(
        {"name": NAME, "task": "binary", "target": "y", "id_column": "id", "timestamp_column": "ts",
         "sources": [{"name": "base", "uri": "/tmp/none.parquet"}], "features": {"numeric": ["x"]},
         "training": {"grid": {"num_leaves": [7]}}}
    )  # fmt: skip
    snapshot = {"uri": "file:///tmp/s.parquet", "sha256": "0" * 64, "rows": 1, "window_start": "a", "window_end": "b"}
    first = start_run(config, "d__retrain", "manual__1", {"reason": "r"}, snapshot)
    again = start_run(config, "d__retrain", "manual__1", {"reason": "r"}, snapshot)
    assert again == first and client.get_run(first).data.tags["attempts"] == "2"
    assert start_run(config, "d__retrain", "manual__2", {"reason": "r"}, snapshot) != first
    assert fail_run(config, "d__retrain", "manual__1", "training.grid_search", "ValueError('boom')") == first
    run = client.get_run(first)
    assert run.info.status == "FAILED" and run.data.tags["failed_task"] == "training.grid_search"
    assert fail_run(config, "d__retrain", "manual__9", "ingestion.snapshot", "x") is None


def test_a_canary_moves_the_challenger_alias_once_and_leaves_the_champion(store, engine):
    client, experiment = store
    run_id, uri = _logged(experiment)
    _promote(engine, uri, run_id, None)
    canary_run, canary_uri = _logged(experiment)
    for _ in range(2):  # the task, then Airflow's retry
        number = tracking.start_canary(canary_uri, NAME, {}, canary_run, "challenger", engine=engine, moved_by="gate")
    assert number == "2" and _versions(client) == ["1", "2"]
    assert str(tracking.champion(NAME).version) == "1"
    assert str(tracking.champion(NAME, "challenger").version) == "2"
    assert [p["version"] for p in registry_history.periods(engine, NAME, "challenger")] == ["2"]
