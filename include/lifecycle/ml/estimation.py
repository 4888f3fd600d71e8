"""Performance without labels (CBPE) and with them (realised, with bootstrap intervals), from the predictions table.

Confidence-based performance estimation (NannyML's CBPE, reimplemented here): if the scores are calibrated,
row i is positive with probability p_i, so every cell of the confusion matrix has an expected value computable
from the scores alone: at threshold t, TP = sum p_i and FP = sum (1 - p_i) over rows predicted positive
(p_i >= t), FN = sum p_i and TN = sum (1 - p_i) over the rest. Accuracy, precision, recall and F1 follow from
those counts; ROC AUC and average precision are the areas under the expected curves (each row counts p_i as a
positive and 1 - p_i as a negative); log loss and Brier score are their expectations under the scores.

What the estimate cannot see: it trusts the calibration. Covariate drift (new rows in regions where the model is
less sure) moves the estimate; concept drift (the same rows now mean something else, P(y | x) changed) does
not, because the scores do not change with it. benchmarks/performance_estimation.py measures both.

Why so little for the other tasks: the predictions table keeps one score per row.
- multiclass: the score is the top class's probability, so the expected accuracy is its mean. Macro F1, ROC AUC
  and log loss need the whole probability vector (the expected per-class counts and the ranking of every class);
  storing it (a column per class, or a JSON array) would make them estimable the same way.
- regression: the score is a point prediction, with no statement of its own uncertainty, so there is nothing to
  take an expectation over. It would need a predictive distribution per row (quantile or conformal intervals
  stored beside the value) or a second model of the error from the features (NannyML's direct loss estimation),
  which needs the features, not this table.

Realised metrics are computed on the rows whose labels have arrived, each with a percentile-bootstrap interval.
Every metric here is written once, on row weights (1 for the sample itself, the resample's multiplicities for
the bootstrap, p_i and 1 - p_i for the estimate), so the three agree on definitions (scikit-learn's: ties in
ROC AUC count a half, zero_division=0) and a resample costs O(n) after one sort.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

ESTIMABLE: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "log_loss", "brier"),
    "multiclass": ("accuracy",),
    "regression": (),
}
REALISABLE: dict[str, tuple[str, ...]] = {
    "binary": ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "log_loss", "brier"),
    "multiclass": ("accuracy", "f1"),
    "regression": ("rmse", "mae", "r2"),
}
_KNOWN = frozenset({"roc_auc", "pr_auc", "log_loss", "f1", "precision", "recall", "accuracy", "rmse", "mae", "r2",
                    "ece", "brier"})  # fmt: skip
_EPS = 1e-15  # log-loss clipping, as lifecycle.ml.metrics


def _check_task(task: str) -> None:
    if task not in ESTIMABLE:
        raise ValueError(f"unknown task {task!r}; known: {sorted(ESTIMABLE)}")


def _selected(task: str, metrics: Iterable[str] | None, available: tuple[str, ...]) -> list[str]:
    """The requested metrics this task can give, in the order asked; names no task knows are an error."""
    if metrics is None:
        return list(available)
    wanted = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = sorted(set(wanted) - _KNOWN)
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown} for task {task!r}; known: {sorted(_KNOWN)}")
    return [m for m in dict.fromkeys(wanted) if m in available]


def _floats(values: Any, what: str) -> np.ndarray:
    """A 1-d float array (None, NA -> NaN); a value that is not a number is an error naming the first offenders."""
    series = pd.Series(np.asarray(values, dtype=object).ravel(), dtype=object)
    numbers = pd.to_numeric(series, errors="coerce").astype(float)
    bad = np.flatnonzero(numbers.isna().to_numpy() & series.notna().to_numpy())
    if len(bad):
        shown = ", ".join(f"row {i}: {series.iloc[i]!r}" for i in bad[:3])
        raise ValueError(f"{what} must be numbers; {len(bad)} are not ({shown})")
    return numbers.to_numpy(dtype=float)


def _check_probabilities(p: np.ndarray, what: str) -> None:
    outside = np.flatnonzero((p < 0.0) | (p > 1.0))
    if len(outside):
        shown = ", ".join(f"row {i}: {float(p[i])!r}" for i in outside[:3])
        raise ValueError(f"{what} must be probabilities in [0, 1]; {len(outside)} are not ({shown})")


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    return t


def clean_scores(task: str, scores: Any) -> tuple[np.ndarray, int]:
    """The scores the estimate uses and how many were dropped (missing or NaN): rows = len(first)."""
    _check_task(task)
    values = _floats(scores, f"{task} scores")
    missing = np.isnan(values)
    kept = values[~missing]
    if task != "regression":
        _check_probabilities(kept, f"{task} scores")
    return kept, int(missing.sum())


# --- every metric on row weights -------------------------------------------------------------------------


def _groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order that sorts scores descending, and each sorted row's tie group (0 = highest score)."""
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]] if len(ordered) else np.zeros(0, dtype=bool)
    return order, np.cumsum(starts) - 1


