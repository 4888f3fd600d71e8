"""Shared fixtures for the unit tests: the demo pipeline as a dict or a config, and tiny demo frames."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from lifecycle.config.pipeline import PipelineConfig, expand_env
from lifecycle.devtools import demo_data

REPO = Path(__file__).resolve().parents[2]
DEMO_YAML = REPO / "include" / "pipelines" / "demo_churn.yaml"

START = dt.date(2026, 1, 1)


@pytest.fixture(scope="session")
def demo_yaml() -> Path:
    return DEMO_YAML


@pytest.fixture(scope="session")
def _demo_raw() -> dict[str, Any]:
    return yaml.safe_load(expand_env(DEMO_YAML.read_text()))


@pytest.fixture
def demo_dict(_demo_raw: dict[str, Any]) -> dict[str, Any]:
    """The demo pipeline as plain data, a fresh copy for each test to break."""
    return copy.deepcopy(_demo_raw)


@pytest.fixture(scope="session")
def make_config(_demo_raw: dict[str, Any]) -> Callable[..., PipelineConfig]:
    """The demo config with sections overridden, e.g. make_config(training={"holdout_days": 2})."""

    def make(**sections: Any) -> PipelineConfig:
        data = copy.deepcopy(_demo_raw)
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        return PipelineConfig.model_validate(data)

    return make


def joined_days(days: int, rows: int, start: dt.date = START, drift_from: dt.date | None = None) -> pd.DataFrame:
    """`days` days of demo activity joined with the accounts, as the ingestion step would produce."""
    activity = pd.concat(
        [demo_data.activity(start + dt.timedelta(days=i), rows, drift_from) for i in range(days)],
        ignore_index=True,
    )
    return activity.merge(demo_data.accounts(), on="account_id", how="left")


@pytest.fixture(scope="session")
def small_frame() -> pd.DataFrame:
    """12 days x 100 rows: enough for time splits and preprocessing."""
    return joined_days(12, 100)


@pytest.fixture(scope="session")
def training_frame() -> pd.DataFrame:
    """16 days x 200 rows: enough signal for a model to beat chance on the last days."""
    return joined_days(16, 200)


@pytest.fixture(scope="session")
def make_frame() -> Callable[..., pd.DataFrame]:
    return joined_days


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A real MLflow store (SQLite + local artifacts) for one test module, and an experiment in it:
    (client, experiment id). Creating MLflow's schema costs seconds, so a module shares one."""
    import mlflow

    from lifecycle.registry import tracking

    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        patch.setenv("MLFLOW_ARTIFACT_ROOT", str(root / "artifacts"))
        client = tracking.mlflow_client()
        yield client, client.create_experiment("tests", artifact_location=(root / "artifacts").as_uri())
        mlflow.set_tracking_uri(None)  # inside: the monkeypatch then restores the session's URI
