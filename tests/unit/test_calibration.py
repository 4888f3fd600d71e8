"""Calibration in training and the gate: the plan, a calibrated real model, and the retrain evaluation path
(real MLflow store, real artifacts, real trained models) refusing a champion copy with destroyed probabilities."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.pipeline import Pipeline

from lifecycle.ml import features, training
from lifecycle.ml.metrics import compute, scores
from lifecycle.persistence import storage

SERIAL = {"search_jobs": 1, "lgbm_threads": 1}
GRID = {"num_leaves": [7], "n_estimators": [150], "learning_rate": [0.05], "min_child_samples": [50]}
SPLITS = {"validation_days": 4, "holdout_days": 4, "cv_folds": 2}


@pytest.fixture(scope="module")
def config(make_config):
    return make_config(training={**SPLITS, "grid": GRID, "search": "grid"})


@pytest.fixture(scope="module")
def frame(make_frame):
    return make_frame(24, 400)


@pytest.fixture(scope="module")
def parts(config, frame):
    return features.time_split(frame, config)


@pytest.fixture(scope="module")
def fitted(config, parts):
    search, summary = training.fit_search(config, parts["train"], GRID, "grid", plan=SERIAL)
    return search.best_estimator_, summary["input_columns"]


def destroyed(model, validation: pd.DataFrame, columns: list[str], target: str) -> CalibratedClassifierCV:
    """The same model with every P(positive) pushed through p**0.1: the same ranking (a strictly increasing map),
    log loss far worse, everyone above a 0.3 threshold. Built from scikit-learn's own types, so it is logged
    and loaded like any model: an isotonic calibrator whose map is overwritten with p -> p**0.1."""
    wrapped = CalibratedClassifierCV(FrozenEstimator(model), method="isotonic").fit(
        validation[columns], validation[target]
    )
    (iso,) = wrapped.calibrated_classifiers_[0].calibrators
    # The calibrator reads the model's decision_function (LightGBM's raw log-odds) when it has one, else
    # P(positive) (a calibrated model has only predict_proba).
    if hasattr(model, "decision_function"):
        margin = np.linspace(-40.0, 40.0, 16001)
        target = expit(margin) ** 0.1
    else:
        margin = np.linspace(0.0, 1.0, 4001)
        target = margin**0.1
    iso.X_thresholds_, iso.y_thresholds_, iso.X_min_, iso.X_max_ = margin, target, margin[0], margin[-1]
    iso._build_f(margin, target)
    return wrapped


# --- the plan -----------------------------------------------------------------------------------------------


def plan(setting: str, y, classes=(0, 1), task: str = "binary") -> dict:
    return training.calibration_plan(setting, task, y, list(classes))


def labels(rows: int, positives: int) -> np.ndarray:
    return np.r_[np.ones(positives, dtype=int), np.zeros(rows - positives, dtype=int)]


def test_auto_is_sigmoid_until_there_is_enough_of_every_class_for_isotonic():
    small = plan("auto", labels(3000, 300))
    assert small["method"] == "sigmoid"
    assert "3000 validation rows, 300 of the rarest class 1" in small["reason"] and small["reason"].startswith("auto")
    big = plan("auto", labels(training.ISOTONIC_MIN_ROWS, training.ISOTONIC_MIN_CLASS_ROWS))
    assert big["method"] == "isotonic" and "isotonic" in big["reason"]
    # enough rows but a rare class below the bar: still sigmoid
    rare = plan("auto", labels(4 * training.ISOTONIC_MIN_ROWS, training.ISOTONIC_MIN_CLASS_ROWS - 1))
    assert rare["method"] == "sigmoid"


def test_explicit_methods_are_honoured_and_none_turns_it_off():
    assert plan("isotonic", labels(500, 50))["method"] == "isotonic"
    assert plan("sigmoid", labels(50_000, 5_000))["method"] == "sigmoid"
    assert plan("none", labels(50_000, 5_000)) == {"method": "none", "reason": "training.calibration is none"}
    assert plan("auto", [1.5, 2.0], classes=[], task="regression")["method"] == "none"


def test_a_class_missing_from_the_validation_split_leaves_the_model_uncalibrated_and_says_which():
    y = np.array(["a"] * 200 + ["b"] * 100 + ["c"] * 3)
    found = plan("auto", y, classes=["a", "b", "c"], task="multiclass")
    assert found["method"] == "none" and "3 rows of class 'c'" in found["reason"]
    missing = plan("sigmoid", y[:300], classes=["a", "b", "c"], task="multiclass")
    assert missing["method"] == "none" and "0 rows of class 'c'" in missing["reason"]
    unseen = plan("auto", np.r_[y, ["d"] * 40], classes=["a", "b", "c"], task="multiclass")
    assert unseen["method"] == "none" and "never saw: ['d']" in unseen["reason"]


# --- a calibrated real model --------------------------------------------------------------------------------


def test_calibration_wraps_the_real_pipeline_keeping_ranking_classes_and_its_insides(config, parts, fitted):
    model, columns = fitted
    calibrated, found = training.calibrate(config, model, parts["validation"], columns)
    assert isinstance(calibrated, CalibratedClassifierCV) and found["method"] == "sigmoid"
    assert found["rows"] == len(parts["validation"])
    holdout = parts["holdout"][columns]
    y = parts["holdout"][config.target]
    before, after = (
        compute("binary", y, scores(model, holdout, "binary")),
        compute("binary", y, scores(calibrated, holdout, "binary")),
    )
    assert after["roc_auc"] == pytest.approx(before["roc_auc"], abs=1e-12)  # sigmoid is strictly increasing
    assert list(calibrated.classes_) == list(model.classes_) == [0, 1]
    proba = calibrated.predict_proba(holdout)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    inner = training.uncalibrated(calibrated)
    assert isinstance(inner, Pipeline) and inner.named_steps["model"].feature_importances_.sum() > 0
    assert training.uncalibrated(model) is model


def test_calibration_repairs_destroyed_probabilities(config, parts, fitted):
    """Behavioural: on rows it never saw, calibration takes a badly miscalibrated model back to a small ECE."""
    model, columns = fitted
    broken = destroyed(model, parts["validation"], columns, config.target)
    y, holdout = parts["holdout"][config.target], parts["holdout"][columns]
    bad = compute("binary", y, scores(broken, holdout, "binary"), threshold=0.3)
    assert bad["ece"] > 0.5 and bad["log_loss"] > 1.0 and bad["recall"] == 1.0 and bad["precision"] < 0.2
    repaired, found = training.calibrate(config, broken, parts["validation"], columns)
    good = compute("binary", y, scores(repaired, holdout, "binary"), threshold=0.3)
    assert found["method"] == "sigmoid"
    assert good["ece"] < 0.05 and good["log_loss"] < bad["log_loss"] / 3
    assert good["roc_auc"] == pytest.approx(bad["roc_auc"], abs=1e-9)


# --- the retrain evaluation path -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lifecycle_run(mlflow_store, config, frame, tmp_path_factory):
    """A real retrain up to the gate, without Airflow: snapshot, features, an MLflow run, challenger, baseline."""
    from lifecycle.tasks import retraining

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LIFECYCLE_SEARCH_JOBS", "1")
        run_id = "manual__calibration_test"
        snap = storage.write_parquet(storage.artifact_uri(config.name, run_id, "raw", "snapshot.parquet"), frame)
        snap |= {"window_start": str(frame[config.timestamp_column].min()), "window_end": "end"}
        feats = retraining.prepare_features(config, run_id, snap["uri"], snap["sha256"])
        mlflow_run_id = retraining.start_run(config, "test_calibration", run_id, {"reason": "calibration test"}, snap)
        challenger = retraining.train_challenger(config, mlflow_run_id, feats, GRID, "grid")
        baseline = retraining.train_baseline(config, mlflow_run_id, feats)
        yield {"run_id": run_id, "mlflow_run_id": mlflow_run_id, "features": feats, "challenger": challenger,
               "baseline": baseline, "client": mlflow_store[0]}  # fmt: skip


def _log_destroyed(config, make_config, run: dict) -> dict:
    """The champion's model with destroyed probabilities, logged by the same path (uncalibrated: as it is)."""
    from lifecycle.registry import model_trust
    from lifecycle.tasks import retraining

    feats = run["features"]
    model = model_trust.load(run["challenger"]["model_uri"])
    validation, train = (
        storage.read_parquet(feats["splits"]["validation"]),
        storage.read_parquet(feats["splits"]["train"]),
    )
    columns = feats["input_columns"]
    as_is = make_config(training={**SPLITS, "grid": GRID, "calibration": "none"})
    broken = destroyed(model, validation, columns, config.target)
    logged = retraining._log_model(as_is, run["mlflow_run_id"], broken, train, columns, feats, "destroyed")
    assert logged["calibration"]["method"] == "none"
    return {**logged, "family": "lightgbm"}


