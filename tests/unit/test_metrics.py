"""Holdout metrics on known inputs and the paired bootstrap of the improvement."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lifecycle.config.pipeline import METRICS
from lifecycle.ml.metrics import (
    SCORERS,
    bootstrap_difference,
    brier,
    compute,
    expected_calibration_error,
    metric,
    reliability,
    scores,
)


def test_binary_perfect_scores():
    y = np.array([0, 0, 1, 1, 0, 1])
    score = np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.7])
    result = compute("binary", y, score)
    assert result["roc_auc"] == 1.0
    assert result["pr_auc"] == 1.0
    assert result["accuracy"] == 1.0 and result["f1"] == 1.0
    assert result["precision"] == 1.0 and result["recall"] == 1.0
    assert result["log_loss"] < 0.4
    assert result["threshold"] == 0.5


def test_binary_inverted_scores_and_threshold():
    y = np.array([0, 0, 1, 1])
    score = np.array([0.9, 0.6, 0.4, 0.1])
    result = compute("binary", y, score, threshold=0.3)
    assert result["roc_auc"] == 0.0
    # labels at 0.3: [1, 1, 1, 0] -> one true positive of three predicted, one of two actual
    assert result["precision"] == pytest.approx(1 / 3)
    assert result["recall"] == pytest.approx(1 / 2)
    assert result["accuracy"] == pytest.approx(1 / 4)
    assert result["threshold"] == 0.3


def test_binary_single_class_gives_nan_auc_not_an_error():
    result = compute("binary", np.zeros(4, dtype=int), np.array([0.1, 0.2, 0.3, 0.4]))
    assert math.isnan(result["roc_auc"]) and math.isnan(result["pr_auc"])
    assert result["accuracy"] == 1.0


def test_regression_known_values():
    result = compute("regression", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0]))
    assert result["rmse"] == pytest.approx(math.sqrt(4 / 3))
    assert result["mae"] == pytest.approx(2 / 3)
    assert result["r2"] == pytest.approx(1 - 4 / 2)


def test_multiclass_perfect():
    y = np.array(["a", "b", "c", "a"])
    proba = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    result = compute("multiclass", y, proba, classes=["a", "b", "c"])
    assert result["accuracy"] == 1.0 and result["roc_auc"] == 1.0 and result["f1"] == 1.0


def test_metric_matches_compute():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    score = rng.random(100)
    full = compute("binary", y, score)
    for name in ("roc_auc", "pr_auc", "log_loss", "f1"):
        assert metric("binary", name, y, score) == pytest.approx(full[name])


def test_scores_uses_the_positive_class_probability():
    class Model:
        def predict_proba(self, frame):
            return np.array([[0.8, 0.2], [0.3, 0.7]])

        def predict(self, frame):
            return np.array([1.5, 2.5])

    np.testing.assert_allclose(scores(Model(), None, "binary"), [0.2, 0.7])
    assert scores(Model(), None, "multiclass").shape == (2, 2)
    np.testing.assert_allclose(scores(Model(), None, "regression"), [1.5, 2.5])


def test_every_config_metric_has_a_scorer_for_its_tasks():
    for name, (tasks, _) in METRICS.items():
        for task in tasks:
            assert (name, task) in SCORERS


@pytest.fixture(scope="module")
def holdout():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 400)
    good = np.clip(y * 0.6 + rng.normal(0.2, 0.2, 400), 0, 1)  # strongly informative
    noise = rng.random(400)  # no information
    return y, good, noise


def test_bootstrap_identical_models_interval_contains_zero(holdout):
    y, good, _ = holdout
    result = bootstrap_difference("binary", "roc_auc", True, y, good, good.copy(), 100, 0.9)
    assert result["improvement"] == 0.0
    assert result["ci_low"] <= 0.0 <= result["ci_high"]
    assert result["resamples"] == 100


def test_bootstrap_clearly_better_model(holdout):
    y, good, noise = holdout
    result = bootstrap_difference("binary", "roc_auc", True, y, good, noise, 100, 0.9)
    assert result["improvement"] > 0.3
    assert 0.0 < result["ci_low"] <= result["improvement"] <= result["ci_high"]
    worse = bootstrap_difference("binary", "roc_auc", True, y, noise, good, 100, 0.9)
    assert worse["ci_high"] < 0.0
    assert worse["improvement"] == pytest.approx(-result["improvement"])


def test_bootstrap_lower_is_better_is_signed_as_improvement():
    rng = np.random.default_rng(2)
    y = rng.normal(10, 3, 300)
    close = y + rng.normal(0, 0.5, 300)
    far = y + rng.normal(0, 3.0, 300)
    result = bootstrap_difference("regression", "rmse", False, y, close, far, 100, 0.9)
    assert result["improvement"] > 0  # lower rmse for the challenger is a positive improvement
    assert result["ci_low"] > 0


def test_bootstrap_is_reproducible_and_narrows_with_confidence(holdout):
    y, good, noise = holdout
    blend = 0.5 * good + 0.5 * noise
    a = bootstrap_difference("binary", "roc_auc", True, y, good, blend, 50, 0.9, seed=3)
    assert a == bootstrap_difference("binary", "roc_auc", True, y, good, blend, 50, 0.9, seed=3)
    wide = bootstrap_difference("binary", "roc_auc", True, y, good, blend, 50, 0.99, seed=3)
    assert wide["ci_low"] <= a["ci_low"] and wide["ci_high"] >= a["ci_high"]


def test_bootstrap_without_resamples_falls_back_to_the_point():
    y = np.array([0, 1, 0, 1])
    result = bootstrap_difference("binary", "roc_auc", True, y, np.array([0.1, 0.9, 0.2, 0.8]), np.full(4, 0.5), 0, 0.9)
    assert result == {"improvement": 0.5, "ci_low": 0.5, "ci_high": 0.5, "resamples": 0}


# --- calibration: ECE, Brier, the reliability bins -----------------------------------------------------------


def test_ece_and_reliability_on_hand_computed_bins():
    # 15 equal-width bins: 0.05 falls in bin 0, 0.95 in bin 14.
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    score = np.array([0.05, 0.05, 0.05, 0.05, 0.95, 0.95, 0.95, 0.95])
    table = reliability(y, score)
    assert table["count"][0] == 4 and table["count"][14] == 4 and sum(table["count"]) == 8
    assert table["observed"][0] == 0.25 and table["observed"][14] == 0.75
    assert table["mean_predicted"][0] == pytest.approx(0.05) and table["mean_predicted"][7] is None
    assert table["lower"][0] == 0.0 and table["upper"][-1] == 1.0 and len(table["lower"]) == 15
    # |0.05 - 0.25| and |0.95 - 0.75|, each for half the rows
    assert expected_calibration_error(y, score) == pytest.approx(0.2)
    assert compute("binary", y, score)["ece"] == pytest.approx(0.2)
    assert expected_calibration_error(y, np.r_[score[:4], [1.0] * 4]) == pytest.approx(0.225)  # 1.0 lands in bin 14


def test_ece_is_small_for_calibrated_scores_and_large_for_destroyed_ones():
    rng = np.random.default_rng(4)
    p = rng.beta(1, 8, 20_000)
    y = (rng.random(20_000) < p).astype(int)
    assert expected_calibration_error(y, p) < 0.01
    destroyed = p**0.1
    assert expected_calibration_error(y, destroyed) > 0.6
    assert compute("binary", y, destroyed)["roc_auc"] == pytest.approx(compute("binary", y, p)["roc_auc"])


def test_brier_matches_scikit_learn_for_binary_and_multiclass():
    from sklearn.metrics import brier_score_loss

    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 300)
    p = rng.random(300)
    assert brier(y, p) == pytest.approx(brier_score_loss(y, p))
    assert compute("binary", y, p)["brier"] == pytest.approx(brier_score_loss(y, p))
    labels = np.array(["a", "b", "c"])
    y3 = labels[rng.integers(0, 3, 300)]
    proba = rng.dirichlet([1, 1, 1], 300)
    # the multi-class Brier sum, as scikit-learn computes it
    assert brier(y3, proba, labels) == pytest.approx(brier_score_loss(y3, proba, labels=labels))
    assert compute("multiclass", y3, proba, classes=labels)["brier"] == pytest.approx(brier(y3, proba, labels))
    perfect = (y3[:, None] == labels[None, :]).astype(float)
    assert brier(y3, perfect, labels) == 0.0 and expected_calibration_error(y3, perfect, labels) == 0.0


def test_multiclass_ece_is_top_label():
    y = np.array(["a", "b", "a", "c"])
    proba = np.array([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])
    # top labels a, a, c, c: right, wrong, wrong, right; confidences 0.7, 0.6, 0.8, 0.6
    table = reliability(y, proba, ["a", "b", "c"])
    assert sum(table["count"]) == 4
    expected = (abs(0.6 - 0.5) * 2 + abs(0.7 - 1.0) + abs(0.8 - 0.0)) / 4  # bin 9 holds both 0.6s
    assert expected_calibration_error(y, proba, ["a", "b", "c"]) == pytest.approx(expected)
    assert compute("multiclass", y, proba, classes=["a", "b", "c"])["ece"] == pytest.approx(expected)


def test_bootstrap_of_ece_is_signed_as_improvement():
    rng = np.random.default_rng(6)
    p = rng.beta(1, 8, 3000)
    y = (rng.random(3000) < p).astype(int)
    result = bootstrap_difference("binary", "ece", False, y, p, np.clip(p * 2, 0, 1), 50, 0.9)
    assert result["improvement"] > 0 and result["ci_low"] > 0  # the calibrated scores have the lower ECE


def test_the_calibration_scorers_score_a_fitted_model():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import get_scorer

    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] + rng.normal(size=400) > 0).astype(int)
    model = LogisticRegression().fit(x, y)
    p = model.predict_proba(x)[:, 1]
    assert SCORERS[("ece", "binary")](model, x, y) == pytest.approx(-expected_calibration_error(y, p))
    assert get_scorer(SCORERS[("brier", "binary")])(model, x, y) == pytest.approx(-brier(y, p))
