"""Batch prediction into PostgreSQL, end to end and the write alone, against the server's own COPY FROM a file.

One run builds a throwaway MLflow store (SQLite tracking database and artifacts in a temporary folder) with a
LightGBM champion trained on demo activity joined with accounts() and logged by the retrain's own
`retraining._log_model` (calibrated on a validation split, skops, trust list, digests), registered as champion.
It writes one scoring partition per batch size (`--sizes`, 100,000 and 1,000,000 rows by default) in the demo's
shape: demo activity rows already joined with their account attributes (so every row has a distinct account
id, which the predictions table's unique key needs; the demo has only 20,000 accounts), written with
pandas.to_parquet like lifecycle.devtools.demo_data does. The pipeline is demo_churn.yaml with that one source and
prediction.chunk_size at its default (50,000; the demo YAML's 250 is for its 1,000-row days).

Then, for each size, `--rounds` rounds (2 by default), the order rotating every round, each method writing
into an empty predictions table created just before it (same columns, unique key and index):

  (a) end to end   the batch-prediction task functions in this process, one after the other:
                   batch_scoring.stage (read the day's partition chunk by chunk, stage it as Parquet with one
                   row group per chunk), batch_scoring.score over every row group (load the champion from
                   the registry with its digest check, score chunk by chunk, write the scores as Parquet), and
                   batch_scoring.write (stream the scored rows into predictions_db.write_batch, then count the
                   batch in the table). Not included: resolving the champion, validate_batch (the data
                   checks), Airflow's scheduling and process start-up, the DAG's partitions side by side.
  (b) write alone  predictions_db.write_batch of the already-scored rows, streamed from the scores Parquet
                   as the write task streams them (scoring.prediction_rows)
  (c) server COPY  COPY predictions (...) FROM '/tmp/.../rows.csv' (FORMAT csv): the same rows as (b), from a
                   CSV file written beforehand (untimed), read by the PostgreSQL server itself: the reference
  (d) server COPY  the same from a binary COPY file (the server's COPY TO of (c)'s rows, made beforehand):
      binary       what the server does with the format write_batch sends; for information, no target

Ratios are throughput ratios, (c)'s seconds over (a)'s or (b)'s in the same round (above 1 is faster than the
server's COPY), and their median over the rounds. Every run's row count is checked, and in the first round all
four tables' (entity_id, score, label) must be equal (an md5 over the sorted rows). Beside the rounds, once per
size: loading the champion, LightGBM's own predict_proba on the rows (on the already transformed features, with
the model's one thread: the floor of scoring), the model's feature step, and the champion's whole predict_proba.

Peak memory: (a) once more per size, each in a fresh child process (like an Airflow task), started from this
small parent; peak RSS is the child's resource.getrusage ru_maxrss, and the ratio 1M / 100k should stay near 1
(target <= 1.3x).

PostgreSQL is found like the integration tests find it (TEST_POSTGRES_URL, else 127.0.0.1:5432, else a
throwaway cluster); the benchmark runs in a throwaway database of its own, dropped at the end. The server must
run on this host and the role be a superuser (or hold pg_read_server_files and pg_write_server_files): the
server itself reads and writes the COPY files in this run's temporary folder.

    .venv/bin/python benchmarks/batch_to_postgres.py                     # 100k and 1M rows, 2 rounds
    .venv/bin/python benchmarks/batch_to_postgres.py --sizes 20000,200000 --rounds 3 --out FILE
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO_YAML = REPO / "include" / "pipelines" / "demo_churn.yaml"
MARKER = "@@BATCH_TO_POSTGRES@@"
METHODS = ("e2e", "write", "copy", "copy_binary")
NAMES = {"e2e": "(a) end to end", "write": "(b) write alone", "copy": "(c) server COPY csv",
         "copy_binary": "(d) server COPY binary"}  # fmt: skip
TABLES = {"e2e": "predictions_e2e", "write": "predictions_write", "copy": "predictions_copy",
          "copy_binary": "predictions_copy_binary"}  # fmt: skip
PARAMS = {"num_leaves": [15], "learning_rate": [0.1], "n_estimators": [100], "min_child_samples": [20]}
TRAIN_START = dt.date(2026, 1, 1)
FIRST_BATCH = dt.date(2026, 3, 1)
MB = 1024 * 1024


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def label_of(rows: int) -> str:
    return f"{rows // 1_000_000}M" if rows % 1_000_000 == 0 else f"{rows // 1000}k"


# --- preparation, in a process of its own: the store, the champion, the scoring partitions ---------------------


def prepare(spec: dict[str, Any]) -> None:
    """Train and log the champion as the retrain does, write one scoring partition per size; print a summary."""
    import mlflow
    import pandas as pd
    import yaml

    from lifecycle.config.pipeline import load_pipeline
    from lifecycle.devtools import demo_data
    from lifecycle.ml.training import fit_search
    from lifecycle.persistence import storage
    from lifecycle.persistence.predictions_db import engine_for
    from lifecycle.registry import tracking
    from lifecycle.tasks import retraining
    from lifecycle.tasks.batch_scoring import resolve_champion

    root = Path(spec["root"])
    demo = yaml.safe_load(DEMO_YAML.read_text())
    activity = demo["sources"][0] | {"uri": "${DATA_ROOT}/demo_churn/joined/date={date}/part.parquet"}
    prediction = demo["prediction"] | {"table": TABLES["e2e"], "chunk_size": spec["chunk_size"]}
    (root / "demo_churn.yaml").write_text(yaml.safe_dump(demo | {"sources": [activity], "prediction": prediction}))
    config = load_pipeline(root / "demo_churn.yaml")

    def joined(start: dt.date, days: int, rows: int) -> pd.DataFrame:
        frames = [demo_data.activity(start + dt.timedelta(days=i), rows) for i in range(days)]
        return pd.concat(frames, ignore_index=True).merge(demo_data.accounts(), on="account_id", how="left")

    started = time.perf_counter()
    train = joined(TRAIN_START, spec["train_days"], spec["train_rows"])
    validation = joined(TRAIN_START + dt.timedelta(days=spec["train_days"]), 5, spec["train_rows"])
    search, summary = fit_search(config, train, PARAMS, "grid", plan={"search_jobs": 1, "lgbm_threads": 1})
    with mlflow.start_run(experiment_id=tracking.experiment_id(config.name)) as run:
        pass
    split = storage.write_parquet(storage.artifact_uri(config.name, "prepare", "features", "validation.parquet"),
                                  validation)  # fmt: skip
    features = {"splits": {"validation": split["uri"]}}
    logged = retraining._log_model(config, run.info.run_id, search.best_estimator_, train, summary["input_columns"],
                                features, "model")  # fmt: skip
    engine = engine_for(spec["database_url"])
    try:
        tracking.register_champion(logged["model_uri"], config.registered_model_name, {}, run.info.run_id, None,
                                   engine=engine, moved_by="benchmarks/batch_to_postgres.py")  # fmt: skip
    finally:
        engine.dispose()
    champion = resolve_champion(config, "champion")
    model = {"rows": len(train), "seconds": round(time.perf_counter() - started, 1),
             "calibration": logged.get("calibration", {}).get("method"), "version": champion["version"]}  # fmt: skip

    attributes = demo_data.accounts()
    batches = {}
    for index, rows in enumerate(spec["sizes"]):
        day = FIRST_BATCH + dt.timedelta(days=index)
        parts, have, n = [], 0, 0
        while have < rows:  # whole demo days (20,000 distinct accounts each) until the batch is full
            part = demo_data.activity(day + dt.timedelta(days=n), demo_data.N_ACCOUNTS).drop(columns=["churned"])
            parts.append(part.merge(attributes, on="account_id"))
            have, n = have + len(part), n + 1
        frame = pd.concat(parts, ignore_index=True).iloc[:rows].copy()
        frame["account_id"] = frame["account_id"] + demo_data.N_ACCOUNTS * (frame.index // demo_data.N_ACCOUNTS)
        frame["snapshot_date"] = pd.Timestamp(day)
        path = Path(config.sources[0].uri.format(date=day.isoformat()))
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)  # as lifecycle.devtools.demo_data.write writes a day's partition
        batches[str(rows)] = {"day": day.isoformat(), "mb": round(path.stat().st_size / MB, 1)}
    print(MARKER + json.dumps({"model": model, "champion": champion, "batches": batches}), flush=True)


# --- the rounds, in a process of their own -----------------------------------------------------------------------


class Runner:
    """The methods against one database; each writes into an empty table created just before it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from lifecycle.config.pipeline import load_pipeline
        from lifecycle.persistence.predictions_db import engine_for

        self.spec = spec
        self.root = Path(spec["root"])
        self.config = load_pipeline(self.root / "demo_churn.yaml")
        self.champion = spec["champion"]
        self.url = spec["database_url"]
        self.engine = engine_for(self.url)
        self.serial = 0

    def recreate(self, table: str) -> None:
        from lifecycle.persistence.predictions_db import ensure_table

        self.drop(table)
        ensure_table(self.engine, table)

    def drop(self, table: str) -> None:
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}"')

    def check(self, table: str, rows: int, fingerprint: bool) -> str | None:
        with self.engine.connect() as conn:
            found = conn.exec_driver_sql(f'SELECT count(*) FROM "{table}"').scalar_one()
            if found != rows:
                raise RuntimeError(f"{table}: {found} rows, expected {rows}")
            if not fingerprint:
                return None
            return conn.exec_driver_sql(
                "SELECT md5(string_agg(entity_id || ' ' || score::text || ' ' || coalesce(label, '-'), ',' "
                f'ORDER BY entity_id)) FROM "{table}"'
            ).scalar_one()

    def end_to_end(self, day: str) -> tuple[dict[str, float], list[dict[str, Any]], str]:
        """stage + score + write, as the DAG's tasks call them; the seconds of each and the scored parts."""
        from lifecycle.tasks import batch_scoring

        self.serial += 1
        run_id = f"bench__{self.serial:04d}"
        seconds = {}
        started = time.perf_counter()
        batch = batch_scoring.stage(self.config, run_id, day, None)
        seconds["stage"] = time.perf_counter() - started
        groups = list(range(batch["row_groups"]))
        mark = time.perf_counter()
        part = batch_scoring.score(self.config, run_id, batch, self.champion, groups)
        seconds["score"] = time.perf_counter() - mark
        mark = time.perf_counter()
        written = batch_scoring.write(self.config, run_id, self.url, batch, self.champion, [part])
        seconds["write"] = time.perf_counter() - mark
        seconds["total"] = time.perf_counter() - started
        if written["rows"] != batch["rows"]:
            raise RuntimeError(f"end to end wrote {written['rows']} rows of {batch['rows']}")
        return seconds, [part], run_id

    def forget(self, run_id: str) -> None:
        from lifecycle.persistence import storage

        shutil.rmtree(storage.artifact_uri(self.config.name, run_id).removeprefix("file://"), ignore_errors=True)

    def rows_of(self, parts: list[dict[str, Any]], day: str, work: str) -> Any:
        from lifecycle.ml.scoring import prediction_rows

        return prediction_rows(
            [p["uri"] for p in parts], self.config.name, dt.date.fromisoformat(day), self.champion["model_name"],
            self.champion["version"], "bench__write", SCORED_AT, self.config.prediction.chunk_size, work,
        )  # fmt: skip

    def write_alone(self, parts: list[dict[str, Any]], day: str, table: str) -> float:
        from lifecycle.persistence.predictions_db import write_batch

        with tempfile.TemporaryDirectory() as work:
            started = time.perf_counter()
            write_batch(self.engine, table, self.config.name, dt.date.fromisoformat(day),
                        self.rows_of(parts, day, work))  # fmt: skip
            return time.perf_counter() - started

    def server_copy(self, path: Path, table: str, fmt: str) -> float:
        from lifecycle.persistence.predictions_db import COLUMNS

        started = time.perf_counter()
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"COPY \"{table}\" ({', '.join(COLUMNS)}) FROM '{path}' (FORMAT {fmt})")
        return time.perf_counter() - started

    def copy_files(self, parts: list[dict[str, Any]], day: str, folder: Path, size: int) -> dict[str, Path]:
        """The rows of (b) as a CSV file (Arrow's writer) and as a binary COPY file (the server's COPY TO)."""
        import pyarrow.csv as pacsv

        from lifecycle.persistence.predictions_db import COLUMNS

        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o1777)  # the server (another user) reads the CSV here and writes the binary file
        files = {"csv": folder / f"rows-{size}.csv", "binary": folder / f"rows-{size}.bin"}
        with tempfile.TemporaryDirectory() as work, open(files["csv"], "wb") as out:
            for chunk in self.rows_of(parts, day, work):
                pacsv.write_csv(chunk.select(COLUMNS), out, pacsv.WriteOptions(include_header=False))
        os.chmod(files["csv"], 0o644)
        scratch = "predictions_scratch"
        self.recreate(scratch)
        self.server_copy(files["csv"], scratch, "csv")
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"COPY \"{scratch}\" ({', '.join(COLUMNS)}) TO '{files['binary']}' (FORMAT binary)")
        self.drop(scratch)
        return files

    def floor(self, parts: list[dict[str, Any]], day: str) -> dict[str, float]:
        """LightGBM's own predict_proba on the transformed rows, and the champion's whole predict_proba."""
        import pandas as pd

        from lifecycle.ml.features import input_columns
        from lifecycle.ml.training import uncalibrated
        from lifecycle.registry import model_trust

        source = self.config.sources[0].uri.format(date=day)
        frame = pd.read_parquet(source)
        started = time.perf_counter()
        model = model_trust.load(self.champion["model_uri"])
        load = time.perf_counter() - started
        columns = input_columns(self.config, frame)
        pipeline = uncalibrated(model)
        model.predict_proba(frame[columns].head(100))  # first-call costs, untimed
        started = time.perf_counter()
        model.predict_proba(frame[columns])
        whole = time.perf_counter() - started
        started = time.perf_counter()
        matrix = pipeline[:-1].transform(frame[columns])
        features = time.perf_counter() - started
        started = time.perf_counter()
        pipeline[-1].predict_proba(matrix)
        lightgbm = time.perf_counter() - started
        return {"model_load": load, "lightgbm_predict": lightgbm, "features_transform": features,
                "model_predict_proba": whole, "lightgbm_threads": pipeline[-1].get_params().get("n_jobs")}  # fmt: skip