def test_training_logs_a_calibrated_model_with_its_method_and_reason(config, lifecycle_run):
    from lifecycle.registry import model_trust

    run = lifecycle_run["client"].get_run(lifecycle_run["mlflow_run_id"])
    assert run.data.params["calibration.method"] == "sigmoid"
    assert run.data.params["baseline.calibration.method"] == "sigmoid"
    assert run.data.tags["calibration.reason"].startswith("auto: 1600 validation rows")
    assert lifecycle_run["challenger"]["calibration"]["method"] == "sigmoid"
    model = model_trust.load(lifecycle_run["challenger"]["model_uri"])  # skops, our trust list, digests checked
    assert isinstance(model, CalibratedClassifierCV) and list(model.classes_) == [0, 1]
    assert "validation_ece" in run.data.metrics and "validation_brier" in run.data.metrics


def test_gate_refuses_the_destroyed_copy_of_the_real_champion_on_log_loss(config, make_config, lifecycle_run):
    import mlflow

    from lifecycle.tasks import retraining

    run = lifecycle_run
    evaluate = lambda challenger: retraining.evaluate(  # noqa: E731
        config, run["run_id"], run["mlflow_run_id"], run["features"], challenger, run["baseline"]
    )
    # No champion yet: the clean model is promoted; its secondary check is against the baseline's log loss.
    first = storage.read_json(evaluate(run["challenger"])["decision_uri"])
    assert first["verdict"] == "promote", first["reason"]
    (check,) = [c for c in first["checks"] if c["check"] == "secondary:log_loss"]
    assert check["passed"] and "the baseline's" in check["detail"]
    assert {"ece", "brier"} <= set(first["challenger"]) and first["challenger"]["ece"] < 0.05
    table = first["reliability"]["challenger"]
    assert sum(table["count"]) == first["holdout_rows"] and len(table["count"]) == 15
    assert first["calibration"]["lightgbm"]["method"] == "sigmoid"

    version = mlflow.register_model(run["challenger"]["model_uri"], config.registered_model_name)
    run["client"].set_registered_model_alias(config.registered_model_name, "champion", version.version)
    broken = _log_destroyed(config, make_config, run)
    result = evaluate(broken)
    decision = storage.read_json(result["decision_uri"])
    assert decision["selection"]["selected"] == "lightgbm", "the destroyed model must be the one judged"
    assert decision["challenger"]["roc_auc"] == pytest.approx(decision["champion"]["roc_auc"], abs=1e-9)
    assert decision["challenger"]["recall"] == 1.0  # everyone above the 0.3 threshold
    assert result["verdict"] == "reject"
    (check,) = [c for c in decision["checks"] if c["check"] == "secondary:log_loss"]
    ll, champion_ll = decision["challenger"]["log_loss"], decision["champion"]["log_loss"]
    assert not check["passed"] and ll > champion_ll + 0.5
    assert check["detail"] == (
        f"log_loss {ll:.4f} vs the champion's {champion_ll:.4f}: worse by {ll - champion_ll:.4f}, "
        "beyond the tolerance 0.01"
    )
    assert check["detail"] in result["reason"]
    # A retry of the evaluation decides the same and rewrites the same artifacts.
    again = evaluate(broken)
    assert (again["verdict"], again["reason"], again["decision_uri"]) == (
        result["verdict"],
        result["reason"],
        result["decision_uri"],
    )

    # The undestroyed champion meets the same gate: its log loss check passes (it fails only on improvement).
    same = storage.read_json(evaluate(run["challenger"])["decision_uri"])
    assert [c["passed"] for c in same["checks"] if c["check"] == "secondary:log_loss"] == [True]

    metrics = run["client"].get_run(run["mlflow_run_id"]).data.metrics
    assert {"holdout_challenger_ece", "holdout_challenger_brier", "holdout_champion_ece"} <= set(metrics)
    page = storage.read_bytes(result["report_uri"]).decode()
    assert "<h2>Calibration</h2>" in page and "<th>ece</th>" in page and "<th>brier</th>" in page
    assert "secondary:log_loss" in page


