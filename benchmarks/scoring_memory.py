"""Peak memory of batch scoring as the batch grows: the project's chunked scoring against scoring the whole frame.

A small LightGBM pipeline is trained with the project's own code (lifecycle.ml.training.fit_search on a one-point
grid over demo activity joined with accounts(), like the retrain DAG does). Two scoring batches, 1x and `--factor`x
`--rows` rows (50,000 and 500,000 by default), are staged as Parquet with one row group per `--chunk-size` rows
(default 50,000, prediction.chunk_size's default), as lifecycle.ml.scoring.stage_batch stages them. Each run then
happens in a fresh process (like an Airflow task) that loads the model, scores 100 rows to warm up, takes its
baseline, and scores the whole batch one of two ways:

  chunked  lifecycle.ml.scoring.score_partition over all row groups: the project's path
  whole    pandas.read_parquet of the whole batch, one predict, one Parquet write: the reference

Each run is measured twice, in separate processes: once for RSS and once under tracemalloc. RSS: the kernel's peak
count is restarted at the baseline (/proc/self/clear_refs), so the peak (resource.getrusage ru_maxrss) is the
scoring's own, reported as is and as its growth over the baseline RSS. The parent stays small (training and staging
run in a process of their own) because a child's ru_maxrss starts from its parent's at exec. tracemalloc gives the
peak of Python and numpy allocations after the baseline; Arrow's own pool peak is reported beside it. The figure
that matters is the ratio of the big batch's peak growth to the small batch's: chunked scoring should stay close to
1x, far below the factor, while the whole-frame reference grows with the batch.

    .venv/bin/python benchmarks/scoring_memory.py                  # 50,000 and 500,000 rows
    .venv/bin/python benchmarks/scoring_memory.py --rows 20000 --factor 5
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PIPELINE_YAML = REPO / "include" / "pipelines" / "demo_churn.yaml"
MARKER = "@@SCORING_MEMORY@@"
MODES = ("chunked", "whole")
GRID = {"num_leaves": [15], "learning_rate": [0.1], "n_estimators": [100], "min_child_samples": [20]}
START = dt.date(2026, 1, 1)
MB = 1024 * 1024


# --- the parent: model, batches, runs, table ---------------------------------------------------------------------


def train(model_path: Path, days: int, rows_per_day: int) -> dict[str, Any]:
    import joblib
    import pandas as pd

    from lifecycle.config.pipeline import load_pipeline
    from lifecycle.devtools.demo_data import accounts, activity
    from lifecycle.ml.training import fit_search

    config = load_pipeline(PIPELINE_YAML)
    frames = [activity(START + dt.timedelta(days=i), rows_per_day) for i in range(days)]
    frame = pd.concat(frames, ignore_index=True).merge(accounts(), on="account_id", how="left")
    started = time.perf_counter()
    search, summary = fit_search(config, frame, GRID, "grid", plan={"search_jobs": 1, "lgbm_threads": 1})
    joblib.dump(search.best_estimator_, model_path)
    return {"rows": len(frame), "seconds": round(time.perf_counter() - started, 1), "cv": summary["best_cv_score"]}


def write_batch(path: Path, rows: int, chunk_size: int) -> int:
    """`rows` scoring rows (activity joined with accounts, unique ids) as Parquet, one row group per chunk."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lifecycle.devtools.demo_data import N_ACCOUNTS, accounts, activity

    attributes = accounts()
    writer, written, day = None, 0, 0
    pending: list[pd.DataFrame] = []
    try:
        while written < rows:
            while sum(len(f) for f in pending) < min(chunk_size, rows - written):
                part = activity(START + dt.timedelta(days=60 + day), N_ACCOUNTS).merge(attributes, on="account_id")
                part = part.drop(columns=["churned"])
                pending.append(part)
                day += 1
            frame = pd.concat(pending, ignore_index=True)
            size = min(chunk_size, rows - written)
            chunk, rest = frame.iloc[:size].copy(), frame.iloc[size:]
            pending = [rest] if len(rest) else []
            chunk["account_id"] = np.arange(written, written + size, dtype="int64") + 1
            table = pa.Table.from_pandas(chunk, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=chunk_size)
            written += size
    finally:
        if writer is not None:
            writer.close()
    return pq.ParquetFile(path).num_row_groups


