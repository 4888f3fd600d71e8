"""Label-free performance estimation (CBPE, lifecycle.ml.estimation) against the realised metrics, across a drift.

On the demo generator (lifecycle.devtools.demo_data: covariate drift in several columns and a concept drift, the support
tickets' effect on churn flipping, from --drift-from): a LightGBM model in the project's own feature pipeline
(lifecycle.ml.features.build_preprocessor + lifecycle.ml.training.lightgbm_estimator on one thread, the middle of the
demo's grid) is trained on the first 30 of the 35 days before the first scored day and calibrated (isotonic,
CalibratedClassifierCV(FrozenEstimator(model))) on the last 5. It then scores 14 daily batches, 7 before the drift
date and 7 from it. Per batch: the realised ROC AUC (with its 90% bootstrap interval) and accuracy at the demo's
threshold, the CBPE estimates from the scores alone, and their absolute errors; for the calibrated model, the
same model uncalibrated, and both again with class_weight="balanced" (a common setting for a rare positive class,
which makes the raw scores far from probabilities). The summary gives, for every estimable metric, the mean
absolute error before and from the drift date, the realised interval's half-width (the noise a single batch's
realised value carries, which bounds how small a per-batch error can look), and whether the estimate sees the fall.

    .venv/bin/python benchmarks/performance_estimation.py [--rows 1000] [--drift-from 2026-03-10] [--out FILE]

Prints a table, then on its last line one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PIPELINE = REPO / "include" / "pipelines" / "demo_churn.yaml"
PARAMS = {"num_leaves": 15, "learning_rate": 0.05, "n_estimators": 200, "min_child_samples": 50}
WINDOW_DAYS, CALIBRATION_DAYS, BEFORE, AFTER = 35, 5, 7, 7


def days_frame(days: list[dt.date], rows: int, drift_from: dt.date) -> Any:
    import pandas as pd

    from lifecycle.devtools.demo_data import accounts, activity

    frames = [activity(day, rows, drift_from) for day in days]
    return pd.concat(frames, ignore_index=True).merge(accounts(), on="account_id", how="left")


def fit_models(config: Any, train: Any, calibration: Any) -> dict[str, Any]:
    """The pipeline and its isotonic calibration on the later days (the model itself frozen); and the same with
    class_weight="balanced", a common choice for a rare positive class, which distorts the probabilities."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator
    from sklearn.pipeline import Pipeline

    from lifecycle.ml.features import build_preprocessor, input_columns
    from lifecycle.ml.training import lightgbm_estimator

    columns = input_columns(config, train)
    models: dict[str, Any] = {"columns": columns}
    for suffix, weight in (("", None), (" balanced", "balanced")):
        model = Pipeline(
            [("features", build_preprocessor(config, train)), ("model", lightgbm_estimator(config, threads=1))]
        )
        model.set_params(**{f"model__{k}": v for k, v in PARAMS.items()}, model__class_weight=weight)
        model.fit(train[columns], train[config.target])
        calibrated = CalibratedClassifierCV(FrozenEstimator(model), method="isotonic")
        calibrated.fit(calibration[columns], calibration[config.target])
        models[f"uncalibrated{suffix}"], models[f"calibrated{suffix}"] = model, calibrated
    return models


def batch_row(model: Any, columns: list[str], frame: Any, target: str, threshold: float) -> dict[str, float]:
    """Realised (as the performance DAG computes it, from the table's text labels) and estimated, one batch."""
    import numpy as np

    from lifecycle.ml.estimation import ESTIMABLE, estimate, realised

    score = model.predict_proba(frame[columns])[:, 1]
    classes = np.asarray(model.classes_)
    label = np.where(score >= threshold, str(classes[1]), str(classes[0])).astype(object)  # lifecycle.ml.scoring
    metrics = list(ESTIMABLE["binary"])
    real = realised("binary", frame[target].to_numpy(), score, label, threshold, metrics, resamples=200, seed=0)
    est = estimate("binary", score, threshold, metrics)
    row: dict[str, float] = {"positives": float(frame[target].mean()), "mean_score": float(score.mean())}
    for name in metrics:
        row[f"{name}_realised"] = real[name]["value"]
        row[f"{name}_ci_low"], row[f"{name}_ci_high"] = real[name]["ci_low"], real[name]["ci_high"]
        row[f"{name}_estimated"] = est[name]
        row[f"{name}_error"] = abs(est[name] - real[name]["value"])
    return row


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    from lifecycle.ml.estimation import ESTIMABLE

    out: dict[str, Any] = {}
    for phase in ("before", "after"):
        part = [r for r in rows if r["phase"] == phase]
        for name in ESTIMABLE["binary"]:
            out[f"{name}_mae_{phase}"] = float(np.mean([r[f"{name}_error"] for r in part]))
            out[f"{name}_realised_{phase}"] = float(np.mean([r[f"{name}_realised"] for r in part]))
            out[f"{name}_estimated_{phase}"] = float(np.mean([r[f"{name}_estimated"] for r in part]))
            half = [(r[f"{name}_ci_high"] - r[f"{name}_ci_low"]) / 2 for r in part]
            out[f"{name}_ci_half_width_{phase}"] = float(np.mean(half))
    for name in ESTIMABLE["binary"]:
        out[f"{name}_realised_drop"] = out[f"{name}_realised_before"] - out[f"{name}_realised_after"]
        out[f"{name}_estimated_drop"] = out[f"{name}_estimated_before"] - out[f"{name}_estimated_after"]
    return out