# --- the report ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_the_report_draws_a_reliability_row_for_classification_with_counts(task, config, parts, fitted):
    from PIL import Image

    from lifecycle.ml.metrics import reliability
    from lifecycle.ui.report import figure_png, html_report

    model, columns = fitted
    y = parts["holdout"][config.target].to_numpy()
    score = scores(model, parts["holdout"][columns], "binary")
    classes = None
    if task == "multiclass":  # the binary scores as two class columns: a valid multiclass input
        score, classes = np.c_[1 - score, score], model.classes_
    elif task == "regression":  # P(positive) as a predicted value of the 0/1 target
        y = y.astype(float)
    tables = None if task == "regression" else {"challenger": reliability(y, score, classes)}
    png = figure_png(task, y, {"challenger": score, "baseline": score}, model, 0.3, tables)
    height = Image.open(io.BytesIO(png)).size[1]
    assert height > 900 if task != "regression" else 600 < height < 900  # a third row of plots: the reliability
    metrics = compute(task, y, score, 0.3, classes)
    decision = {"verdict": "promote", "mode": "enforce", "reason": "r", "action": "promote", "checks": [],
                "challenger": metrics, "baseline": metrics, "primary_metric": "roc_auc",
                "challenger_family": "lightgbm", "calibration": {"lightgbm": {"method": "sigmoid", "reason": "auto: why"}},
                "reliability": tables}  # fmt: skip
    page = html_report("demo_churn", decision, png)
    if task == "regression":
        assert "<h2>Calibration</h2>" not in page
        return
    assert "<h2>Calibration</h2>" in page and "Calibrated with sigmoid on the validation split" in page
    assert "<th>ece</th>" in page and "<th>brier</th>" in page
    first = tables["challenger"]
    busiest = int(np.argmax(first["count"]))
    assert f"<td>{first['count'][busiest]}</td><td>{first['mean_predicted'][busiest]:.3f}</td>" in page


