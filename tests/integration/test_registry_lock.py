"""The alias lock on PostgreSQL: racing promotions and a rollback serialise on the alias's row lock."""

from __future__ import annotations

import threading

import mlflow
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from lifecycle.persistence.predictions_db import engine_for
from lifecycle.registry import registry_history, tracking
from lifecycle.ui.models_page import RollbackError, rollback


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = tracking.mlflow_client()
    yield client, client.create_experiment("lock", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.set_tracking_uri(None)


def _logged(experiment: str) -> tuple[str, str]:
    model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="skops", pip_requirements=[])
    return run.info.run_id, info.model_uri


def _race(*calls):
    start, outcomes = threading.Barrier(len(calls)), {}

    def body(i, call):
        start.wait()
        try:
            outcomes[i] = call()
        except (tracking.ChampionMovedError, RollbackError) as err:
            outcomes[i] = err

    threads = [threading.Thread(target=body, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return [outcomes[i] for i in range(len(calls))]


def test_racing_promotions_and_a_rollback_on_postgresql_move_the_alias_once_each(store, postgres_url):
    client, experiment = store
    engine = engine_for(postgres_url)
    try:
        first = _logged(experiment)
        tracking.register_champion(first[1], "raced", {}, first[0], None, engine=engine, moved_by="the gate")
        racers = [_logged(experiment) for _ in range(3)]
        second_first = _logged(experiment)
        tracking.register_champion(
            second_first[1], "raced", {}, second_first[0], "1", engine=engine, moved_by="the gate"
        )  # version 2 is champion; three gates compared against it, and a person rolls back to 1 at once
        outcomes = _race(
            *[
                (lambda r=r: tracking.register_champion(r[1], "raced", {}, r[0], "2", engine=engine, moved_by="gate"))
                for r in racers
            ],
            lambda: rollback(client, "raced", 1, user="ana", reason="race", expected_current=2, engine=engine),
        )
        won = [o for o in outcomes if not isinstance(o, Exception)]
        assert len(won) == 1, outcomes  # one of the four moved the alias; the others saw it had moved
        history = registry_history.periods(engine, "raced")
        assert len(history) == 3 and history[0]["until"] is None
        assert str(tracking.champion("raced").version) == history[0]["version"]
    finally:
        engine.dispose()
