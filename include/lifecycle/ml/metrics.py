"""Holdout metrics and a paired bootstrap of the difference between two models on the same rows."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn import metrics as skm

# The scikit-learn scorer that optimises each metric during the search.
SCORERS = {
    ("roc_auc", "binary"): "roc_auc",
    ("roc_auc", "multiclass"): "roc_auc_ovr",
    ("pr_auc", "binary"): "average_precision",
    ("log_loss", "binary"): "neg_log_loss",
    ("log_loss", "multiclass"): "neg_log_loss",
    ("f1", "binary"): "f1",
    ("f1", "multiclass"): "f1_macro",
    ("precision", "binary"): "precision",
    ("recall", "binary"): "recall",
    ("accuracy", "binary"): "accuracy",
    ("accuracy", "multiclass"): "accuracy",
    ("rmse", "regression"): "neg_root_mean_squared_error",
    ("mae", "regression"): "neg_mean_absolute_error",
    ("r2", "regression"): "r2",
    # Brier as scikit-learn scores it (a multiclass search scores through search_scorer instead).
    ("brier", "binary"): "neg_brier_score",
    ("brier", "multiclass"): "neg_brier_score",
}

# Bins of the reliability diagram and the ECE: 15 equal-width bins on [0, 1] (as Guo et al. 2017).
CALIBRATION_BINS = 15


def reliability(y_true: Any, score: np.ndarray, classes: Any = None, bins: int = CALIBRATION_BINS) -> dict[str, list]:
    """Per equal-width bin of predicted probability: its rows, mean prediction and observed frequency.

    Binary: the bins are of P(positive) and the frequency is the share of positives (the probability the
    threshold acts on). Multiclass: top-label, i.e. the bins are of the highest class probability and the
    frequency is how often that class was right. Empty bins have count 0 and None means (plain JSON).
    """
    y = np.asarray(y_true)
    score = np.asarray(score, dtype=float)
    if score.ndim == 1:
        confidence, outcome = score, (y == 1).astype(float)
    else:
        classes = np.asarray(classes if classes is not None else np.unique(y))
        confidence, outcome = score.max(axis=1), (classes[np.argmax(score, axis=1)] == y).astype(float)
    index = np.clip((confidence * bins).astype(int), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(index, weights=confidence, minlength=bins) / count
        observed = np.bincount(index, weights=outcome, minlength=bins) / count
    edges = np.linspace(0.0, 1.0, bins + 1)
    return {
        "lower": edges[:-1].tolist(),
        "upper": edges[1:].tolist(),
        "count": count.astype(int).tolist(),
        "mean_predicted": [None if n == 0 else float(v) for n, v in zip(count, predicted, strict=True)],
        "observed": [None if n == 0 else float(v) for n, v in zip(count, observed, strict=True)],
    }


def expected_calibration_error(
    y_true: Any, score: np.ndarray, classes: Any = None, bins: int = CALIBRATION_BINS
) -> float:
    """ECE: the row-weighted mean gap |mean prediction - observed frequency| over the reliability bins.

    Equal-width bins (15 by default); positive-class for binary, top-label for multiclass (see reliability).
    0 is perfectly calibrated; a model that says 0.9 for rows that are positive half the time scores 0.4.
    """
    table = reliability(y_true, score, classes, bins)
    count = np.asarray(table["count"], dtype=float)
    if count.sum() == 0:
        return float("nan")
    gaps = np.abs(np.asarray(table["mean_predicted"], dtype=float) - np.asarray(table["observed"], dtype=float))
    return float(np.sum(np.where(count > 0, gaps, 0.0) * count) / count.sum())


def brier(y_true: Any, score: np.ndarray, classes: Any = None) -> float:
    """Brier score: mean squared distance of the probabilities from the outcome (lower is better).

    Binary: mean((P(positive) - y)^2), in [0, 1]. Multiclass: the multi-class Brier sum (Brier 1950):
    mean over rows of the sum over classes of (p_k - [y = k])^2, in [0, 2]; what scikit-learn's
    brier_score_loss(y, proba, labels=classes) computes. It is not divided by the number of classes,
    so adding classes does not shrink it.
    """
    y = np.asarray(y_true)
    score = np.asarray(score, dtype=float)
    if score.ndim == 1:
        return float(np.mean((score - (y == 1)) ** 2))
    classes = np.asarray(classes if classes is not None else np.unique(y))
    onehot = (y[:, None] == classes[None, :]).astype(float)
    return float(np.mean(np.sum((score - onehot) ** 2, axis=1)))


# ECE for the search (negated: greater is better); multiclass searches score through search_scorer.
_ECE_SCORER = skm.make_scorer(expected_calibration_error, greater_is_better=False, response_method="predict_proba")
SCORERS[("ece", "binary")] = SCORERS[("ece", "multiclass")] = _ECE_SCORER


def scores(model: Any, frame: Any, task: str) -> np.ndarray:
    """What the metrics need from a model: P(positive) for binary, the class matrix, or the value."""
    if task == "regression":
        return np.asarray(model.predict(frame), dtype=float)
    proba = np.asarray(model.predict_proba(frame), dtype=float)
    return proba[:, 1] if task == "binary" else proba


def _calculators(task: str, y: np.ndarray, score: np.ndarray, threshold: float, classes: Any) -> dict:
    """Each metric as a thunk, so a bootstrap can ask for one without paying for all."""
    if task == "regression":
        return {
            "rmse": lambda: np.sqrt(skm.mean_squared_error(y, score)),
            "mae": lambda: skm.mean_absolute_error(y, score),
            "r2": lambda: skm.r2_score(y, score),
        }
    if task == "binary":
        label = (score >= threshold).astype(int)
        one_class = len(np.unique(y)) < 2
        return {
            "roc_auc": lambda: float("nan") if one_class else skm.roc_auc_score(y, score),
            "pr_auc": lambda: float("nan") if one_class else skm.average_precision_score(y, score),
            "log_loss": lambda: skm.log_loss(y, np.clip(score, 1e-15, 1 - 1e-15), labels=[0, 1]),
            "f1": lambda: skm.f1_score(y, label, zero_division=0),
            "precision": lambda: skm.precision_score(y, label, zero_division=0),
            "recall": lambda: skm.recall_score(y, label, zero_division=0),
            "accuracy": lambda: skm.accuracy_score(y, label),
            "ece": lambda: expected_calibration_error(y, score),
            "brier": lambda: brier(y, score),
            "threshold": lambda: threshold,
        }
    # The model's classes, never the ones in `y`: a bootstrap resample may lack a rare class.
    classes = np.asarray(classes if classes is not None else np.unique(y))
    if score.ndim != 2 or score.shape[1] != len(classes):
        raise ValueError(
            f"{score.shape[-1]} probability columns for {len(classes)} classes {list(classes)}: give each model's "
            "own classes_, or align() models trained on different classes to one set"
        )
    unseen = np.setdiff1d(np.unique(y), classes)
    if len(unseen):  # labels the model never saw (absent from its training rows): predicted with probability 0
        classes = np.concatenate([classes, unseen])
        score = np.hstack([score, np.zeros((len(score), len(unseen)))])
    label = classes[np.argmax(score, axis=1)]
    return {
        "roc_auc": lambda: _one_vs_rest_auc(y, score, classes),
        "log_loss": lambda: skm.log_loss(y, score, labels=classes),
        "f1": lambda: skm.f1_score(y, label, average="macro", zero_division=0),
        "accuracy": lambda: skm.accuracy_score(y, label),
        "ece": lambda: expected_calibration_error(y, score, classes),
        "brier": lambda: brier(y, score, classes),
    }


def _one_vs_rest_auc(y: np.ndarray, score: np.ndarray, classes: np.ndarray) -> float:
    """Macro one-vs-rest ROC AUC over the classes present in `y` (scikit-learn's refuses an absent class)."""
    aucs = [skm.roc_auc_score(y == c, score[:, k]) for k, c in enumerate(classes) if 0 < int(np.sum(y == c)) < len(y)]
    return float(np.mean(aucs)) if aucs else float("nan")


def align(score: np.ndarray, model_classes: Any, classes: Any) -> np.ndarray:
    """A model's class-probability columns (in `model_classes` order) as columns for `classes`.

    A class the model never saw gets probability 0; so two models trained on windows with different classes
    (a rare class in one and not the other) can be compared on the same rows.
    """
    score = np.asarray(score, dtype=float)
    position = {c: k for k, c in enumerate(np.asarray(model_classes).tolist())}
    out = np.zeros((score.shape[0], len(classes)))
    for j, c in enumerate(np.asarray(classes).tolist()):
        if c in position:
            out[:, j] = score[:, position[c]]
    return out


def search_scorer(task: str, name: str, classes: Any) -> Any:
    """A scorer for the hyper-parameter search (greater is better) that holds up when a fold lacks a class.

    Time-series folds of a multiclass target with a rare class often miss it, in a fold's training rows (the
    fold's model has fewer probability columns) or in its test rows; scikit-learn's roc_auc_ovr and
    neg_log_loss scorers then raise. This one scores the fold's probabilities aligned to all `classes`.
    """
    from lifecycle.config.pipeline import METRICS

    classes = np.asarray(classes)
    sign = 1.0 if METRICS[name][1] else -1.0

    def scorer(estimator: Any, frame: Any, y: Any) -> float:
        proba = align(estimator.predict_proba(frame), estimator.classes_, classes)
        return sign * metric(task, name, y, proba, classes=classes)

    return scorer


def compute(task: str, y_true: Any, score: np.ndarray, threshold: float = 0.5, classes: Any = None) -> dict:
    calculators = _calculators(task, np.asarray(y_true), score, threshold, classes)
    return {name: float(calc()) for name, calc in calculators.items()}


def metric(task: str, name: str, y_true: Any, score: np.ndarray, threshold: float = 0.5, classes: Any = None) -> float:
    return float(_calculators(task, np.asarray(y_true), score, threshold, classes)[name]())


def bootstrap_difference(
    task: str,
    name: str,
    higher_is_better: bool,
    y_true: Any,
    challenger: np.ndarray,
    champion: np.ndarray,
    resamples: int,
    confidence: float,
    threshold: float = 0.5,
    seed: int = 0,
    classes: Any = None,
) -> dict[str, float]:
    """Confidence interval of the improvement (challenger over champion, signed so that > 0 is better)."""
    y = np.asarray(y_true)

    def metric_value(labels: np.ndarray, score: np.ndarray) -> float:
        return metric(task, name, labels, score, threshold, classes)

    sign = 1.0 if higher_is_better else -1.0
    point = sign * (metric_value(y, challenger) - metric_value(y, champion))
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        idx = rng.integers(0, len(y), len(y))
        if task != "regression" and len(np.unique(y[idx])) < 2:
            continue
        diffs.append(sign * (metric_value(y[idx], challenger[idx]) - metric_value(y[idx], champion[idx])))
    if not diffs:
        return {"improvement": float(point), "ci_low": float(point), "ci_high": float(point), "resamples": 0}
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    return {
        "improvement": float(point),
        "ci_low": float(low),
        "ci_high": float(high),
        "resamples": len(diffs),
    }
