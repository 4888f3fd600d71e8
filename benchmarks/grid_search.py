"""The project's hyper-parameter search against a plain scikit-learn GridSearchCV, side by side.

Three searches over the same pipeline (lifecycle.ml.features.build_preprocessor + LGBMClassifier), the same
grid (the pipeline YAML's `training.grid`), the same data and the same TimeSeriesSplit:

  plain-grid       GridSearchCV(n_jobs=None), LightGBM with its default threads: the baseline
  project-grid     lifecycle.ml.training.fit_search(strategy="grid", plan=thread_plan())
  project-halving  lifecycle.ml.training.fit_search(strategy="halving", plan=thread_plan()): the default

project-grid separates the thread plan's effect (plain-grid -> project-grid) from successive halving's
(project-grid -> project-halving). Each search runs in a fresh process (like an Airflow task, so the
joblib worker pool starts cold each time); only the `.fit` (refit of the best included) is timed. The
order rotates every round and the ratios are taken within a round, then the median over rounds.

Halving scores its last round on subsamples, so `best_score_` is not comparable across searches: every
chosen configuration is re-scored with the same full-data cross_val_score (same TimeSeriesSplit, LightGBM
on one thread for determinism), and its refit model is scored on the next `--holdout-days` days.

    .venv/bin/python benchmarks/grid_search.py             # 28 days x 1000 rows, 1 round
    .venv/bin/python benchmarks/grid_search.py --quick     # 14 days x 500 rows, 1 round
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PIPELINE = REPO / "include" / "pipelines" / "demo_churn.yaml"
METHODS = ("plain-grid", "project-grid", "project-halving")
BASELINE = "plain-grid"
TARGET = "project-halving"
MARKER = "@@GRID_SEARCH@@"


def load_config(path: Path) -> Any:
    from lifecycle.config.pipeline import load_pipeline

    return load_pipeline(path)


def make_data(days: int, holdout_days: int, rows: int, start: dt.date, out: Path) -> dict[str, Any]:
    """Demo activity joined with the account attributes, drift off; train days then the holdout days."""
    import pandas as pd

    from lifecycle.devtools.demo_data import accounts, activity

    frames = [activity(start + dt.timedelta(days=i), rows, drift_from=None) for i in range(days + holdout_days)]
    frame = pd.concat(frames, ignore_index=True).merge(accounts(), on="account_id", how="left")
    cut = pd.Timestamp(start + dt.timedelta(days=days))
    train, holdout = frame[frame["snapshot_date"] < cut], frame[frame["snapshot_date"] >= cut]
    out.mkdir(parents=True, exist_ok=True)
    train.to_parquet(out / "train.parquet", index=False)
    holdout.to_parquet(out / "holdout.parquet", index=False)
    return {
        "train_rows": len(train),
        "holdout_rows": len(holdout),
        "train_days": days,
        "holdout_days": holdout_days,
        "rows_per_day": rows,
        "train_positive_rate": round(float(train["churned"].mean()), 4),
        "holdout_positive_rate": round(float(holdout["churned"].mean()), 4),
        "start": start.isoformat(),
    }


def plain_pipeline(config: Any, frame: Any, params: dict[str, Any], threads: int | None = None) -> Any:
    """The project's pipeline with a stock LGBMClassifier (default n_jobs unless `threads` is given)."""
    import lightgbm as lgb
    from sklearn.pipeline import Pipeline

    from lifecycle.ml.features import build_preprocessor

    extra = {} if threads is None else {"n_jobs": threads}
    model = lgb.LGBMClassifier(random_state=config.training.random_state, verbose=-1, **extra, **params)
    return Pipeline([("features", build_preprocessor(config, frame)), ("model", model)])


