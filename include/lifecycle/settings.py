"""Settings from the environment, with the embedded defaults. Read on call, never at import."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCAL_DIR = REPO_ROOT / ".local"


@dataclass(frozen=True)
class Settings:
    artifact_root: str
    mlflow_tracking_uri: str
    mlflow_artifact_root: str
    data_root: Path


def get_settings() -> Settings:
    env = os.environ
    return Settings(
        artifact_root=env.get("ARTIFACT_ROOT", f"file://{LOCAL_DIR / 'artifacts'}").rstrip("/"),
        mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI", f"sqlite:///{LOCAL_DIR / 'mlflow' / 'mlflow.db'}"),
        mlflow_artifact_root=env.get("MLFLOW_ARTIFACT_ROOT", str(LOCAL_DIR / "mlflow" / "artifacts")),
        data_root=Path(env.get("DATA_ROOT", str(LOCAL_DIR / "data"))),
    )


def embedded_environment() -> dict[str, str]:
    """The embedded default as environment variables (the Makefile exports the same), all under .local/."""
    return {
        "AIRFLOW_HOME": str(LOCAL_DIR / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MLFLOW_TRACKING_URI": f"sqlite:///{LOCAL_DIR / 'mlflow' / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(LOCAL_DIR / "mlflow" / "artifacts"),
        "ARTIFACT_ROOT": f"file://{LOCAL_DIR / 'artifacts'}",
        "DATA_ROOT": str(LOCAL_DIR / "data"),
        "AIRFLOW_CONN_PREDICTIONS_DB": f"sqlite:///{LOCAL_DIR / 'predictions.db'}",
        "PYTHONUNBUFFERED": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_TELEMETRY": "false",
    }