def _curve_areas(pos: np.ndarray, neg: np.ndarray, order: np.ndarray, group: np.ndarray) -> tuple[float, float]:
    """ROC AUC and average precision of weighted positives and negatives, ties grouped as scikit-learn does."""
    total_pos, total_neg = float(pos.sum()), float(neg.sum())
    if len(order) == 0 or total_pos <= 0.0 or total_neg <= 0.0:
        return math.nan, math.nan
    n_groups = int(group[-1]) + 1
    p_g = np.bincount(group, weights=pos[order], minlength=n_groups)
    n_g = np.bincount(group, weights=neg[order], minlength=n_groups)
    tp = np.cumsum(p_g)  # positives at or above each cut
    fp = np.cumsum(n_g)
    above = tp - p_g
    auc = float(np.sum(n_g * (above + 0.5 * p_g)) / (total_pos * total_neg))
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
    ap = float(np.sum(p_g * precision) / total_pos)
    return auc, ap


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """A weighted sum without BLAS, whose threads crawl on a loaded machine (resamples 13x slower at 100k rows)."""
    return float(np.multiply(a, b).sum())


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else 0.0  # scikit-learn's zero_division=0


def _row_losses(score: np.ndarray) -> np.ndarray:
    """Per row, the log loss and Brier terms if it is positive and if negative: computed once per batch."""
    clipped = np.clip(score, _EPS, 1 - _EPS)
    return np.stack([-np.log(clipped), -np.log(1 - clipped), (1 - score) ** 2, score**2])


def _binary_metrics(
    names: list[str],
    pos: np.ndarray,
    neg: np.ndarray,
    called: np.ndarray,
    grouped: tuple[np.ndarray, np.ndarray],
    losses: np.ndarray,
) -> dict[str, float]:
    """Binary metrics where row i counts pos[i] as a positive and neg[i] as a negative; called = predicted 1."""
    tp, fp = _dot(pos, called), _dot(neg, called)
    total = float(pos.sum() + neg.sum())
    fn, tn = float(pos.sum()) - tp, float(neg.sum()) - fp
    if total <= 0:
        return {n: math.nan for n in names}
    out: dict[str, float] = {}
    if {"roc_auc", "pr_auc"} & set(names):
        auc, ap = _curve_areas(pos, neg, *grouped)
        out.update(roc_auc=auc, pr_auc=ap)
    calculators: dict[str, Callable[[], float]] = {
        "accuracy": lambda: (tp + tn) / total,
        "precision": lambda: _ratio(tp, tp + fp),
        "recall": lambda: _ratio(tp, tp + fn),
        "f1": lambda: _ratio(2 * tp, 2 * tp + fp + fn),
        "log_loss": lambda: (_dot(pos, losses[0]) + _dot(neg, losses[1])) / total,
        "brier": lambda: (_dot(pos, losses[2]) + _dot(neg, losses[3])) / total,
    }
    for name in names:
        if name not in out:
            out[name] = float(calculators[name]())
    return {n: out[n] for n in names}


def _multiclass_metrics(names: list[str], weight: np.ndarray, actual: np.ndarray, predicted: np.ndarray,
                        n_classes: int) -> dict[str, float]:  # fmt: skip
    """Accuracy and macro F1 over the classes present (in the actual or predicted rows) with weight > 0."""
    total = float(weight.sum())
    if total <= 0:
        return {n: math.nan for n in names}
    hit = actual == predicted
    out: dict[str, float] = {}
    if "accuracy" in names:
        out["accuracy"] = float(weight[hit].sum() / total)
    if "f1" in names:
        tp = np.bincount(actual[hit], weights=weight[hit], minlength=n_classes)
        in_actual = np.bincount(actual, weights=weight, minlength=n_classes)
        in_predicted = np.bincount(predicted, weights=weight, minlength=n_classes)
        present = (in_actual > 0) | (in_predicted > 0)
        f1 = 2 * tp[present] / (in_actual[present] + in_predicted[present])
        out["f1"] = float(f1.mean())
    return {n: out[n] for n in names}