def test_multiclass_calibration_keeps_every_class_and_its_probabilities_sum_to_one():
    import importlib.util
    from pathlib import Path

    from lifecycle.config.pipeline import PipelineConfig

    path = Path(__file__).resolve().parents[1] / "integration" / "matrix_data.py"
    spec = importlib.util.spec_from_file_location("calibration_matrix_data", path)
    md = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(md)
    config = PipelineConfig.model_validate(md.pipeline_dict("m_multiclass", "multiclass", [{"name": "e", "uri": "x"}]))
    data = md.frame("multiclass", md.START, 14, 600).merge(md.stores(), on="store", how="left")
    parts = features.time_split(data, config)
    search, summary = training.fit_search(config, parts["train"], config.training.grid, "grid", plan=SERIAL)
    model, columns = search.best_estimator_, summary["input_columns"]
    calibrated, found = training.calibrate(config, model, parts["validation"], columns)
    rare = int((parts["validation"][config.target] == md.RARE).sum())
    assert training.CALIBRATION_MIN_CLASS_ROWS <= rare < 100  # the rare class is there, but only just
    assert found["method"] == "sigmoid" and f"{rare} of the rarest class 'vip'" in found["reason"]
    assert list(calibrated.classes_) == list(model.classes_)
    proba = calibrated.predict_proba(parts["holdout"][columns])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    y = parts["holdout"][config.target]
    before = compute("multiclass", y, scores(model, parts["holdout"][columns], "multiclass"), classes=model.classes_)
    after = compute("multiclass", y, proba, classes=calibrated.classes_)
    assert after["roc_auc"] > before["roc_auc"] - 0.02 and after["log_loss"] < before["log_loss"] + 0.02
