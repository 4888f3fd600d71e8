"""Label-free estimates (CBPE) against the realised metrics, and the realised metrics with their intervals.

The estimate's tolerance is derived, not picked. When labels are drawn from the scores themselves
(y_i ~ Bernoulli(p_i)), the realised metric is a random variable and the estimate should be its centre:
- accuracy, log loss and Brier score are means of per-row terms linear in y_i, so the estimate is exactly
  their expectation and their variance is exact: sum_i Var(term_i) / n^2 (for accuracy Var = q(1-q) with q the
  chance the row is called right; Brier p(1-p)(1-2p)^2; log loss p(1-p)log((1-p)/p)^2);
- ROC AUC, average precision, precision, recall and F1 are ratios, estimated as ratios of expectations; their
  spread comes from redrawing the labels (Monte Carlo) and their bias is O(1/n).
A single draw must then lie within 4 standard deviations (a 1-in-16,000 miss for a normal), the Monte Carlo
mean within 4 of its standard errors plus a bias allowance of 0.2 standard deviations of the metric, and at
n = 5000 the standard deviations are small (under 0.02) so the tolerance is tight.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from lifecycle.ml import estimation
from lifecycle.ml.estimation import ESTIMABLE, REALISABLE, clean_scores, estimate, realised

N = 5000
THRESHOLD = 0.3
LINEAR = ("accuracy", "log_loss", "brier")  # exact expectation, exact variance
RATIOS = ("roc_auc", "pr_auc", "precision", "recall", "f1")


def churn_like_scores(n: int, seed: int = 0) -> np.ndarray:
    """Skewed probabilities like the demo's (about 17% positives), with ties (rounded, as isotonic output is)."""
    return np.round(np.random.default_rng(seed).beta(0.8, 4.0, n), 3)


def draw_labels(p: np.ndarray, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(len(p)) < p).astype(int)


def table_labels(scores: np.ndarray, positive: str = "1", negative: str = "0") -> np.ndarray:
    """The predicted label column as lifecycle.ml.scoring writes it: the class name as text at the threshold."""
    return np.where(scores >= THRESHOLD, positive, negative).astype(object)


def realised_values(actual: np.ndarray, scores: np.ndarray, **kwargs) -> dict[str, float]:
    result = realised("binary", actual, scores, table_labels(scores), THRESHOLD, resamples=0, **kwargs)
    return {name: r["value"] for name, r in result.items()}


