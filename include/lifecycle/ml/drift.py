"""Drift: a reference profile computed once at training, and a one-pass check of a batch against it.

At production batch sizes every p-value is tiny, so drift is decided on effect sizes (PSI for numeric
features and predictions, Jensen-Shannon distance for categorical ones); KS and chi-square statistics
and p-values are reported as context only.

A fixed effect-size threshold still cries wolf where sampling noise alone is large (many levels, small
batches), so each statistic is also held against its noise floor: a high quantile of the same statistic
between two samples drawn from the reference, one of the batch's size and one of the reference's.
Columns that move by design (`expected_to_move`) are measured and reported but never decide the verdict.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

MISSING = "__missing__"
SAMPLE = 2000
EPS = 1e-4
NOISE_DRAWS = 1000  # multinomial draws per noise floor: O(bins) each, whatever the batch size


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
        "count": int(len(present)),
        "mean": float(present.mean()) if len(present) else None,
        "sample": [round(float(v), 6) for v in sample],
    }


def categorical_profile(values: pd.Series) -> dict[str, Any]:
    filled = values.astype(object).where(values.notna(), MISSING).astype(str)
    frequencies = {str(k): float(v) for k, v in filled.value_counts(normalize=True).items()}
    return {"frequencies": frequencies, "count": int(len(filled))}


def reference_profile(
    frame: pd.DataFrame, numeric: list[str], categorical: list[str], days: pd.Series | None = None
) -> dict[str, Any]:
    """What a drift check compares against, computed once from the champion's training split.

    With `days` (each row's calendar day), every profile also keeps how far each day of the reference
    stands from the other days: real data moves from day to day (weather, weekdays, promotions) more than
    independent rows would, and a drift check must not call an ordinary day drift.
    """
    profiles = {
        "rows": int(len(frame)),
        "numeric": {c: numeric_profile(frame[c]) for c in numeric if c in frame},
        "categorical": {c: categorical_profile(frame[c]) for c in categorical if c in frame},
    }
    if days is not None:
        for column, profile in profiles["numeric"].items():
            add_day_to_day(profile, frame[column], days)
        for column, profile in profiles["categorical"].items():
            add_day_to_day(profile, frame[column], days)
    return profiles


MIN_DAYS = 5  # fewer days than this say nothing about day-to-day movement


def add_day_to_day(profile: dict[str, Any], values: pd.Series, days: pd.Series) -> dict[str, Any]:
    """Record in `profile["daily"]` the statistic of each day against all the other days of the reference."""
    day = pd.Series(np.asarray(days)).reset_index(drop=True)
    values = values.reset_index(drop=True)
    if day.nunique() < MIN_DAYS:
        return profile
    if "edges" in profile:  # numeric: PSI over the reference's bins, missing values left out as in a check
        numbers = pd.to_numeric(values, errors="coerce")
        present = numbers.notna().to_numpy()
        cells = np.searchsorted(profile["edges"], numbers[present].to_numpy(dtype=float), side="right")
        width, statistic, day = len(profile["edges"]) + 1, _psi, day[present].reset_index(drop=True)
    else:  # categorical: Jensen-Shannon over the categories, missing as its own category
        filled = values.astype(object).where(values.notna(), MISSING).astype(str)
        codes, uniques = pd.factorize(filled)
        cells, width, statistic = codes, len(uniques), _js
    day_codes, _ = pd.factorize(day)
    counts = np.zeros((day_codes.max() + 1, width))
    np.add.at(counts, (day_codes, cells), 1)
    total = counts.sum(axis=0)
    rest = total - counts
    with np.errstate(invalid="ignore", divide="ignore"):
        current = counts / counts.sum(axis=1, keepdims=True)
        others = rest / rest.sum(axis=1, keepdims=True)
    keep = np.isfinite(current).all(axis=1) & np.isfinite(others).all(axis=1)
    profile["daily"] = [round(float(v), 6) for v in statistic(others[keep], current[keep])]
    return profile


def day_floor(profile: dict[str, Any], quantile: float) -> float:
    """The `quantile` of the reference's own day-to-day movement (0 when it was not recorded)."""
    daily = profile.get("daily") or []
    if len(daily) < MIN_DAYS:
        return 0.0
    # Too few days to estimate so high a quantile: the largest day seen is the honest bound.
    return float(max(daily)) if len(daily) * (1.0 - quantile) < 1.0 else float(np.quantile(daily, quantile))


def _psi(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    ref = np.clip(np.asarray(reference, dtype=float), EPS, None)
    cur = np.clip(np.asarray(current, dtype=float), EPS, None)
    return np.sum((cur - ref) * np.log(cur / ref), axis=-1)


def _js(reference: np.ndarray, current: np.ndarray) -> np.ndarray:
    from scipy.spatial.distance import jensenshannon

    return jensenshannon(reference, current, base=2, axis=-1)


def psi(reference: list[float], current: list[float]) -> float:
    """Population stability index over the same bins."""
    return float(_psi(np.asarray(reference), np.asarray(current)))


def noise_floor(
    name: str,
    fractions: list[float],
    n: int,
    reference_count: int | None,
    quantile: float,
    statistic: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> float:
    """The `quantile` of `statistic` when nothing drifted: reference vs a batch of `n` drawn from it.

    Each draw also resamples the reference at its own size when that is known: a reference estimated
    from 20,000 rows is itself noisy, and at large batches that noise dominates. Seeded from the name and
    `n`, so a rerun of a check gives the same floor.
    """
    p = np.clip(np.asarray(fractions, dtype=float), 0.0, None)
    if n <= 0 or p.sum() <= 0:
        return 0.0
    p = p / p.sum()
    rng = np.random.default_rng([zlib.crc32(name.encode()), n])
    current = rng.multinomial(n, p, size=NOISE_DRAWS) / n
    if reference_count:
        reference = rng.multinomial(reference_count, p, size=NOISE_DRAWS) / reference_count
    else:
        reference = np.broadcast_to(p, current.shape)
    return float(np.quantile(statistic(reference, current), quantile))


def _reference_count(profile: dict[str, Any], rows: int | None) -> int | None:
    """Rows behind a profile; references written before "count" existed fall back to the frame's rows."""
    if "count" in profile:
        return int(profile["count"])
    return None if rows is None else round(rows * (1.0 - profile.get("missing", 0.0)))


def _decide(value: float, threshold: float, floor: float, daily: float = 0.0) -> dict[str, Any]:
    effective = max(threshold, floor, daily)
    return {"value": value, "threshold": threshold, "noise_floor": floor, "day_floor": daily,
            "effective_threshold": effective, "drifted": bool(value >= effective)}  # fmt: skip


def _numeric_drift(
    name: str, profile: dict[str, Any], values: pd.Series, threshold: float, quantile: float, rows: int | None
) -> dict[str, Any]:
    from scipy import stats

    present = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    current = _fractions(present, profile["edges"])
    value = psi(profile["fractions"], current)
    floor = noise_floor(name, profile["fractions"], len(present), _reference_count(profile, rows), quantile, _psi)
    ks = stats.ks_2samp(profile["sample"], present) if len(present) and profile["sample"] else None
    return {
        "kind": "numeric",
        "metric": "psi",
        **_decide(value, threshold, floor, day_floor(profile, quantile)),
        "count": int(len(present)),
        "statistic": float(ks.statistic) if ks else None,
        "p_value": float(ks.pvalue) if ks else None,
        "test": "ks",
        "reference_fractions": profile["fractions"],
        "current_fractions": current,
        "edges": profile["edges"],
        "missing_reference": profile["missing"],
        "missing_current": float(values.isna().mean()),
    }


def _categorical_drift(
    name: str, profile: dict[str, Any], values: pd.Series, threshold: float, quantile: float, rows: int | None
) -> dict[str, Any]:
    from scipy import stats

    current = categorical_profile(values)["frequencies"]
    categories = sorted(set(profile["frequencies"]) | set(current))
    ref = np.array([profile["frequencies"].get(c, 0.0) for c in categories])
    cur = np.array([current.get(c, 0.0) for c in categories])
    distance = float(_js(ref, cur))
    floor = noise_floor(name, ref.tolist(), len(values), _reference_count(profile, rows), quantile, _js)
    observed = cur * len(values)
    expected = np.clip(ref, EPS, None)
    expected = expected / expected.sum() * observed.sum()
    chi = stats.chisquare(observed, expected)
    return {
        "kind": "categorical",
        "metric": "jensen_shannon",
        **_decide(distance, threshold, floor, day_floor(profile, quantile)),
        "count": int(len(values)),
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
    """Compare one batch with the reference; return per-feature results and the dataset verdict.

    Features in `thresholds.expected_to_move` get their own `drifted` flag but are left out of
    `drifted_features`, `drifted_share` and the verdict: a month column moves every month by design.
    """
    quantile = getattr(thresholds, "noise_quantile", 0.99)
    expected = set(getattr(thresholds, "expected_to_move", None) or ())
    rows = reference.get("rows")
    features: dict[str, dict[str, Any]] = {}
    for column, profile in reference["numeric"].items():
        if column in frame:
            features[column] = _numeric_drift(column, profile, frame[column], thresholds.psi_threshold, quantile, rows)
    for column, profile in reference["categorical"].items():
        if column in frame:
            features[column] = _categorical_drift(
                column, profile, frame[column], thresholds.js_threshold, quantile, rows
            )
    for column, result in features.items():
        result["expected_to_move"] = column in expected
    counted = [c for c in features if c not in expected]
    drifted = sorted(c for c in counted if features[c]["drifted"])
    share = len(drifted) / max(1, len(counted))
    prediction = None
    if scores is not None and reference.get("prediction"):
        prediction = _numeric_drift(
            "__prediction__", reference["prediction"], pd.Series(scores), thresholds.prediction_psi_threshold,
            quantile, None,
        )  # fmt: skip
        prediction["kind"] = "prediction"
    reasons = []
    if share >= thresholds.dataset_share:
        reasons.append(f"{len(drifted)} of {len(counted)} features drifted ({', '.join(drifted)})")
    if prediction and prediction["drifted"]:
        reasons.append(f"prediction PSI {prediction['value']:.3f} ≥ {prediction['effective_threshold']:.3g}")
    if performance and performance["drop"] > thresholds.max_performance_drop:
        if performance.get("relative"):
            moved = f"rose {performance['drop']:.1%} above"
        elif performance.get("higher_is_better", True):
            moved = f"fell {performance['drop']:.3f} below"
        else:
            moved = f"rose {performance['drop']:.3f} above"
        reasons.append(
            f"{performance['metric']} {moved} the holdout's {performance['holdout']:.3f} "
            f"on {performance['rows']} labelled rows"
        )
    return {
        "rows": int(len(frame)),
        "features": features,
        "drifted_features": drifted,
        "drifted_share": share,
        "expected_to_move": sorted(c for c in features if c in expected),
        "noise_quantile": quantile,
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
