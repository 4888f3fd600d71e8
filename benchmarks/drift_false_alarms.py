"""Drift false alarms: the fixed effect-size thresholds against the noise-aware rule, side by side in one run.

Three parts, each from the same lifecycle.ml.drift.check calls (the fixed rule is `value >= threshold`, what the
check decided before the noise floor; the noise-aware rule is the check's own `drifted`):

  stationary  a generator where nothing drifts: a 100-level Zipf categorical, a 3-level one, a continuous, a
              few-level integer, a rare-count and a skewed numeric. Reference of `--reference-rows` rows, then
              `--batches` batches at each of 200, 1,000 and 10,000 rows: the per-feature false-alarm rate.
  injected    lifecycle.devtools.demo_data with drift_from: the features each rule flags on days before and after it.
  cost        one `--big-rows` x 30 batch (20 numeric, 10 categorical columns up to 100 levels): seconds per
              check with the noise floor, without it (noise_floor patched to 0), and inside noise_floor itself.

    .venv/bin/python benchmarks/drift_false_alarms.py
    .venv/bin/python benchmarks/drift_false_alarms.py --batches 40 --big-rows 200000 --out benchmarks/results/drift.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))

from lifecycle.config.pipeline import Drift, load_pipeline  # noqa: E402
from lifecycle.devtools import demo_data  # noqa: E402
from lifecycle.ml import drift  # noqa: E402

LEVELS = [f"m{i:03d}" for i in range(100)]
ZIPF = 1.0 / np.arange(1, 101) ** 1.1
ZIPF /= ZIPF.sum()
NUMERIC, CATEGORICAL = ["amount", "items", "refunds", "latency"], ["merchant", "channel"]
SIZES = (200, 1_000, 10_000)
DRIFT_FROM = dt.date(2026, 3, 10)


def stationary(rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng([11, seed])
    return pd.DataFrame(
        {
            "merchant": rng.choice(LEVELS, rows, p=ZIPF),
            "channel": rng.choice(["web", "app", "store"], rows, p=[0.5, 0.3, 0.2]),
            "amount": rng.normal(50.0, 10.0, rows),
            "items": rng.poisson(1.5, rows).astype(float),
            "refunds": rng.binomial(3, 0.05, rows).astype(float),
            "latency": rng.lognormal(0.0, 1.2, rows),
        }
    )


def fixed(r: dict[str, Any]) -> bool:
    return r["value"] >= r["threshold"]


def false_alarms(reference_rows: int, batches: int) -> dict[str, Any]:
    reference = drift.reference_profile(stationary(reference_rows, 0), NUMERIC, CATEGORICAL)
    config, out = Drift(), {}
    print(f"stationary: reference {reference_rows:,} rows, {batches} batches per size, "
          f"noise quantile {config.noise_quantile}; false-alarm rate fixed -> noise-aware (median noise floor)")  # fmt: skip
    print(f"{'feature':10s}" + "".join(f"{f'{n:,} rows':>30s}" for n in SIZES))
    results = {n: [drift.check(reference, stationary(n, 1 + i), None, config) for i in range(batches)] for n in SIZES}
    for feature in NUMERIC + CATEGORICAL:
        cells, out[feature] = [], {}
        for n in SIZES:
            found = [r["features"][feature] for r in results[n]]
            old, new = np.mean([fixed(r) for r in found]), np.mean([r["drifted"] for r in found])
            floor = statistics.median(r["noise_floor"] for r in found)
            out[feature][n] = {"fixed": float(old), "noise_aware": float(new), "noise_floor": floor,
                               "threshold": found[0]["threshold"]}  # fmt: skip
            cells.append(f"{old:6.0%} -> {new:4.0%} ({floor:.3f})")
        print(f"{feature:10s}" + "".join(f"{c:>30s}" for c in cells))
    share = config.dataset_share
    verdicts = {}
    for n in SIZES:
        old = np.mean([sum(fixed(f) for f in r["features"].values()) / len(r["features"]) >= share for r in results[n]])
        verdicts[n] = {"fixed": float(old), "noise_aware": float(np.mean([r["dataset_drift"] for r in results[n]]))}
    cells = [f"{v['fixed']:6.0%} -> {v['noise_aware']:4.0%}" for v in verdicts.values()]
    print(f"{'dataset':10s}" + "".join(f"{c:>30s}" for c in cells))
    return {"features": out, "dataset": verdicts}


def injected(rows: int) -> dict[str, Any]:
    config = load_pipeline(REPO / "include" / "pipelines" / "demo_churn.yaml")

    def day(d: dt.date) -> pd.DataFrame:
        return demo_data.activity(d, rows, DRIFT_FROM).merge(demo_data.accounts(), on="account_id")

    train = pd.concat([day(dt.date(2026, 1, 1) + dt.timedelta(days=i)) for i in range(35)])
    reference = drift.reference_profile(train, config.features.numeric, config.features.categorical)
    print(f"\ninjected (demo_churn, drift from {DRIFT_FROM}, {rows:,}-row batches, 35-day reference): flagged features")
    out = {}
    for offset in (-3, -1, 0, 1, 3, 7):
        d = DRIFT_FROM + dt.timedelta(days=offset)
        result = drift.check(reference, day(d), None, config.drift)
        old = sorted(c for c, r in result["features"].items() if fixed(r))
        out[d.isoformat()] = {
            "fixed": old,
            "noise_aware": result["drifted_features"],
            "dataset": result["dataset_drift"],
        }
        new = "the same" if old == result["drifted_features"] else ", ".join(result["drifted_features"]) or "-"
        print(
            f"  {d}  dataset drift {result['dataset_drift']!s:5s}  fixed: {', '.join(old) or '-'}; noise-aware: {new}"
        )
    return out


def big_frame(rows: int, seed: int) -> tuple[pd.DataFrame, list[str], list[str]]:
    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {}
    for i in range(20):
        kind = i % 4
        columns[f"n{i:02d}"] = (rng.normal(0, 1, rows), rng.poisson(2, rows).astype(float),
                                rng.lognormal(0, 1, rows), rng.binomial(3, 0.05, rows).astype(float))[kind]  # fmt: skip
    for i, levels in enumerate((3, 4, 5, 8, 12, 20, 30, 50, 100, 100)):
        p = 1.0 / np.arange(1, levels + 1) ** 1.1
        columns[f"c{i:02d}"] = rng.choice(np.array([f"v{j}" for j in range(levels)], dtype=object), rows, p=p / p.sum())
    frame = pd.DataFrame(columns)
    return frame, [c for c in frame if c.startswith("n")], [c for c in frame if c.startswith("c")]


def cost(rows: int, reference_rows: int, repeats: int) -> dict[str, Any]:
    train, numeric, categorical = big_frame(reference_rows, 1)
    reference = drift.reference_profile(train, numeric, categorical)
    reference["prediction"] = drift.numeric_profile(pd.Series(np.random.default_rng(2).beta(1, 8, reference_rows)))
    batch, _, _ = big_frame(rows, 3)
    scores = np.random.default_rng(4).beta(1, 8, rows)
    real, inside = drift.noise_floor, []

    def timed_floor(*args: Any, **kwargs: Any) -> float:
        started = time.perf_counter()
        value = real(*args, **kwargs)
        inside[-1] += time.perf_counter() - started
        return value

    times: dict[str, list[float]] = {"noise-aware": [], "fixed": []}
    for _ in range(repeats):
        for mode in times:  # alternate, so machine load hits both alike
            drift.noise_floor = timed_floor if mode == "noise-aware" else (lambda *a, **k: 0.0)
            inside.append(0.0)
            started = time.perf_counter()
            drift.check(reference, batch, scores, Drift())
            times[mode].append(time.perf_counter() - started)
    drift.noise_floor = real
    with_floor, without = statistics.median(times["noise-aware"]), statistics.median(times["fixed"])
    floor_only = statistics.median(inside[0::2])
    print(f"\ncost: {rows:,} rows x {len(numeric) + len(categorical)} features + prediction, reference "
          f"{reference_rows:,} rows, median of {repeats}")  # fmt: skip
    print(f"  check with noise floor {with_floor:.2f} s, without {without:.2f} s: "
          f"+{with_floor - without:.2f} s; inside noise_floor {floor_only:.3f} s per check")  # fmt: skip
    return {"rows": rows, "features": len(numeric) + len(categorical), "with_floor_s": with_floor,
            "without_floor_s": without, "noise_floor_s": floor_only}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=60, help="stationary batches per batch size")
    parser.add_argument("--reference-rows", type=int, default=20_000)
    parser.add_argument("--demo-rows", type=int, default=1_000, help="rows per demo day")
    parser.add_argument("--big-rows", type=int, default=1_000_000, help="rows of the cost batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args()
    result = {
        "stationary": false_alarms(args.reference_rows, args.batches),
        "injected": injected(args.demo_rows),
        "cost": cost(args.big_rows, 100_000, args.repeats),
    }
    text = json.dumps(result, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
