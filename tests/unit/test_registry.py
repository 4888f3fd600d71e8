"""Registry writes under retries and concurrent people, against a real MLflow store (SQLite + local artifacts)."""

from __future__ import annotations

import mlflow
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from lifecycle import tracking
from lifecycle.models_page import rollback

NAME = ""  # each test's own registered model name, set by the `store` fixture


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One store for the module (creating MLflow's schema costs seconds); each test has its own model name."""
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setenv("MLFLOW_ARTIFACT_ROOT", str(root / "artifacts"))
        client = tracking.mlflow_client()
        yield client, client.create_experiment("registry", artifact_location=(root / "artifacts").as_uri())
    mlflow.set_tracking_uri(None)


@pytest.fixture
def store(shared_store, request):
    global NAME
    NAME = request.node.name.removeprefix("test_")[:60]
    return shared_store


def _logged(experiment: str) -> tuple[str, str]:
    """A tiny model logged in its own run, as a retrain would: (run id, model URI)."""
    model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="cloudpickle")
    return run.info.run_id, info.model_uri


def _versions(client) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{NAME}'"))


def test_a_retried_promotion_registers_one_version(store):
    client, experiment = store
    run_id, uri = _logged(experiment)
    assert tracking.register_champion(uri, NAME, {"t": "1"}, run_id, None) == "1"
    # The retry after a failure once the alias had moved: the same version, nothing new.
    assert tracking.register_champion(uri, NAME, {"t": "1"}, run_id, None) == "1"
    assert _versions(client) == ["1"]


def test_a_retry_after_dying_between_register_and_alias_reuses_the_version(store):
    client, experiment = store
    first_run, first_uri = _logged(experiment)
    tracking.register_champion(first_uri, NAME, {}, first_run, None)
    run_id, uri = _logged(experiment)
    mlflow.register_model(uri, NAME, tags={"lifecycle.model_uri": uri})  # the first attempt died here
    assert tracking.champion(NAME).version == 1
    assert tracking.register_champion(uri, NAME, {}, run_id, "1") == "2"
    assert _versions(client) == ["1", "2"]
    assert tracking.champion(NAME).version == 2
    assert client.get_model_version(NAME, "2").tags["previous_champion"] == "1"


def test_a_rollback_during_an_approval_wait_is_not_overwritten(store):
    client, experiment = store
    for expected in (None, "1"):
        run_id, uri = _logged(experiment)
        tracking.register_champion(uri, NAME, {}, run_id, expected)
    # A challenger's gate compared against version 2; while it waits for approval, a person rolls back to 1.
    waiting_run, waiting_uri = _logged(experiment)
    rollback(client, NAME, 1, user="ana", reason="v2 misbehaves", expected_current=2)
    with pytest.raises(tracking.ChampionMovedError) as info:
        tracking.register_champion(waiting_uri, NAME, {}, waiting_run, "2")
    assert "is version 1, but the gate compared against version 2" in str(info.value)
    assert tracking.champion(NAME).version == 1
    assert client.get_model_version(NAME, "1").tags["rollback.by"] == "ana"


def test_two_racing_retrains_move_the_alias_once(store):
    client, experiment = store
    (run_a, uri_a), (run_b, uri_b) = _logged(experiment), _logged(experiment)
    assert tracking.register_champion(uri_a, NAME, {}, run_a, None) == "1"
    with pytest.raises(tracking.ChampionMovedError, match="compared against no champion"):
        tracking.register_champion(uri_b, NAME, {}, run_b, None)
    assert tracking.champion(NAME).version == 1


def test_a_retried_start_reuses_the_run_and_a_failure_ends_it_naming_the_task(store, monkeypatch):
    from lifecycle.config import PipelineConfig
    from lifecycle.retrain import fail_run, start_run

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
