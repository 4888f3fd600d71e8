"""Settings from the environment over the embedded default: one pydantic-settings model, read on call, never at import.

`embedded_environment()` is the one place the embedded default (all state under .local/) is written down, as the
environment variables Airflow, MLflow and this package read. `Settings` types them, with the environment first and
the embedded default under it. The Makefile, the tests' conftest and scripts/demo.py take their environment from
here: `python -m lifecycle.config.settings --export` prints `export K=V` lines for what the environment does not already
set, so a variable someone exported still wins.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[3]
LOCAL_DIR = REPO_ROOT / ".local"


def embedded_environment(local_dir: Path = LOCAL_DIR) -> dict[str, str]:
    """The embedded default as environment variables, all state under `local_dir` (.local/ unless a test's own)."""
    return {
        "AIRFLOW_HOME": str(local_dir / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "MLFLOW_TRACKING_URI": f"sqlite:///{local_dir / 'mlflow' / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(local_dir / "mlflow" / "artifacts"),
        "ARTIFACT_ROOT": f"file://{local_dir / 'artifacts'}",
        "DATA_ROOT": str(local_dir / "data"),
        "AIRFLOW_CONN_PREDICTIONS_DB": f"sqlite:///{local_dir / 'predictions.db'}",
        "LIFECYCLE_S3_CONN_ID": "aws_default",
        "PYTHONUNBUFFERED": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_TELEMETRY": "false",
    }


class _EmbeddedDefault(PydanticBaseSettingsSource):
    """The lowest-priority source: embedded_environment(), keyed by the same names as the environment."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ answers for all fields at once

    def __call__(self) -> dict[str, Any]:
        return embedded_environment()


def _env(name: str) -> Any:
    """A field read from the environment variable `name` exactly (Airflow's and MLflow's own names)."""
    return Field(validation_alias=name)


class Settings(BaseSettings):
    """Every setting of the embedded default, typed; an environment variable overrides its field."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True, populate_by_name=True)

    airflow_home: Path = _env("AIRFLOW_HOME")
    dags_folder: Path = _env("AIRFLOW__CORE__DAGS_FOLDER")
    plugins_folder: Path = _env("AIRFLOW__CORE__PLUGINS_FOLDER")
    load_examples: bool = _env("AIRFLOW__CORE__LOAD_EXAMPLES")
    mlflow_tracking_uri: str = _env("MLFLOW_TRACKING_URI")
    mlflow_artifact_root: str = _env("MLFLOW_ARTIFACT_ROOT")
    artifact_root: str = _env("ARTIFACT_ROOT")  # file://… or s3://bucket/prefix, no trailing slash
    data_root: Path = _env("DATA_ROOT")
    predictions_db: str = _env("AIRFLOW_CONN_PREDICTIONS_DB")
    s3_conn_id: str = _env("LIFECYCLE_S3_CONN_ID")  # the Airflow connection with the S3 keys and endpoint_url
    python_unbuffered: str = _env("PYTHONUNBUFFERED")  # Python reads any non-empty value as on
    gx_analytics_enabled: bool = _env("GX_ANALYTICS_ENABLED")
    mlflow_enable_telemetry: bool = _env("MLFLOW_ENABLE_TELEMETRY")

    @field_validator("artifact_root")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # No .env file: the environment and the embedded default, as before (.env.example is for compose).
        return init_settings, env_settings, _EmbeddedDefault(settings_cls)


def get_settings() -> Settings:
    """The settings now: the environment is read on every call, so a test or task that changes it is seen."""
    return Settings()


def export_lines(local_dir: Path = LOCAL_DIR) -> list[str]:
    """`export K=V` (shell-quoted) for each embedded variable the environment does not set: what Make evaluates."""
    Settings()  # an override that does not parse (LOAD_EXAMPLES=maybe) fails here, before any target runs
    return [f"export {k}={shlex.quote(v)}" for k, v in embedded_environment(local_dir).items() if k not in os.environ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lifecycle.config.settings", description=__doc__.splitlines()[0])
    parser.add_argument("--export", action="store_true", help="print `export K=V` lines for a shell to evaluate")
    args = parser.parse_args(argv)
    try:
        get_settings()
    except ValidationError as err:
        print(f"lifecycle.config.settings: an environment variable does not parse: {err}", file=sys.stderr)
        return 2
    if args.export:
        print("\n".join(export_lines()))
    else:
        print(get_settings().model_dump_json(indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