def exact_sd(p: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Standard deviation of each linear metric over label draws y ~ Bernoulli(p), for model scores `scores`."""
    called = scores >= THRESHOLD
    right = np.where(called, p, 1 - p)  # P(row called right)
    s = np.clip(scores, 1e-15, 1 - 1e-15)
    per_row = {
        "accuracy": right * (1 - right),
        "brier": p * (1 - p) * ((1 - s) ** 2 - s**2) ** 2,
        "log_loss": p * (1 - p) * np.log((1 - s) / s) ** 2,
    }
    return {name: float(np.sqrt(v.sum()) / len(p)) for name, v in per_row.items()}


@pytest.fixture(scope="module")
def monte_carlo() -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each realised metric over 200 label draws from the scores."""
    p = churn_like_scores(N)
    draws = [realised_values(draw_labels(p, 1000 + i), p) for i in range(200)]
    return {
        name: {"mean": float(np.mean([d[name] for d in draws])), "sd": float(np.std([d[name] for d in draws]))}
        for name in ESTIMABLE["binary"]
    }


# --- estimate vs realised on labels drawn from the scores ---------------------------------------------------


def test_estimate_is_the_centre_of_the_realised_metric(monte_carlo):
    p = churn_like_scores(N)
    estimated = estimate("binary", p, THRESHOLD)
    assert set(estimated) == set(ESTIMABLE["binary"])
    exact = exact_sd(p, p)
    for name in LINEAR:  # the derived variance agrees with the Monte Carlo one
        assert monte_carlo[name]["sd"] == pytest.approx(exact[name], rel=0.15), name
    for name, value in estimated.items():
        sd = exact.get(name, monte_carlo[name]["sd"])
        assert sd < 0.02, f"{name}: sd {sd} makes the test loose"
        allowance = 4 * monte_carlo[name]["sd"] / math.sqrt(200) + (0.0 if name in LINEAR else 0.2 * sd)
        assert abs(value - monte_carlo[name]["mean"]) <= allowance, (name, value, monte_carlo[name])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_estimate_matches_one_labelled_batch_within_four_sd(seed, monte_carlo):
    p = churn_like_scores(N, seed)
    actual = draw_labels(p, 50 + seed)
    estimated = estimate("binary", p, THRESHOLD)
    observed = realised_values(actual, p)
    exact = exact_sd(p, p)
    for name in estimated:
        sd = exact.get(name, monte_carlo[name]["sd"])  # other seeds, same distribution: same spread
        assert abs(estimated[name] - observed[name]) <= 4 * sd, (name, estimated[name], observed[name], sd)


def test_miscalibration_makes_the_estimate_wrong_and_more_so_the_worse_it_is(monte_carlo):
    """Labels from p, the model's scores p**k: a monotone distortion, so the ranking (realised AUC) is the same."""
    p = churn_like_scores(N)
    actual = draw_labels(p, 7)
    errors: dict[str, list[float]] = {"roc_auc": [], "accuracy": []}
    for k in (1.0, 1.5, 2.0, 3.0):
        scores = p**k
        estimated = estimate("binary", scores, THRESHOLD)
        observed = realised_values(actual, scores)
        for name in errors:
            errors[name].append(abs(estimated[name] - observed[name]))
    sd = {"roc_auc": monte_carlo["roc_auc"]["sd"], "accuracy": exact_sd(p, p)["accuracy"]}
    for name, series in errors.items():
        assert series == sorted(series) and series[0] < series[-1], (name, series)
        assert series[0] <= 4 * sd[name], (name, series)  # calibrated: within the noise
        assert series[-1] > 10 * sd[name], (name, series)  # p**3: far outside it


def test_expected_curves_follow_sklearn_on_weighted_rows_with_ties():
    """Expected ROC AUC / AP = scikit-learn's on each row counted p as a positive and 1 - p as a negative."""
    p = np.round(churn_like_scores(2000, 5), 1)  # heavy ties
    estimated = estimate("binary", p, THRESHOLD, ["roc_auc", "pr_auc"])
    y = np.r_[np.ones(len(p)), np.zeros(len(p))]
    s, w = np.r_[p, p], np.r_[p, 1 - p]
    assert estimated["roc_auc"] == pytest.approx(skm.roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    assert estimated["pr_auc"] == pytest.approx(skm.average_precision_score(y, s, sample_weight=w), abs=1e-12)


def test_expected_counts_by_hand():
    p = np.array([0.9, 0.6, 0.2, 0.1])
    estimated = estimate("binary", p, 0.5)
    tp, fp, fn, tn = 1.5, 0.5, 0.3, 1.7
    assert estimated["accuracy"] == pytest.approx((tp + tn) / 4)
    assert estimated["precision"] == pytest.approx(tp / (tp + fp))
    assert estimated["recall"] == pytest.approx(tp / (tp + fn))
    assert estimated["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert estimated["brier"] == pytest.approx(np.mean(p * (1 - p)))
    # AUC: pairs (i above j) weighted p_i (1 - p_j), over (sum p)(sum 1 - p); no ties here
    pairs = sum(p[i] * (1 - p[j]) for i in range(4) for j in range(4) if p[i] > p[j])
    self_pairs = 0.5 * np.sum(p * (1 - p))
    assert estimated["roc_auc"] == pytest.approx((pairs + self_pairs) / (p.sum() * (1 - p).sum()))


# --- edge cases of the estimate -----------------------------------------------------------------------------


def test_estimate_edge_cases():
    assert all(math.isnan(v) for v in estimate("binary", np.array([]), THRESHOLD).values())
    zeros = estimate("binary", np.zeros(10), THRESHOLD)
    assert math.isnan(zeros["roc_auc"]) and zeros["accuracy"] == 1.0 and zeros["precision"] == 0.0
    assert zeros["recall"] == 0.0 and zeros["f1"] == 0.0 and zeros["brier"] == 0.0
    ones = estimate("binary", np.ones(10), THRESHOLD)
    assert math.isnan(ones["roc_auc"]) and ones["accuracy"] == 1.0 and ones["precision"] == 1.0
    assert ones["recall"] == 1.0
    everyone_positive = estimate("binary", np.array([0.4, 0.5, 0.9]), THRESHOLD)  # one class predicted
    assert everyone_positive["recall"] == 1.0
    assert everyone_positive["accuracy"] == pytest.approx(np.mean([0.4, 0.5, 0.9]))
    assert everyone_positive["roc_auc"] > 0.5


def test_missing_scores_are_dropped_and_counted():
    p = churn_like_scores(500)
    with_gaps = np.array([*p, np.nan, None, np.nan], dtype=object)
    kept, dropped = clean_scores("binary", with_gaps)
    assert dropped == 3 and len(kept) == len(p)
    assert estimate("binary", with_gaps, THRESHOLD) == estimate("binary", p, THRESHOLD)


def test_bad_scores_name_the_rows():
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]; 1 are not \(row 1: 1.5\)"):
        estimate("binary", np.array([0.2, 1.5]), THRESHOLD)
    with pytest.raises(ValueError, match=r"must be numbers; 1 are not \(row 2: 'high'\)"):
        estimate("binary", np.array([0.2, 0.3, "high"], dtype=object), THRESHOLD)
    with pytest.raises(ValueError, match="threshold must be in"):
        estimate("binary", np.array([0.2]), 3)
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        estimate("ranking", np.array([0.2]), THRESHOLD)
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['auc'\]"):
        estimate("binary", np.array([0.2]), THRESHOLD, ["auc"])


def test_only_estimable_metrics_are_given():
    top = np.array([0.9, 0.6, 0.5, 0.7])
    assert estimate("multiclass", top, THRESHOLD) == {"accuracy": pytest.approx(0.675)}
    assert estimate("multiclass", top, THRESHOLD, ["roc_auc", "f1"]) == {}
    assert estimate("regression", np.array([3.2, 1.0]), THRESHOLD) == {}
    assert list(estimate("binary", top, THRESHOLD, ["rmse", "f1", "roc_auc"])) == ["f1", "roc_auc"]
    assert math.isnan(estimate("multiclass", np.array([]), THRESHOLD)["accuracy"])


# --- realised metrics ----------------------------------------------------------------------------------------


def test_realised_binary_matches_sklearn():
    p = churn_like_scores(3000, 11)
    y = draw_labels(p, 12)
    called = (p >= THRESHOLD).astype(int)
    expected = {
        "roc_auc": skm.roc_auc_score(y, p),
        "pr_auc": skm.average_precision_score(y, p),
        "accuracy": skm.accuracy_score(y, called),
        "precision": skm.precision_score(y, called),
        "recall": skm.recall_score(y, called),
        "f1": skm.f1_score(y, called),
        "log_loss": skm.log_loss(y, p),
        "brier": skm.brier_score_loss(y, p),
    }
    observed = realised_values(y, p)
    assert set(observed) == set(REALISABLE["binary"])
    for name, value in expected.items():
        assert observed[name] == pytest.approx(value, abs=1e-12), name


def test_a_bootstrap_resample_is_the_metric_on_the_resampled_rows():
    """The O(n) weighted form used for resamples equals scikit-learn on the rows it stands for."""
    p = churn_like_scores(800, 3)
    y = draw_labels(p, 4)
    idx = np.random.default_rng(9).integers(0, len(p), len(p))
    w = np.bincount(idx, minlength=len(p)).astype(float)
    called = (p >= THRESHOLD).astype(float)
    names = ["roc_auc", "pr_auc", "f1", "log_loss", "brier"]
    got = estimation._binary_metrics(
        names, w * y, w * (1 - y), called, estimation._groups(p), estimation._row_losses(p)
    )
    assert got["roc_auc"] == pytest.approx(skm.roc_auc_score(y[idx], p[idx]), abs=1e-12)
    assert got["pr_auc"] == pytest.approx(skm.average_precision_score(y[idx], p[idx]), abs=1e-12)
    assert got["f1"] == pytest.approx(skm.f1_score(y[idx], (p[idx] >= THRESHOLD).astype(int)), abs=1e-12)
    assert got["log_loss"] == pytest.approx(skm.log_loss(y[idx], p[idx]), abs=1e-12)
    assert got["brier"] == pytest.approx(skm.brier_score_loss(y[idx], p[idx]), abs=1e-12)


def test_intervals_contain_the_value_and_shrink_with_rows():
    widths = {}
    for n in (500, 8000):
        p = churn_like_scores(n, n)
        y = draw_labels(p, n + 1)
        result = realised("binary", y, p, table_labels(p), THRESHOLD, confidence=0.9, resamples=200, seed=0)
        for name, r in result.items():
            assert r["rows"] == n
            assert r["ci_low"] <= r["value"] <= r["ci_high"], (n, name, r)
        widths[n] = {name: r["ci_high"] - r["ci_low"] for name, r in result.items()}
    for name in widths[500]:  # sqrt(16) = 4 times narrower in theory
        assert widths[8000][name] < widths[500][name] / 2.5, (name, widths[500][name], widths[8000][name])
    again = realised("binary", y, p, table_labels(p), THRESHOLD, resamples=200, seed=0)
    assert again == result  # the seed fixes the interval: a rerun writes the same rows


def test_interval_widens_with_confidence():
    p = churn_like_scores(1000, 2)
    y = draw_labels(p, 3)
    narrow = realised("binary", y, p, table_labels(p), THRESHOLD, ["roc_auc"], confidence=0.5)["roc_auc"]
    wide = realised("binary", y, p, table_labels(p), THRESHOLD, ["roc_auc"], confidence=0.99)["roc_auc"]
    assert wide["ci_low"] < narrow["ci_low"] < narrow["ci_high"] < wide["ci_high"]


def test_labels_as_the_table_stores_them():
    """Ints, text "0"/"1", floats, bools and class names give the same metrics; unlabelled rows are left out."""
    p = churn_like_scores(1000, 21)
    y = draw_labels(p, 22)
    reference = realised("binary", y, p, table_labels(p), THRESHOLD, resamples=20)
    variants = {
        "text": (y.astype(str).astype(object), table_labels(p)),
        "floats": (y.astype(float), table_labels(p)),
        "bools": (y.astype(bool), table_labels(p, "True", "False")),
        "names": (np.where(y == 1, "churned", "stayed").astype(object), table_labels(p, "churned", "stayed")),
    }
    for variant, (actual, predicted) in variants.items():
        assert realised("binary", actual, p, predicted, THRESHOLD, resamples=20) == reference, variant
    # the positive class is the one named at score >= threshold, whatever sorts first
    names = realised("binary", np.where(y == 1, "a", "b"), p, table_labels(p, "a", "b"), THRESHOLD, resamples=20)
    assert names == reference
    unlabelled = np.array([*y.astype(object), None, np.nan], dtype=object)
    predicted = np.concatenate([table_labels(p), np.array(["1", "0"], dtype=object)])
    gaps = realised("binary", unlabelled, np.r_[p, 0.5, 0.1], predicted, THRESHOLD, resamples=20)
    assert gaps == reference and gaps["roc_auc"]["rows"] == 1000


def test_label_problems_are_named():
    p = np.array([0.1, 0.4, 0.8, 0.35])
    with pytest.raises(ValueError, match=r"at score >= 0.3 are \['0', '1'\].*another threshold"):
        realised("binary", [0, 1, 1, 0], p, ["0", "0", "1", "1"], THRESHOLD)
    with pytest.raises(ValueError, match=r"actual labels \['0', '1'\] are neither the positive 'churned'"):
        realised("binary", [0, 1, 1, 0], p, ["stayed", "churned", "churned", "churned"], THRESHOLD)
    with pytest.raises(ValueError, match="actual has 3 rows, the scores 4"):
        realised("binary", [0, 1, 1], p, ["0", "1", "1", "1"], THRESHOLD)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        realised("binary", [0, 1], [0.1, 7.0], ["0", "1"], THRESHOLD)


def test_realised_single_class_and_empty():
    p = np.array([0.1, 0.4, 0.8])
    one_class = realised("binary", [0, 0, 0], p, table_labels(p), THRESHOLD)
    assert math.isnan(one_class["roc_auc"]["value"]) and math.isnan(one_class["roc_auc"]["ci_low"])
    assert one_class["accuracy"]["value"] == pytest.approx(1 / 3)
    empty = realised("binary", [], [], [], THRESHOLD)
    assert all(math.isnan(r["value"]) and r["rows"] == 0 for r in empty.values())


def test_realised_multiclass_and_regression_match_sklearn():
    rng = np.random.default_rng(31)
    actual = rng.choice(["a", "b", "c", "d"], 600, p=[0.5, 0.3, 0.15, 0.05])
    predicted = np.where(rng.random(600) < 0.7, actual, rng.choice(["a", "b", "c"], 600))
    result = realised("multiclass", actual, rng.random(600), predicted, THRESHOLD)
    assert set(result) == set(REALISABLE["multiclass"])
    assert result["accuracy"]["value"] == pytest.approx(skm.accuracy_score(actual, predicted))
    assert result["f1"]["value"] == pytest.approx(skm.f1_score(actual, predicted, average="macro"))
    assert result["f1"]["ci_low"] < result["f1"]["value"] < result["f1"]["ci_high"]

    truth = rng.normal(10, 3, 400)
    value = truth + rng.normal(0, 1, 400)
    reg = realised("regression", truth.astype(str), value, [None] * 400, THRESHOLD)  # text numbers, as SQL may give
    assert reg["rmse"]["value"] == pytest.approx(np.sqrt(skm.mean_squared_error(truth, value)))
    assert reg["mae"]["value"] == pytest.approx(skm.mean_absolute_error(truth, value))
    assert reg["r2"]["value"] == pytest.approx(skm.r2_score(truth, value))
    with pytest.raises(ValueError, match=r"regression actual values must be numbers; 1 are not \(row 0: 'n/a'\)"):
        realised("regression", ["n/a", 2.0], [1.0, 2.0], [None, None], THRESHOLD)


def test_pandas_columns_with_missing_values_as_the_performance_dag_passes_them():
    """Nullable pandas columns (Int64 labels with <NA>, Float64 scores with <NA>) as a SQL read gives them."""
    import pandas as pd

    p = churn_like_scores(400, 41)
    y = draw_labels(p, 42)
    actual = pd.Series([*y, None], dtype="Int64")
    scores = pd.Series([*p, None], dtype="Float64")
    labels = pd.Series([*table_labels(p), None], dtype=object)
    assert realised("binary", actual, scores, labels, THRESHOLD, resamples=20) == realised(
        "binary", y, p, table_labels(p), THRESHOLD, resamples=20
    )
    assert clean_scores("binary", scores)[1] == 1
    assert estimate("binary", scores, THRESHOLD) == estimate("binary", p, THRESHOLD)
