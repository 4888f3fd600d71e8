"""Drift: a reference profile computed once at training, and a one-pass check of a batch against it.

At production batch sizes every p-value is tiny, so drift is decided on effect sizes (PSI for numeric
features and predictions, Jensen-Shannon distance for categorical ones); KS and chi-square statistics
and p-values are reported as context only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

MISSING = "__missing__"
SAMPLE = 2000
EPS = 1e-4


def _edges(values: np.ndarray, bins: int) -> list[float]:
    inner = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    return [float(e) for e in inner]


def _fractions(values: np.ndarray, edges: list[float]) -> list[float]:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return (counts / max(1, counts.sum())).tolist()


def numeric_profile(values: pd.Series, bins: int = 10, seed: int = 0) -> dict[str, Any]:
    present = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    edges = _edges(present, bins) if len(present) else []
    rng = np.random.default_rng(seed)
    sample = rng.choice(present, size=min(SAMPLE, len(present)), replace=False) if len(present) else present
    return {
        "edges": edges,
        "fractions": _fractions(present, edges),
        "missing": float(values.isna().mean()),
        "mean": float(present.mean()) if len(present) else None,
        "sample": [round(float(v), 6) for v in sample],
    }


def categorical_profile(values: pd.Series) -> dict[str, Any]:
    filled = values.astype(object).where(values.notna(), MISSING).astype(str)
    return {"frequencies": {str(k): float(v) for k, v in filled.value_counts(normalize=True).items()}}


def reference_profile(frame: pd.DataFrame, numeric: list[str], categorical: list[str]) -> dict[str, Any]:
    """What a drift check compares against, computed once from the champion's training split."""
    return {
        "rows": int(len(frame)),
        "numeric": {c: numeric_profile(frame[c]) for c in numeric if c in frame},
        "categorical": {c: categorical_profile(frame[c]) for c in categorical if c in frame},
    }


def psi(reference: list[float], current: list[float]) -> float:
    """Population stability index over the same bins."""
    ref = np.clip(np.asarray(reference, dtype=float), EPS, None)
    cur = np.clip(np.asarray(current, dtype=float), EPS, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _numeric_drift(profile: dict[str, Any], values: pd.Series, threshold: float) -> dict[str, Any]:
    from scipy import stats

    present = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    current = _fractions(present, profile["edges"])
    value = psi(profile["fractions"], current)
    ks = stats.ks_2samp(profile["sample"], present) if len(present) and profile["sample"] else None
    return {
        "kind": "numeric",
        "metric": "psi",
        "value": value,
        "threshold": threshold,
        "drifted": value >= threshold,
        "statistic": float(ks.statistic) if ks else None,
        "p_value": float(ks.pvalue) if ks else None,
        "test": "ks",
        "reference_fractions": profile["fractions"],
        "current_fractions": current,
        "edges": profile["edges"],
        "missing_reference": profile["missing"],
        "missing_current": float(values.isna().mean()),
    }


def _categorical_drift(profile: dict[str, Any], values: pd.Series, threshold: float) -> dict[str, Any]:
    from scipy import stats
    from scipy.spatial.distance import jensenshannon

    current = categorical_profile(values)["frequencies"]
    categories = sorted(set(profile["frequencies"]) | set(current))
    ref = np.array([profile["frequencies"].get(c, 0.0) for c in categories])
    cur = np.array([current.get(c, 0.0) for c in categories])
    distance = float(jensenshannon(ref, cur, base=2))
    observed = cur * len(values)
    expected = np.clip(ref, EPS, None)
    expected = expected / expected.sum() * observed.sum()
    chi = stats.chisquare(observed, expected)
    return {
        "kind": "categorical",
        "metric": "jensen_shannon",
        "value": distance,
        "threshold": threshold,
        "drifted": distance >= threshold,
        "statistic": float(chi.statistic),
        "p_value": float(chi.pvalue),
        "test": "chi_square",
        "categories": categories,
        "reference_fractions": ref.tolist(),
        "current_fractions": cur.tolist(),
    }


def check(
    reference: dict[str, Any],
    frame: pd.DataFrame,
    scores: np.ndarray | None,
    thresholds: Any,
    performance: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Compare one batch with the reference; return per-feature results and the dataset verdict."""
    features: dict[str, dict[str, Any]] = {}
    for column, profile in reference["numeric"].items():
        if column in frame:
            features[column] = _numeric_drift(profile, frame[column], thresholds.psi_threshold)
    for column, profile in reference["categorical"].items():
        if column in frame:
            features[column] = _categorical_drift(profile, frame[column], thresholds.js_threshold)
    drifted = sorted(c for c, r in features.items() if r["drifted"])
    share = len(drifted) / max(1, len(features))
    prediction = None
    if scores is not None and reference.get("prediction"):
        prediction = _numeric_drift(reference["prediction"], pd.Series(scores), thresholds.prediction_psi_threshold)
        prediction["kind"] = "prediction"
    reasons = []
    if share >= thresholds.dataset_share:
        reasons.append(f"{len(drifted)} of {len(features)} features drifted ({', '.join(drifted)})")
    if prediction and prediction["drifted"]:
        reasons.append(f"prediction PSI {prediction['value']:.3f} ≥ {thresholds.prediction_psi_threshold}")
    if performance and performance["drop"] > thresholds.max_performance_drop:
        reasons.append(
            f"{performance['metric']} fell {performance['drop']:.3f} below the holdout's "
            f"{performance['holdout']:.3f} on {performance['rows']} labelled rows"
        )
    return {
        "rows": int(len(frame)),
        "features": features,
        "drifted_features": drifted,
        "drifted_share": share,
        "prediction": prediction,
        "performance": performance,
        "dataset_drift": bool(reasons),
        "reason": "; ".join(reasons) if reasons else "no drift",
    }


def should_retrain(history: list[bool], last_request_days_ago: int | None, policy: Any) -> tuple[bool, str]:
    """Retrain when drift was seen in `min_drifted` of the last `window` batches, outside the cool-down.

    `history` is newest last and includes the current batch.
    """
    recent = history[-policy.window :]
    hits = sum(recent)
    if not recent or not recent[-1]:
        return False, "no drift in this batch"
    if hits < policy.min_drifted:
        return False, f"drift in {hits} of the last {len(recent)} batches; the policy needs {policy.min_drifted}"
    if last_request_days_ago is not None and last_request_days_ago < policy.cooldown_days:
        return False, f"cool-down: a retrain was requested {last_request_days_ago} days ago (< {policy.cooldown_days})"
    return True, f"drift in {hits} of the last {len(recent)} batches"
