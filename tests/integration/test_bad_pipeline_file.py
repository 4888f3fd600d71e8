"""One bad pipeline file breaks only itself: through Airflow's own parse-and-store path and a real run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]
KINDS = ("retrain", "batch_predict", "drift_check")


def _airflow(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "airflow", *args], capture_output=True, text=True, timeout=600, env=env
    )


def _dag_state(env: dict[str, str]) -> dict[str, dict]:
    """What the UI lists: every DAG row Airflow stored, with its stale and import-error flags."""
    code = (
        "import json\n"
        "from sqlalchemy import select\n"
        "from airflow.models.dag import DagModel\n"
        "from airflow.utils.session import create_session\n"
        "with create_session() as s:\n"
        "    rows = s.execute(select(DagModel.dag_id, DagModel.is_stale, DagModel.has_import_errors)).all()\n"
        "print(json.dumps({r.dag_id: {'stale': r.is_stale, 'errors': r.has_import_errors} for r in rows}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture
def with_broken_file(tmp_path, champion):
    folder = tmp_path / "pipelines"
    folder.mkdir()
    good = (REPO / "include" / "pipelines" / "demo_churn.yaml").read_text()
    (folder / "demo_churn.yaml").write_text(good)
    (folder / "team_b.yaml").write_text(
        good.replace("name: demo_churn", "name: team_b").replace("cv_folds: 3", "cv_folds: 1")
    )
    # Its own predictions database, so the other tests' batches are untouched.
    predictions = f"sqlite:///{tmp_path / 'predictions.db'}"
    env = {**os.environ, "PIPELINES_DIR": str(folder), "AIRFLOW_CONN_PREDICTIONS_DB": predictions}
    yield env
    # Parse the real folder again, so the stored import error does not outlive the test.
    _airflow("dags", "reserialize", env=dict(os.environ))
    shutil.rmtree(folder, ignore_errors=True)


def test_the_bad_file_is_an_import_error_and_the_good_pipeline_is_stored_and_runs(with_broken_file):
    env = with_broken_file
    parsed = _airflow("dags", "reserialize", env=env)
    assert parsed.returncode == 0, parsed.stdout[-3000:] + parsed.stderr[-3000:]

    listed = _airflow("dags", "list-import-errors", "--output", "json", env=env)
    assert listed.returncode == 1, listed.stderr[-3000:]  # the command exits 1 when there are import errors
    errors = json.loads(listed.stdout[listed.stdout.index("[{") :])
    assert [Path(e["filepath"]).name for e in errors] == ["pipeline_errors.py"], errors
    message = errors[0]["error"]
    assert "team_b.yaml" in message and "training.cv_folds" in message and "demo_churn.yaml" not in message

    state = _dag_state(env)
    for kind in KINDS:
        assert state[f"demo_churn__{kind}"] == {"stale": False, "errors": False}, state
    assert not any(dag_id.startswith("team_b") for dag_id in state)

    # The good pipeline still runs beside the broken file: a batch scored with the session's champion.
    run = _airflow("dags", "test", "demo_churn__batch_predict", "2026-02-12", env=env)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-3000:]
