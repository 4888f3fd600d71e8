"""Segment models at scale: retrain and batch-score N segments through Airflow on the embedded default.

For each N in --segments (default 20 and 200), in a private embedded default (SQLite for Airflow, MLflow
and the predictions, a local artifact folder, all under a temporary folder): store-order data with N
equally sized stores, the example pipeline `store_orders` copied with `min_rows` lowered to fit, then
`airflow dags test <pipeline>__retrain` (one mapped task group per segment, plus the pooled model) and
`airflow dags test <pipeline>__batch_predict` for the next day. Printed per N: wall time, the time per
segment, where a segment's time goes (each task's median from the `[DAG TEST]` lines of Airflow's log), the
scoring throughput, and at the end the per-segment ratio of the largest N to the smallest (1.0: linear).

    .venv/bin/python benchmarks/segments.py                 # 20 and 200 segments
    .venv/bin/python benchmarks/segments.py --segments 20   # one size
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))
YAML = REPO / "examples" / "pipelines" / "store_orders.yaml"
NAME = "store_orders"
START, AS_OF, BATCH = dt.date(2026, 1, 1), dt.date(2026, 2, 1), dt.date(2026, 2, 2)
ROWS_PER_SEGMENT_DAY = 40  # ~800 training rows per segment over the window's 21 training days
LINE = re.compile(r"^(\S+Z) .*\[DAG TEST\] (starting|end task) task_id=(\S+) map_index=(-?\d+)")


def environment(work: Path, pipelines: Path) -> dict[str, str]:
    from lifecycle.config.settings import embedded_environment

    env = {**os.environ, **embedded_environment()}
    env.update({
        "AIRFLOW_HOME": str(work / "airflow"), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "MLFLOW_ARTIFACT_ROOT": str(work / "mlartifacts"), "ARTIFACT_ROOT": f"file://{work / 'artifacts'}",
        "DATA_ROOT": str(work / "data"), "AIRFLOW_CONN_PREDICTIONS_DB": f"sqlite:///{work / 'predictions.db'}",
        "PIPELINES_DIR": str(pipelines), "LIFECYCLE_TASK_RETRIES": "0", "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    })  # fmt: skip
    return env


def task_seconds(log: str) -> dict[str, list[float]]:
    """Each task's durations (one per map index) from `airflow dags test`'s own start/end lines."""
    started: dict[tuple[str, str], dt.datetime] = {}
    spent: dict[str, list[float]] = collections.defaultdict(list)
    for line in log.splitlines():
        match = LINE.match(line)
        if not match:
            continue
        when = dt.datetime.fromisoformat(match.group(1).replace("Z", "+00:00"))
        key = (match.group(3), match.group(4))
        if match.group(2) == "starting":
            started[key] = when
        elif key in started:
            spent[match.group(3)].append((when - started.pop(key)).total_seconds())
    return spent


def airflow(env: dict[str, str], *args: str) -> tuple[float, str]:
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "airflow", *args], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"airflow {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return seconds, result.stdout + result.stderr


def measure(segments: int, keep: bool) -> dict:
    from lifecycle.devtools import demo_segments

    work = Path(tempfile.mkdtemp(prefix=f"bench-segments-{segments}-"))
    pipelines = work / "pipelines"
    pipelines.mkdir()
    config = yaml.safe_load(YAML.read_text())
    config["segments"]["min_rows"] = 300
    config["validation"]["min_rows"] = 1000
    (pipelines / YAML.name).write_text(yaml.safe_dump(config, sort_keys=False))
    env = environment(work, pipelines)
    rows = segments * ROWS_PER_SEGMENT_DAY
    demo_segments.write(work / "data" / NAME, START, BATCH, segments, rows=rows, skew=0.0)
    try:
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True, env=env)
        retrain_s, retrain_log = airflow(env, "dags", "test", f"{NAME}__retrain", AS_OF.isoformat())
        predict_s, predict_log = airflow(
            env, "dags", "test", f"{NAME}__batch_predict", BATCH.isoformat(), "--conf", '{"partitions": 2}'
        )
        with sqlite3.connect(work / "predictions.db") as db:
            scored, models = db.execute(
                "SELECT count(*), count(DISTINCT model_name) FROM predictions WHERE pipeline = ?", (NAME,)
            ).fetchone()
        tasks = task_seconds(retrain_log)
        trained = len(tasks.get("segment.promote", []))
        return {
            "segments": segments,
            "trained": trained,
            "retrain_s": round(retrain_s, 1),
            "retrain_s_per_segment": round(retrain_s / max(trained, 1), 2),
            "task_median_s": {k: round(statistics.median(v), 2) for k, v in tasks.items()},
            "task_total_s": {k: round(sum(v), 1) for k, v in tasks.items()},
            "predict_s": round(predict_s, 1),
            "scored_rows": scored,
            "scoring_models": models,
            "predict_s_per_segment": round(predict_s / max(models, 1), 3),
        }
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--keep", action="store_true", help="keep each run's temporary folder")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = []
    for count in args.segments:
        print(f"== {count} segments", flush=True)
        result = measure(count, args.keep)
        results.append(result)
        print(f"retrain: {result['retrain_s']} s for {result['trained']} segments + the pooled model "
              f"= {result['retrain_s_per_segment']} s per segment", flush=True)  # fmt: skip
        for task, median in sorted(result["task_median_s"].items(), key=lambda kv: -result["task_total_s"][kv[0]]):
            print(f"  {task:28s} median {median:7.2f} s  total {result['task_total_s'][task]:8.1f} s")
        print(f"batch prediction: {result['predict_s']} s, {result['scored_rows']} rows by {result['scoring_models']} "
              f"models = {result['predict_s_per_segment']} s per segment", flush=True)  # fmt: skip
    if len(results) > 1:
        small, large = results[0], results[-1]
        ratio = large["retrain_s_per_segment"] / small["retrain_s_per_segment"]
        print(
            f"per-segment retrain time, {large['segments']} vs {small['segments']} segments: {ratio:.2f}x (1.0: linear)"
        )
        for result in results:
            result["per_segment_ratio_vs_smallest"] = round(
                result["retrain_s_per_segment"] / small["retrain_s_per_segment"], 2
            )
    summary = {"benchmark": "segments", "results": results}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