def prepare(spec: dict[str, Any]) -> None:
    """In a process of its own, so that the parent stays small (see `child`): train, then stage the batches."""
    from lifecycle.config.pipeline import Prediction

    root = Path(spec["root"])
    chunk_size = spec["chunk_size"] or Prediction.model_fields["chunk_size"].default
    trained = train(root / "model.joblib", spec["train_days"], spec["train_rows"])
    batches = {}
    for label, rows in spec["sizes"].items():
        path = root / "artifacts" / f"batch-{label}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        groups = write_batch(path, rows, chunk_size)
        batches[label] = {
            "path": str(path),
            "rows": rows,
            "row_groups": groups,
            "mb": round(path.stat().st_size / MB, 1),
        }
    print(MARKER + json.dumps({"chunk_size": chunk_size, "model": trained, "batches": batches}), flush=True)


def in_child(*args: str) -> dict[str, Any]:
    """Run this script with `args` in a fresh interpreter; its last marker line as a dict."""
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=os.environ, timeout=900
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(args)[:200]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    return json.loads(lines[-1][len(MARKER) :])


def ratio(big: float, small: float) -> float | None:
    return round(big / small, 2) if small > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000, help="rows of the 1x batch")
    parser.add_argument("--factor", type=int, default=10, help="the big batch has factor x rows rows")
    parser.add_argument(
        "--chunk-size", type=int, help="rows per row group (default: prediction.chunk_size's default, 50,000)"
    )
    parser.add_argument("--train-days", type=int, default=14)
    parser.add_argument("--train-rows", type=int, default=1_000, help="training rows per day")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: chunked,whole")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument(
        "--child", nargs=5, metavar=("MODE", "MEASURE", "BATCH", "MODEL", "OUT_URI"), help=argparse.SUPPRESS
    )
    parser.add_argument("--prepare", metavar="JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.prepare:
        prepare(json.loads(args.prepare))
        return

    modes = [m for m in args.modes.split(",") if m]
    sizes = {"1x": args.rows, f"{args.factor}x": args.rows * args.factor}
    with tempfile.TemporaryDirectory(prefix="scoring-memory-") as work:
        root = Path(work)
        os.environ["ARTIFACT_ROOT"] = f"file://{root / 'artifacts'}"
        os.environ.setdefault("DATA_ROOT", str(root / "data"))  # the pipeline YAML expands it
        spec = {"root": work, "sizes": sizes, "chunk_size": args.chunk_size, "train_days": args.train_days,
                "train_rows": args.train_rows}  # fmt: skip
        prepared = in_child("--prepare", json.dumps(spec))
        chunk_size, trained = prepared["chunk_size"], prepared["model"]
        print(
            f"model: LightGBM pipeline on {trained['rows']:,} rows in {trained['seconds']} s (CV AUC {trained['cv']:.3f})"
        )
        for label, batch in prepared["batches"].items():
            print(
                f"batch {label}: {batch['rows']:,} rows, {batch['row_groups']} row groups of {chunk_size:,}, {batch['mb']} MB"
            )

        model = str(root / "model.joblib")
        runs: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in modes}
        for mode in modes:
            for label, batch in prepared["batches"].items():
                out_uri = f"file://{root / 'artifacts' / f'scores-{mode}-{label}.parquet'}"
                rss = in_child("--child", mode, "rss", batch["path"], model, out_uri)
                traced = in_child("--child", mode, "tracemalloc", batch["path"], model, out_uri)
                if rss["rows"] != sizes[label] or traced["rows"] != sizes[label]:
                    raise RuntimeError(f"{mode} {label}: scored {rss['rows']} rows, expected {sizes[label]}")
                runs[mode][label] = {**rss, "tracemalloc_peak_mb": traced["tracemalloc_peak_mb"],
                                     "arrow_peak_mb": traced["arrow_peak_mb"]}  # fmt: skip
                print(f"  {mode:8s} {label:4s} peak RSS {rss['peak_rss_mb']:7.1f} MB, "
                      f"+{rss['peak_delta_mb']:.1f} MB over baseline, {rss['seconds']:.1f} s", flush=True)  # fmt: skip

    small, big = "1x", f"{args.factor}x"
    print()
    header = (f"{'mode':8s} {'batch':>6s} {'rows':>9s} {'seconds':>8s} {'baseline MB':>12s} {'peak RSS MB':>12s} "
              f"{'peak-baseline':>14s} {'tracemalloc MB':>15s} {'arrow pool MB':>14s}")  # fmt: skip
    print(header)
    for mode, by_size in runs.items():
        for label, r in by_size.items():
            print(f"{mode:8s} {label:>6s} {r['rows']:9,d} {r['seconds']:8.1f} {r['baseline_rss_mb']:12.1f} "
                  f"{r['peak_rss_mb']:12.1f} {r['peak_delta_mb']:14.1f} {r['tracemalloc_peak_mb']:15.1f} "
                  f"{r['arrow_peak_mb']:14.1f}")  # fmt: skip
    ratios = {
        mode: {
            "peak_rss": ratio(by_size[big]["peak_rss_mb"], by_size[small]["peak_rss_mb"]),
            "peak_delta_over_baseline": ratio(by_size[big]["peak_delta_mb"], by_size[small]["peak_delta_mb"]),
            "tracemalloc_peak": ratio(by_size[big]["tracemalloc_peak_mb"], by_size[small]["tracemalloc_peak_mb"]),
            "seconds": ratio(by_size[big]["seconds"], by_size[small]["seconds"]),
        }
        for mode, by_size in runs.items()
    }
    print()
    print(f"ratio {big} / {small} (the batch grew {args.factor}x; chunked scoring should stay close to 1x):")
    for mode, r in ratios.items():
        print(f"  {mode:8s} " + ", ".join(f"{k} {v}x" for k, v in r.items()))
    result = {
        "benchmark": "scoring_memory",
        "rows": sizes,
        "chunk_size": chunk_size,
        "model": trained,
        "runs": runs,
        "ratios_big_over_small": ratios,
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


# --- the child: one scoring run in a fresh process ---------------------------------------------------------------


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS count from the current RSS (Linux >= 4.0), so the peak is the scoring's own."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def child(mode: str, measure: str, batch: str, model_path: str, out_uri: str) -> None:
    import gc
    import tracemalloc

    import joblib
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lifecycle.config.pipeline import load_pipeline
    from lifecycle.ml.features import input_columns
    from lifecycle.ml.scoring import predict, score_partition

    config = load_pipeline(PIPELINE_YAML)
    model = joblib.load(model_path)
    parquet = pq.ParquetFile(batch)
    warm = parquet.read_row_group(0).slice(0, 100).to_pandas()  # lazy imports and first-call allocations
    predict(config, model, warm[input_columns(config, warm)], config.prediction.threshold)
    del warm
    gc.collect()
    reset = reset_peak_rss()
    baseline = current_rss_mb()
    if measure == "tracemalloc":
        tracemalloc.start()

    started = time.perf_counter()
    if mode == "chunked":
        rows = score_partition(config, model, f"file://{batch}", list(range(parquet.num_row_groups)), out_uri)["rows"]
    elif mode == "whole":
        frame = pd.read_parquet(batch)
        score, label = predict(config, model, frame[input_columns(config, frame)], config.prediction.threshold)
        table = pa.table({"entity_id": frame[config.id_column].astype(str).to_numpy(), "score": score, "label": label})
        pq.write_table(table, out_uri.removeprefix("file://"))
        rows = len(frame)
    else:
        raise ValueError(mode)
    seconds = time.perf_counter() - started

    traced_peak = tracemalloc.get_traced_memory()[1] / MB if measure == "tracemalloc" else 0.0
    peak = max_rss_mb()
    report = {
        "mode": mode,
        "measure": measure,
        "rows": rows,
        "seconds": round(seconds, 2),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_delta_mb": round(max(0.0, peak - baseline), 1),
        "peak_counted_from_baseline": reset,
        "tracemalloc_peak_mb": round(traced_peak, 1),
        "arrow_peak_mb": round(pa.default_memory_pool().max_memory() / MB, 1),
    }
    print(MARKER + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
