"""The champion is self-contained: after a real retrain and batch prediction through Airflow, it loads and
predicts in a clean virtualenv built from its own requirements.txt (where `lifecycle` cannot be imported),
and `mlflow models serve -m models:/<name>@champion` answers with the scores batch prediction wrote."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lifecycle.config.pipeline import load_pipeline
from lifecycle.registry.portable import check

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]


def test_the_champion_loads_predicts_and_serves_outside_the_repository(champion, dag_runner, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'predictions.db'}"
    monkeypatch.setenv("AIRFLOW_CONN_PREDICTIONS_DB", url)
    scored = dag_runner("demo_churn__batch_predict", "2026-02-14")
    assert scored.returncode == 0, scored.stdout[-3000:] + scored.stderr[-3000:]

    config = load_pipeline(REPO / "include" / "pipelines" / "demo_churn.yaml")
    result = check(config, url, "2026-02-14")
    assert result["compared_with"] == "the rows batch prediction wrote to predictions"
    assert result["rows"] == 600 and result["model_uri"] == "models:/demo_churn@champion"
    assert result["pyfunc_max_abs_diff"] < 1e-9, result
    assert result["serve_max_abs_diff"] < 1e-9, result
    # Pinned, and nothing from this repository: its feature code travels inside the model (code/).
    assert all("==" in r for r in result["requirements"]) and not any("lifecycle" in r for r in result["requirements"])
    assert os.environ["MLFLOW_TRACKING_URI"].startswith("sqlite:")
