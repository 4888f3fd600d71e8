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