SCORED_AT = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)


def rounds(spec: dict[str, Any]) -> None:
    runner = Runner(spec)
    results: dict[str, Any] = {}
    try:
        for size in spec["sizes"]:
            day = spec["batches"][str(size)]["day"]
            label = label_of(size)
            runner.recreate(TABLES["e2e"])
            warm, parts, warm_run = runner.end_to_end(day)  # untimed: first-use costs, and the rows of (b)-(d)
            runner.check(TABLES["e2e"], size, fingerprint=False)
            files = runner.copy_files(parts, day, Path(spec["copy_dir"]), size)
            floor = runner.floor(parts, day)
            print(f"{label}: warm-up end to end {warm['total']:.1f} s; CSV {files['csv'].stat().st_size / MB:.0f} MB, "
                  f"binary {files['binary'].stat().st_size / MB:.0f} MB; loading the champion "
                  f"{floor['model_load']:.2f} s, LightGBM's predict_proba {floor['lightgbm_predict']:.2f} s "
                  f"({floor['lightgbm_threads']} thread), the feature step {floor['features_transform']:.2f} s, "
                  f"the champion's whole predict_proba {floor['model_predict_proba']:.2f} s", flush=True)  # fmt: skip
            times: dict[str, list[float]] = {m: [] for m in METHODS}
            phases: dict[str, list[float]] = {}
            prints: dict[str, str | None] = {}
            for r in range(spec["rounds"]):
                order = METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]
                for method in order:
                    table = TABLES[method]
                    runner.recreate(table)
                    load, detail = load_average(), ""
                    if method == "e2e":
                        split, _, run_id = runner.end_to_end(day)
                        seconds = split["total"]
                        for phase, value in split.items():
                            phases.setdefault(phase, []).append(value)
                        detail = (
                            f"  stage {split['stage']:.2f} + score {split['score']:.2f} + write {split['write']:.2f}"
                        )
                        runner.forget(run_id)
                    elif method == "write":
                        seconds = runner.write_alone(parts, day, table)
                    elif method == "copy":
                        seconds = runner.server_copy(files["csv"], table, "csv")
                    else:
                        seconds = runner.server_copy(files["binary"], table, "binary")
                    found = runner.check(table, size, fingerprint=r == 0)
                    if r == 0:
                        prints[method] = found
                    runner.drop(table)
                    times[method].append(seconds)
                    print(f"  round {r + 1} {label:>4s} {NAMES[method]:22s} {seconds:7.2f} s  "
                          f"{size / seconds:10,.0f} rows/s  (load {load}){detail}", flush=True)  # fmt: skip
            if len(set(prints.values())) != 1:
                raise RuntimeError(f"{label}: the tables hold different rows: {prints}")
            runner.forget(warm_run)
            for path in files.values():
                path.unlink()
            results[str(size)] = {"seconds": times, "e2e_phases": phases, "floor": floor, "warmup": warm}
    finally:
        runner.drop(TABLES["e2e"])
        runner.engine.dispose()
    print(MARKER + json.dumps(results), flush=True)


