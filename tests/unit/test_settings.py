"""lifecycle.config.settings: one pydantic-settings model over the environment and the embedded default."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from lifecycle.config import settings as s

EMBEDDED = s.embedded_environment()


@pytest.fixture
def bare_env(monkeypatch):
    """No embedded variable set: what a fresh shell sees."""
    for key in EMBEDDED:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def test_the_embedded_default_keeps_all_state_under_local(bare_env):
    got = s.get_settings()
    assert got.artifact_root == f"file://{s.LOCAL_DIR / 'artifacts'}"
    assert got.mlflow_tracking_uri == f"sqlite:///{s.LOCAL_DIR / 'mlflow' / 'mlflow.db'}"
    assert got.data_root == s.LOCAL_DIR / "data" and got.airflow_home == s.LOCAL_DIR / "airflow"
    assert got.predictions_db == f"sqlite:///{s.LOCAL_DIR / 'predictions.db'}"
    assert got.s3_conn_id == "aws_default" and got.load_examples is False and got.mlflow_enable_telemetry is False


def test_the_environment_overrides_and_is_read_on_every_call(bare_env):
    bare_env.setenv("ARTIFACT_ROOT", "s3://bucket/artifacts/")
    bare_env.setenv("AIRFLOW__CORE__LOAD_EXAMPLES", "True")
    bare_env.setenv("LIFECYCLE_S3_CONN_ID", "minio")
    got = s.get_settings()
    assert got.artifact_root == "s3://bucket/artifacts", "no trailing slash, so joins never double it"
    assert got.load_examples is True and got.s3_conn_id == "minio"
    bare_env.setenv("ARTIFACT_ROOT", "file:///elsewhere")
    assert s.get_settings().artifact_root == "file:///elsewhere"


def test_a_value_that_does_not_parse_names_its_variable(bare_env):
    bare_env.setenv("MLFLOW_ENABLE_TELEMETRY", "maybe")
    with pytest.raises(ValidationError, match="MLFLOW_ENABLE_TELEMETRY"):
        s.get_settings()


def test_every_field_has_its_embedded_variable():
    aliases = {field.validation_alias for field in s.Settings.model_fields.values()}
    assert aliases == set(EMBEDDED), "one place: every embedded variable is a typed setting and vice versa"


def test_embedded_environment_relocates_every_state_path(tmp_path):
    moved = s.embedded_environment(tmp_path)
    for key, value in moved.items():
        assert str(s.LOCAL_DIR) not in value, key
    assert moved["ARTIFACT_ROOT"] == f"file://{tmp_path / 'artifacts'}"
    assert moved["AIRFLOW__CORE__DAGS_FOLDER"] == EMBEDDED["AIRFLOW__CORE__DAGS_FOLDER"], "code stays in the repo"


def test_export_skips_what_the_environment_sets_and_a_shell_evaluates_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in EMBEDDED}
    env["DATA_ROOT"] = "s3://mine/data"
    env["AIRFLOW_HOME"] = str(tmp_path / "a home with spaces")
    script = f'exports="$({sys.executable} -m lifecycle.config.settings --export)" && eval "$exports" && env'
    out = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    seen = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert seen["DATA_ROOT"] == "s3://mine/data", "an exported variable wins"
    assert seen["AIRFLOW_HOME"] == str(tmp_path / "a home with spaces")
    assert seen["ARTIFACT_ROOT"] == EMBEDDED["ARTIFACT_ROOT"], "the rest comes from the embedded default"


def test_export_fails_before_anything_runs_on_a_bad_override():
    env = {**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "maybe"}
    script = f'exports="$({sys.executable} -m lifecycle.config.settings --export)" && eval "$exports" && echo RAN'
    result = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "RAN" not in result.stdout
    assert "AIRFLOW__CORE__LOAD_EXAMPLES" in result.stderr


def test_the_makefile_takes_its_environment_from_settings():
    makefile = (Path(s.REPO_ROOT) / "Makefile").read_text()
    assert "lifecycle.config.settings --export" in makefile
    for key in EMBEDDED:
        assert f"export {key}" not in makefile, f"{key} is defined again in the Makefile"