def _regression_metrics(
    names: list[str], weight: np.ndarray, actual: np.ndarray, value: np.ndarray
) -> dict[str, float]:
    total = float(weight.sum())
    if total <= 0:
        return {n: math.nan for n in names}
    error = actual - value
    out: dict[str, float] = {}
    if "rmse" in names:
        out["rmse"] = math.sqrt(_dot(weight, error**2) / total)
    if "mae" in names:
        out["mae"] = _dot(weight, np.abs(error)) / total
    if "r2" in names:
        mean = _dot(weight, actual) / total
        ss_res, ss_tot = _dot(weight, error**2), _dot(weight, (actual - mean) ** 2)
        if ss_tot > 0:
            out["r2"] = 1.0 - ss_res / ss_tot
        else:  # scikit-learn's force_finite: a constant target is perfect when hit exactly, else 0
            out["r2"] = 1.0 if ss_res == 0 else 0.0
    return {n: out[n] for n in names}


# --- the estimate ------------------------------------------------------------------------------------------


def estimate(task: str, scores: np.ndarray, threshold: float, metrics: Iterable[str] | None = None) -> dict[str, float]:
    """Expected metrics of a batch from calibrated scores alone (CBPE). binary: scores are P(positive);
    multiclass: scores are the top class's probability (the predictions table keeps no other). Metrics not
    estimable for the task are left out.

    Missing scores are dropped (`clean_scores` says how many); an empty batch gives NaN for each metric, as does
    ROC AUC when the scores expect no positives or no negatives (all 0 or all 1)."""
    names = _selected(task, metrics, ESTIMABLE.get(task, ()))
    p, _ = clean_scores(task, scores)
    if not names:
        return {}
    if task == "multiclass":
        return {"accuracy": float(p.mean()) if len(p) else math.nan}
    t = _check_threshold(threshold)
    if len(p) == 0:
        return {n: math.nan for n in names}
    return _binary_metrics(names, p, 1.0 - p, (p >= t).astype(float), _groups(p), _row_losses(p))


# --- the realised metrics ----------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or array in a cell: not a label, but not missing either
        return False


def _label_text(value: Any) -> str | None:
    """A label as the predictions table writes it (text), so 1, 1.0, True, "1" and "True" are one class."""
    if _is_missing(value):
        return None
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return str(int(value)) if float(value).is_integer() else repr(float(value))
    text = str(value).strip()
    lowered = text.lower()
    if lowered in ("true", "false"):
        return "1" if lowered == "true" else "0"
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number.is_integer():
        return str(int(number))
    return text


def _texts(values: Any, rows: int, what: str) -> np.ndarray:
    """Each row's label text (None when missing), converting each distinct value once."""
    array = _column(values, rows, what)
    codes, uniques = pd.factorize(array, use_na_sentinel=True)
    texts = np.array([_label_text(u) for u in uniques] + [None], dtype=object)
    return texts[codes]  # code -1 (missing) picks the trailing None


def _binary_classes(actual: np.ndarray, predicted: np.ndarray, scores: np.ndarray, t: float) -> tuple[Any, Any]:
    """(positive, negative) label texts: the class `predicted` names at score >= t, the other below it."""
    named: dict[str, Any] = {}
    for side, rows in (("positive", scores >= t), ("negative", scores < t)):
        found = sorted({v for v in predicted[rows] if v is not None})
        if len(found) > 1:
            raise ValueError(
                f"predicted labels at score {'>=' if side == 'positive' else '<'} {t} are {found}: one class "
                "expected on each side of the threshold (were these rows scored at another threshold?)"
            )
        named[side] = found[0] if found else None
    positive, negative = named["positive"], named["negative"]
    if positive is not None and positive == negative:
        raise ValueError(f"predicted label {positive!r} appears on both sides of the threshold {t}")
    seen = sorted({v for v in actual if v is not None})
    if positive is None and negative is None:  # no predicted labels at all: by the scores' convention, 1 vs 0
        if set(seen) - {"0", "1"}:
            raise ValueError(f"actual labels {seen} and no predicted labels to tell which class is positive")
        return "1", "0"
    others = [v for v in seen if v not in (positive, negative)]
    if positive is not None and negative is not None and others:
        raise ValueError(
            f"actual labels {others} are neither the positive {positive!r} nor the negative {negative!r} class"
        )
    if len(others) > 1:
        raise ValueError(f"actual labels {seen}: a binary task has two classes, and {positive or negative!r} is one")
    if positive is None:
        positive = others[0] if others else None
    elif negative is None:
        negative = others[0] if others else None
    return positive, negative