# --- peak memory of (a), in a fresh process per size ---------------------------------------------------------------


def current_rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def memory(spec: dict[str, Any], size: int) -> None:
    """One end-to-end run in this fresh process: its peak RSS (ru_maxrss), and the RSS before it started."""
    import lightgbm  # noqa: F401 - imported before the baseline, as the task's imports are
    import mlflow  # noqa: F401
    import sklearn  # noqa: F401

    from lifecycle.ml import scoring  # noqa: F401
    from lifecycle.tasks import batch_scoring  # noqa: F401

    runner = Runner(spec)
    runner.recreate(runner.config.prediction.table)
    baseline = current_rss_mb()
    seconds, _, run_id = runner.end_to_end(spec["batches"][str(size)]["day"])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    runner.forget(run_id)
    runner.drop(runner.config.prediction.table)
    runner.engine.dispose()
    report = {
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "seconds": round(seconds["total"], 2),
    }
    print(MARKER + json.dumps(report), flush=True)


# --- the parent: small, it starts the children and prints the table -----------------------------------------------


def in_child(env: dict[str, str], *args: str, echo: bool = False) -> dict[str, Any]:
    """Run this script with `args` in a fresh interpreter; its marker line as a dict (other lines echoed)."""
    process = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env)  # fmt: skip
    found, lines = None, []
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(MARKER):
            found = json.loads(line[len(MARKER) :])
        else:
            lines.append(line)
            if echo:
                print(line, end="", flush=True)
    stderr = process.stderr.read() if process.stderr else ""
    if process.wait() != 0 or found is None:
        raise RuntimeError(f"{args[0]} failed ({process.returncode}):\n{''.join(lines)[-3000:]}{stderr[-5000:]}")
    return found