def print_table(kind: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{kind} model: per daily batch (threshold {rows[0]['threshold']})")
    print(
        f"{'day':<10} {'phase':<6} {'pos':>5} {'mean p':>6} | {'AUC real':>8} {'90% CI':>13} {'AUC est':>7} "
        f"{'|err|':>6} | {'acc real':>8} {'acc est':>7} {'|err|':>6}"
    )
    for r in rows:
        ci = f"[{r['roc_auc_ci_low']:.3f},{r['roc_auc_ci_high']:.3f}]"
        print(
            f"{r['day']:<10} {r['phase']:<6} {r['positives']:>5.3f} {r['mean_score']:>6.3f} | "
            f"{r['roc_auc_realised']:>8.4f} {ci:>13} {r['roc_auc_estimated']:>7.4f} {r['roc_auc_error']:>6.4f} | "
            f"{r['accuracy_realised']:>8.4f} {r['accuracy_estimated']:>7.4f} {r['accuracy_error']:>6.4f}"
        )


def print_summary(kind: str, s: dict[str, Any], drift_from: dt.date) -> None:
    from lifecycle.ml.estimation import ESTIMABLE

    print(f"\n{kind} model: summary (before = the 7 days before {drift_from}, after = the 7 from it)")
    print(f"{'metric':<9} {'MAE before':>10} {'MAE after':>9} {'CI half-width':>13} | {'realised b→a':>15} "
          f"{'estimated b→a':>15} {'fall real':>9} {'fall est':>8}")  # fmt: skip
    for name in ESTIMABLE["binary"]:
        print(
            f"{name:<9} {s[f'{name}_mae_before']:>10.4f} {s[f'{name}_mae_after']:>9.4f} "
            f"{s[f'{name}_ci_half_width_before']:>13.4f} | "
            f"{s[f'{name}_realised_before']:>7.4f}→{s[f'{name}_realised_after']:.4f} "
            f"{s[f'{name}_estimated_before']:>7.4f}→{s[f'{name}_estimated_after']:.4f} "
            f"{s[f'{name}_realised_drop']:>+9.4f} {s[f'{name}_estimated_drop']:>+8.4f}"
        )
    for name in ("roc_auc", "accuracy"):
        real, est = s[f"{name}_realised_drop"], s[f"{name}_estimated_drop"]
        print(f"{name}: realised fell {real:+.4f} from the drift date, the estimate {est:+.4f}", end="")
        print(f" ({est / real:.0%} of the fall)" if abs(real) > 0.01 else " (no real fall to see)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="rows per daily batch (and per training day)")
    parser.add_argument("--drift-from", type=dt.date.fromisoformat, default=dt.date(2026, 3, 10))
    parser.add_argument("--out", type=Path, help="also write the JSON summary here")
    args = parser.parse_args()
    os.environ.setdefault("LIFECYCLE_SEARCH_JOBS", "1")

    from lifecycle.config.pipeline import load_pipeline

    started = time.perf_counter()
    config = load_pipeline(PIPELINE)
    threshold = config.prediction.threshold
    first_scored = args.drift_from - dt.timedelta(days=BEFORE)
    window = [first_scored - dt.timedelta(days=WINDOW_DAYS - i) for i in range(WINDOW_DAYS)]
    scored = [first_scored + dt.timedelta(days=i) for i in range(BEFORE + AFTER)]
    frame = days_frame(window, args.rows, args.drift_from)
    cut = window[-CALIBRATION_DAYS]
    stamp = frame[config.timestamp_column].dt.date
    train, calibration = frame[stamp < cut], frame[stamp >= cut]
    models = fit_models(config, train, calibration)
    fitted = time.perf_counter() - started
    print(
        f"demo_churn, drift from {args.drift_from}: trained on {window[0]}..{cut - dt.timedelta(days=1)} "
        f"({len(train)} rows), calibrated (isotonic) on {cut}..{window[-1]} ({len(calibration)} rows), "
        f"scoring {scored[0]}..{scored[-1]} at {args.rows} rows a day; LightGBM {PARAMS}"
    )

    results: dict[str, Any] = {}
    batches = {day: days_frame([day], args.rows, args.drift_from) for day in scored}
    kinds = ("calibrated", "uncalibrated", "calibrated balanced", "uncalibrated balanced")
    for kind in kinds:
        rows = []
        for day in scored:
            row = batch_row(models[kind], models["columns"], batches[day], config.target, threshold)
            rows.append({"day": day.isoformat(), "phase": "after" if day >= args.drift_from else "before",
                         "threshold": threshold, **row})  # fmt: skip
        print_table(kind, rows)
        results[kind] = {"summary": summarise(rows), "batches": rows}
    for kind in kinds:
        print_summary(kind, results[kind]["summary"], args.drift_from)
    seconds = time.perf_counter() - started
    print(f"\n{seconds:.1f} s in all ({fitted:.1f} s generating data and fitting)")
    report = {
        "benchmark": "performance_estimation",
        "drift_from": args.drift_from.isoformat(),
        "rows_per_batch": args.rows,
        "threshold": threshold,
        "params": PARAMS,
        "seconds": round(seconds, 1),
        **{kind.replace(" ", "_"): {k: round(v, 5) for k, v in results[kind]["summary"].items()} for kind in results},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({**report, "batches": {k: v["batches"] for k, v in results.items()}}, indent=2))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