def worker(method: str, pipeline_path: Path, data: Path) -> dict[str, Any]:
    """One search in this (fresh) process: fit it, time it, score its refit model on the holdout."""
    import numpy as np
    import pandas as pd
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import GridSearchCV, TimeSeriesSplit

    from lifecycle.ml.features import input_columns
    from lifecycle.ml.metrics import SCORERS
    from lifecycle.ml.training import fit_search, thread_plan

    config = load_config(pipeline_path)
    grid = config.training.grid
    train = pd.read_parquet(data / "train.parquet")
    holdout = pd.read_parquet(data / "holdout.parquet")
    columns = input_columns(config, train)
    plan = None
    load_before = os.getloadavg()[0]
    if method == BASELINE:
        started = time.perf_counter()
        ordered = train.sort_values(config.timestamp_column, kind="stable")
        search = GridSearchCV(
            plain_pipeline(config, ordered, {}),
            {f"model__{k}": v for k, v in grid.items()},
            scoring=SCORERS[(config.training.primary_metric, config.task)],
            cv=TimeSeriesSplit(n_splits=config.training.cv_folds),
        )
        search.fit(ordered[columns], ordered[config.target])
        seconds = time.perf_counter() - started
    else:
        plan = thread_plan()
        strategy = method.removeprefix("project-")
        started = time.perf_counter()
        search, _summary = fit_search(config, train, grid, strategy, plan)
        seconds = time.perf_counter() - started
    results = search.cv_results_
    proba = search.best_estimator_.predict_proba(holdout[columns])[:, 1]
    folds = config.training.cv_folds
    fit_s = np.asarray(results["mean_fit_time"]) * folds  # summed over folds, per candidate (and round)
    score_s = np.asarray(results["mean_score_time"]) * folds
    iters = np.asarray(results["iter"]) if "iter" in results else np.zeros(len(fit_s), dtype=int)
    rounds = [
        {
            "candidates": int((iters == i).sum()),
            "resources": int(np.asarray(results["n_resources"])[iters == i][0]) if "n_resources" in results else None,
            "fit_s": round(float(fit_s[iters == i].sum()), 2),
            "score_s": round(float(score_s[iters == i].sum()), 2),
        }
        for i in sorted(set(iters.tolist()))
    ]
    return {
        "method": method,
        "seconds": seconds,
        "load_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "refit_seconds": float(getattr(search, "refit_time_", float("nan"))),
        "fits": len(results["params"]) * config.training.cv_folds + 1,
        "rounds": rounds,
        "work_s": round(float(fit_s.sum() + score_s.sum()), 2),
        "plan": plan,
        "best_params": {k.removeprefix("model__"): v for k, v in search.best_params_.items()},
        "search_best_score": float(search.best_score_),
        "holdout_roc_auc": float(roc_auc_score(holdout[config.target], proba)),
    }