def _interval(values: list[float], confidence: float) -> tuple[float, float]:
    finite = np.asarray([v for v in values if not math.isnan(v)])
    if len(finite) == 0:
        return math.nan, math.nan
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def realised(
    task: str,
    actual: np.ndarray,
    scores: np.ndarray,
    predicted: np.ndarray,
    threshold: float,
    metrics: Iterable[str] | None = None,
    *,
    confidence: float = 0.9,
    resamples: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Each metric on the labelled rows: {"value", "ci_low", "ci_high", "rows"} (percentile bootstrap over rows).
    binary: actual in {0,1} (or the class names; positive = the class that `predicted` names when score >=
    threshold), scores P(positive); multiclass: from the predicted class (accuracy, f1 macro); regression: scores
    are the values (rmse, mae, r2).

    Labels are compared as the predictions table stores them, as text (1, 1.0, "1", True are one class). Rows
    without an actual label, or (binary, regression) without a score, are left out; "rows" counts the rest."""
    _check_task(task)
    names = _selected(task, metrics, REALISABLE[task])
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if resamples < 0:
        raise ValueError(f"resamples must be >= 0, got {resamples!r}")
    score = _floats(scores, f"{task} scores")
    n = len(score)
    if task == "regression":
        truth = _floats(_column(actual, n, "actual"), "regression actual values")
        keep = ~np.isnan(truth) & ~np.isnan(score)
        truth, score = truth[keep], score[keep]

        def compute(w: np.ndarray) -> dict[str, float]:
            return _regression_metrics(names, w, truth, score)
    elif task == "binary":
        t = _check_threshold(threshold)
        truth_text = _texts(actual, n, "actual")
        predicted_text = _texts(predicted, n, "predicted")
        keep = (truth_text != None) & ~np.isnan(score)  # noqa: E711 (elementwise on an object array)
        truth_text, predicted_text, score = truth_text[keep], predicted_text[keep], score[keep]
        _check_probabilities(score, "binary scores")
        positive, _negative = _binary_classes(truth_text, predicted_text, score, t)
        y = (truth_text == positive).astype(float)
        called = np.where(predicted_text != None, predicted_text == positive, score >= t).astype(bool)  # noqa: E711
        grouped, losses, called = _groups(score), _row_losses(score), called.astype(float)

        def compute(w: np.ndarray) -> dict[str, float]:
            return _binary_metrics(names, w * y, w * (1.0 - y), called, grouped, losses)
    else:
        truth_text = _texts(actual, n, "actual")
        predicted_text = _texts(predicted, n, "predicted")
        keep = (truth_text != None) & (predicted_text != None)  # noqa: E711
        classes = sorted(set(truth_text[keep]) | set(predicted_text[keep]))
        index = {c: k for k, c in enumerate(classes)}
        truth = np.array([index[v] for v in truth_text[keep]], dtype=np.int64)
        guess = np.array([index[v] for v in predicted_text[keep]], dtype=np.int64)

        def compute(w: np.ndarray) -> dict[str, float]:
            return _multiclass_metrics(names, w, truth, guess, len(classes))

    rows = int(keep.sum())
    if not names:
        return {}
    point = compute(np.ones(rows))
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(resamples if rows else 0):
        weights = np.bincount(rng.integers(0, rows, rows), minlength=rows).astype(float)
        for name, value in compute(weights).items():
            draws[name].append(value)
    result = {}
    for name in names:
        low, high = _interval(draws[name], confidence) if not math.isnan(point[name]) else (math.nan, math.nan)
        result[name] = {"value": point[name], "ci_low": low, "ci_high": high, "rows": rows}
    return result


def _column(values: Any, rows: int, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=object).ravel()
    if len(array) != rows:
        raise ValueError(f"{what} has {len(array)} rows, the scores {rows}: give one value per row")
    return array