def postgres_helper() -> Any:
    spec = importlib.util.spec_from_file_location("lifecycle_tests_postgres", REPO / "tests/integration/postgres.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def median_ratio(copy: list[float], other: list[float]) -> float:
    """(c)'s seconds over the other's, round by round, then the median: the other's speed relative to COPY."""
    return statistics.median(c / o for c, o in zip(copy, other, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated batch sizes (rows)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=50_000, help="prediction.chunk_size (its default)")
    parser.add_argument("--train-days", type=int, default=14)
    parser.add_argument("--train-rows", type=int, default=1_000, help="training rows per day")
    parser.add_argument("--skip-memory", action="store_true", help="no peak-RSS children")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    parser.add_argument("--child", nargs=2, metavar=("ROLE", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        role, spec = args.child[0], json.loads(Path(args.child[1]).read_text())
        if role == "prepare":
            prepare(spec)
        elif role == "rounds":
            rounds(spec)
        else:  # a batch size: its peak memory
            memory(spec, int(role))
        return

    sizes = sorted(int(s) for s in args.sizes.split(",") if s)

    def stop_on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # the finally blocks below drop the database and delete the folder

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    load_start = load_average()
    root = Path(tempfile.mkdtemp(prefix="batch-to-postgres-"))
    try:
        env = os.environ | {
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "MLFLOW_ARTIFACT_ROOT": str(root / "mlartifacts"),
            "ARTIFACT_ROOT": f"file://{root / 'artifacts'}",
            "DATA_ROOT": str(root / "data"),
            "TMPDIR": str(root / "tmp"),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
        (root / "tmp").mkdir()
        os.chmod(root, 0o755)  # the server reads and writes the COPY files under root/copy
        with postgres_helper().throwaway_database("lifecycle_bench") as url:
            env["AIRFLOW_CONN_PREDICTIONS_DB"] = url
            spec: dict[str, Any] = {"root": str(root), "database_url": url, "sizes": sizes, "rounds": args.rounds,
                                    "chunk_size": args.chunk_size, "train_days": args.train_days,
                                    "train_rows": args.train_rows, "copy_dir": str(root / "copy")}  # fmt: skip
            spec_file = root / "spec.json"
            spec_file.write_text(json.dumps(spec))
            prepared = in_child(env, "--child", "prepare", str(spec_file))
            spec |= {"champion": prepared["champion"], "batches": prepared["batches"]}
            spec_file.write_text(json.dumps(spec))
            model = prepared["model"]
            print(f"PostgreSQL database {url.rsplit('/', 1)[-1]}; load average {load_start} at start, "
                  f"{os.cpu_count()} CPUs")  # fmt: skip
            print(f"champion: LightGBM {PARAMS}, {model['rows']:,} training rows, calibration "
                  f"{model['calibration']}, version {model['version']} ({model['seconds']} s to train and log)")  # fmt: skip
            files = ", ".join(f"{label_of(s)} rows {prepared['batches'][str(s)]['mb']} MB" for s in sizes)
            print(f"scoring partitions: {files}; chunks of {args.chunk_size:,} rows; {args.rounds} rounds, "
                  "order rotating")  # fmt: skip
            measured = in_child(env, "--child", "rounds", str(spec_file), echo=True)
            peaks = {} if args.skip_memory else {s: in_child(env, "--child", str(s), str(spec_file)) for s in sizes}
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print()
    print(f"{'rows':>9s} {'method':22s} {'median s':>9s} {'rows/s':>10s} {'speed / (c)':>12s}")
    summary: dict[str, Any] = {}
    for size in sizes:
        times = measured[str(size)]["seconds"]
        medians = {m: statistics.median(t) for m, t in times.items()}
        ratios = {m: median_ratio(times["copy"], times[m]) for m in METHODS}
        for method in METHODS:
            print(f"{size:9,d} {NAMES[method]:22s} {medians[method]:9.2f} {size / medians[method]:10,.0f} "
                  f"{ratios[method]:11.2f}x")  # fmt: skip
        write_vs_binary = median_ratio(times["copy_binary"], times["write"])
        phases = {p: statistics.median(v) for p, v in measured[str(size)]["e2e_phases"].items()}
        floor = measured[str(size)]["floor"]
        print(f"{'':10s}(a) = stage {phases['stage']:.2f} + score {phases['score']:.2f} + write {phases['write']:.2f} s "
              f"(medians); scoring's floor: LightGBM {floor['lightgbm_predict']:.2f} s + the feature step "
              f"{floor['features_transform']:.2f} s on one thread, loading the champion {floor['model_load']:.2f} s; "
              f"(b) / (d): {write_vs_binary:.2f}x")  # fmt: skip
        summary[str(size)] = {
            "median_seconds": {m: round(s, 3) for m, s in medians.items()},
            "rows_per_second": {m: round(size / s) for m, s in medians.items()},
            "speed_vs_server_copy_csv": {m: round(r, 3) for m, r in ratios.items()},
            "write_speed_vs_server_copy_binary": round(write_vs_binary, 3),
            "per_round_seconds": {m: [round(s, 3) for s in t] for m, t in times.items()},
            "e2e_phase_median_seconds": {p: round(s, 3) for p, s in phases.items()},
            "floor_seconds": {k: round(v, 3) if isinstance(v, float) else v for k, v in floor.items()},
        }
    print("(speed / (c): (c)'s seconds over this method's in the same round, the median over rounds; above 1x is "
          "faster than the server's COPY FROM a CSV file. Targets: (a) >= 0.5x, (b) >= 0.7x)")  # fmt: skip
    memory_ratio = None
    if peaks:
        print()
        print(f"{'rows':>9s} {'peak RSS MB':>12s} {'RSS before MB':>14s} {'seconds':>8s}   (a) in a fresh process")
        for size, peak in peaks.items():
            print(f"{size:9,d} {peak['peak_rss_mb']:12.1f} {peak['baseline_rss_mb']:14.1f} {peak['seconds']:8.1f}")
        small, big = peaks[sizes[0]], peaks[sizes[-1]]
        memory_ratio = round(big["peak_rss_mb"] / small["peak_rss_mb"], 2)
        print(f"peak RSS {label_of(sizes[-1])} / {label_of(sizes[0])}: {memory_ratio}x (target: flat, <= 1.3x)")
    result = {
        "benchmark": "batch_to_postgres",
        "sizes": sizes,
        "rounds": args.rounds,
        "chunk_size": args.chunk_size,
        "model": prepared["model"],
        "results": summary,
        "peak_rss": {str(s): p for s, p in peaks.items()},
        "peak_rss_ratio_big_over_small": memory_ratio,
        "load_average_1m": {"start": load_start, "end": load_average()},
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