def run_worker(method: str, args: argparse.Namespace, data: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", method, "--pipeline", str(args.pipeline), "--data-dir", str(data)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=data)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARKER)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"{method} failed (exit {proc.returncode})")
    return json.loads(lines[-1][len(MARKER) :])


def fair_cv(config: Any, data: Path, params: dict[str, Any]) -> dict[str, float]:
    """Mean/std ROC AUC of one configuration on the full training data, the same way for every search."""
    import pandas as pd
    from sklearn.model_selection import TimeSeriesSplit, cross_val_score

    from lifecycle.ml.features import input_columns
    from lifecycle.ml.metrics import SCORERS

    train = pd.read_parquet(data / "train.parquet").sort_values(config.timestamp_column, kind="stable")
    columns = input_columns(config, train)
    scores = cross_val_score(
        plain_pipeline(config, train, params, threads=1),
        train[columns],
        train[config.target],
        scoring=SCORERS[(config.training.primary_metric, config.task)],
        cv=TimeSeriesSplit(n_splits=config.training.cv_folds),
    )
    return {"mean": float(scores.mean()), "std": float(scores.std()), "folds": [round(float(s), 5) for s in scores]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, default=DEFAULT_PIPELINE, help="pipeline YAML (grid, cv_folds)")
    parser.add_argument("--days", type=int, default=28, help="training days of demo data")
    parser.add_argument("--rows-per-day", type=int, default=1000)
    parser.add_argument("--holdout-days", type=int, default=7, help="days after training for the holdout AUC")
    parser.add_argument("--start", type=dt.date.fromisoformat, default=dt.date(2026, 1, 1))
    parser.add_argument("--rounds", type=int, default=1, help="times each search runs (order rotates)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    parser.add_argument("--target-speedup", type=float, default=3.0)
    parser.add_argument("--tolerance", type=float, default=0.005, help="CV AUC still counted as equal")
    parser.add_argument("--quick", action="store_true", help="14 days x 500 rows, one round")
    parser.add_argument("--out", type=Path, help="also write the JSON result to this file")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is not met")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.pipeline = args.pipeline.resolve()

    if args.worker:
        print(MARKER + json.dumps(worker(args.worker, args.pipeline, args.data_dir)))
        return 0
    if args.quick:
        args.days, args.rows_per_day, args.rounds = 14, 500, 1
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; choose from {METHODS}")

    from lifecycle.ml.training import thread_plan

    config = load_config(args.pipeline)
    tmp = Path(tempfile.mkdtemp(prefix="grid-search-bench-"))
    started = time.perf_counter()
    try:
        data = make_data(args.days, args.holdout_days, args.rows_per_day, args.start, tmp)
        grid = config.training.grid
        n_candidates = 1
        for values in grid.values():
            n_candidates *= len(values)
        print(
            f"data: {data['train_rows']} train rows ({args.days} d x {args.rows_per_day}), "
            f"{data['holdout_rows']} holdout rows ({args.holdout_days} d); positives {data['train_positive_rate']:.1%}"
        )
        print(f"grid ({n_candidates} candidates) from {args.pipeline.name}: {grid}")
        print(
            f"cv: TimeSeriesSplit({config.training.cv_folds}); cores: {os.cpu_count()}; thread_plan(): {thread_plan()}"
        )
        print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}\n")

        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        ratios: dict[str, list[float]] = {m: [] for m in methods}
        for r in range(args.rounds):
            order = methods[r % len(methods) :] + methods[: r % len(methods)]
            seconds = {}
            for method in order:
                result = run_worker(method, args, tmp)
                runs[method].append(result)
                seconds[method] = result["seconds"]
                print(
                    f"round {r + 1}/{args.rounds}  {method:<16} {result['seconds']:7.2f} s  "
                    f"load {result['load_1min'][0]:.1f}->{result['load_1min'][1]:.1f}  best {result['best_params']}"
                )
            if BASELINE in seconds:
                for method in methods:
                    ratios[method].append(seconds[BASELINE] / seconds[method])

        fair: dict[str, dict[str, float]] = {}
        for method in methods:
            for result in runs[method]:
                key = json.dumps(result["best_params"], sort_keys=True)
                if key not in fair:
                    fair[key] = fair_cv(config, tmp, result["best_params"])

        rows = []
        for method in methods:
            last = runs[method][-1]
            times = [r["seconds"] for r in runs[method]]
            picks = {json.dumps(r["best_params"], sort_keys=True) for r in runs[method]}
            key = json.dumps(last["best_params"], sort_keys=True)
            rows.append(
                {
                    "method": method,
                    "seconds_median": round(statistics.median(times), 2),
                    "seconds": [round(t, 2) for t in times],
                    "load_1min": [r["load_1min"] for r in runs[method]],
                    "speedup_vs_plain": round(statistics.median(ratios[method]), 2) if ratios[method] else None,
                    "speedups": [round(x, 2) for x in ratios[method]],
                    "fits": last["fits"],
                    "refit_seconds": round(last["refit_seconds"], 2),
                    "rounds": last["rounds"],
                    "work_s": last["work_s"],
                    "plan": last["plan"],
                    "best_params": last["best_params"],
                    "same_pick_every_round": len(picks) == 1,
                    "search_best_score": round(last["search_best_score"], 5),
                    "fair_cv_roc_auc": round(fair[key]["mean"], 5),
                    "fair_cv_std": round(fair[key]["std"], 5),
                    "fair_cv_folds": fair[key]["folds"],
                    "holdout_roc_auc": round(last["holdout_roc_auc"], 5),
                }
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    by = {row["method"]: row for row in rows}
    verdict: dict[str, Any] = {"target_speedup": args.target_speedup, "tolerance": args.tolerance}
    if BASELINE in by and TARGET in by:
        base, target = by[BASELINE], by[TARGET]
        delta = target["fair_cv_roc_auc"] - base["fair_cv_roc_auc"]
        fast = target["speedup_vs_plain"] >= args.target_speedup
        score = "better" if delta > args.tolerance else ("equal" if delta >= -args.tolerance else "worse")
        verdict.update(
            {
                "speedup": target["speedup_vs_plain"],
                "fair_cv_delta": round(delta, 5),
                "holdout_delta": round(target["holdout_roc_auc"] - base["holdout_roc_auc"], 5),
                "score": score,
                "met": bool(fast and score != "worse"),
            }
        )

    print(f"\n{'search':<16} {'wall s':>7} {'x plain':>8} {'fits':>5} {'refit s':>7} {'search CV':>9} "
          f"{'fair CV':>8} {'+-':>6} {'holdout':>8}  best params")  # fmt: skip
    print("-" * 120)
    for row in rows:
        speed = f"{row['speedup_vs_plain']:.2f}" if row["speedup_vs_plain"] is not None else "-"
        params = ", ".join(f"{k}={v}" for k, v in row["best_params"].items())
        print(
            f"{row['method']:<16} {row['seconds_median']:>7.2f} {speed:>8} {row['fits']:>5} "
            f"{row['refit_seconds']:>7.2f} "
            f"{row['search_best_score']:>9.4f} {row['fair_cv_roc_auc']:>8.4f} {row['fair_cv_std']:>6.3f} "
            f"{row['holdout_roc_auc']:>8.4f}  {params}{'' if row['same_pick_every_round'] else ' (pick varied)'}"
        )
    print(
        "\nwall s: median over rounds; x plain: median of per-round ratios (plain-grid s / this s), same round."
        "\nsearch CV: the search's own best_score_ (halving: last round, subsampled); fair CV: the pick re-scored"
        "\nwith the same full-data cross_val_score; holdout: ROC AUC of the refit model on the next days."
    )
    print(
        "\nwork: fit + score seconds summed over all CV fits (from cv_results_), i.e. busy time in the workers;"
        "\nits ratio to wall s shows how well the cores were used (at most 2 on this machine)."
    )
    for row in rows:
        busy = row["work_s"] / row["seconds_median"] if row["seconds_median"] else float("nan")
        detail = "; ".join(
            (f"{x['candidates']} cand @ {x['resources']} rows: " if x["resources"] else f"{x['candidates']} cand: ")
            + f"fit {x['fit_s']:.1f} s + score {x['score_s']:.1f} s"
            for x in row["rounds"]
        )
        print(f"  {row['method']:<16} work {row['work_s']:6.1f} s = {busy:.2f} x wall   [{detail}]")
    if "met" in verdict:
        print(
            f"\nTarget: {TARGET} >= {args.target_speedup:.1f}x faster than {BASELINE} at equal-or-better fair CV AUC "
            f"(equal = within {args.tolerance}).\n  speed-up {verdict['speedup']:.2f}x; fair CV delta "
            f"{verdict['fair_cv_delta']:+.4f} ({verdict['score']}); holdout delta {verdict['holdout_delta']:+.4f}"
            f"\n  => {'MET' if verdict['met'] else 'NOT MET'}"
        )
    summary = {
        "benchmark": "grid_search",
        "data": data,
        "grid": grid,
        "cv_folds": config.training.cv_folds,
        "cores": os.cpu_count(),
        "rounds": args.rounds,
        "wall_s": round(time.perf_counter() - started, 1),
        "results": rows,
        "verdict": verdict,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, separators=(",", ":")))
    return 1 if args.check and not verdict.get("met") else 0


if __name__ == "__main__":
    sys.exit(main())
