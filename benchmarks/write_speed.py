"""Writing a prediction batch to SQL: the project's write_batch against raw COPY and pandas.to_sql, side by side.

The same N rows of the predictions table's shape (default 200,000) are written, each time into a freshly created
predictions table (same columns, unique key and index), by:

  PostgreSQL
    project        lifecycle.persistence.predictions_db.write_batch: delete + COPY straight into the table
                   under the batch's advisory lock, one transaction (the table starts empty)
    project-rerun  the same, replacing the batch already there (what a retried or re-run task does)
    raw-copy       psycopg COPY straight into the empty table, one transaction: the floor
    to_sql         pandas.DataFrame.to_sql(if_exists="append") with its defaults (no method, no chunksize)
  SQLite (a file)
    project        write_batch: delete + batched executemany inserts in one transaction
    to_sql         pandas.DataFrame.to_sql(if_exists="append") with its defaults

Only the write is timed: the rows (tuples for write_batch and COPY, a DataFrame for to_sql) are built beforehand.
The order rotates every round; the reported time is the median over `--rounds`. PostgreSQL is found like the
integration tests do (TEST_POSTGRES_URL, else 127.0.0.1:5432, else a throwaway cluster) and the benchmark runs in
a throwaway database of its own, dropped at the end.

    .venv/bin/python benchmarks/write_speed.py                       # 200,000 rows, 3 rounds
    .venv/bin/python benchmarks/write_speed.py --rows 50000 --rounds 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PIPELINE = "demo_churn"
BATCH = dt.date(2026, 3, 1)
CHUNK = 50_000  # the demo pipeline's prediction.chunk_size: what prediction_rows hands write_batch


def postgres_helper() -> Any:
    spec = importlib.util.spec_from_file_location("lifecycle_tests_postgres", REPO / "tests/integration/postgres.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_rows(n: int) -> list[tuple[Any, ...]]:
    """Rows in predictions_db.COLUMNS order, as lifecycle.ml.scoring.prediction_rows yields them."""
    rng = random.Random(7)
    scored_at = dt.datetime(2026, 3, 2, 6, 0, tzinfo=dt.UTC)
    run_id = "scheduled__2026-03-01T06:00:00+00:00"
    rows = []
    for i in range(n):
        score = rng.random()
        rows.append((PIPELINE, BATCH, str(100_000 + i), score, "1" if score >= 0.3 else "0",
                     "demo_churn", "7", run_id, scored_at))  # fmt: skip
    return rows


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


class Bench:
    """One database: every method writes into a new table; the time of the write alone is kept."""

    def __init__(self, url: str, rows: list[tuple[Any, ...]], frame: Any) -> None:
        from lifecycle.persistence.predictions_db import engine_for

        self.engine = engine_for(url)
        self.rows, self.frame = rows, frame
        self.serial = 0

    def fresh_table(self) -> str:
        from lifecycle.persistence.predictions_db import ensure_table

        self.serial += 1
        name = f"predictions_bench_{self.serial}"
        ensure_table(self.engine, name)
        return name

    def drop(self, name: str) -> None:
        import sqlalchemy as sa

        with self.engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))

    def count(self, name: str) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f'SELECT count(*) FROM "{name}"')).scalar_one())

    def run(self, method: str) -> float:
        from lifecycle.persistence.predictions_db import chunks_of, write_batch

        table = self.fresh_table()
        try:
            if method == "project":
                seconds = timed(lambda: write_batch(self.engine, table, PIPELINE, BATCH, chunks_of(self.rows, CHUNK)))
            elif method == "project-rerun":
                write_batch(self.engine, table, PIPELINE, BATCH, chunks_of(self.rows, CHUNK))
                seconds = timed(lambda: write_batch(self.engine, table, PIPELINE, BATCH, chunks_of(self.rows, CHUNK)))
            elif method == "raw-copy":
                seconds = timed(lambda: self.raw_copy(table))
            elif method == "to_sql":
                seconds = timed(lambda: self.frame.to_sql(table, self.engine, if_exists="append", index=False))
            else:
                raise ValueError(method)
            found = self.count(table)
            if found != len(self.rows):
                raise RuntimeError(f"{method}: {found} rows in the table, expected {len(self.rows)}")
            return seconds
        finally:
            self.drop(table)

    def raw_copy(self, table: str) -> None:
        from lifecycle.persistence.predictions_db import COLUMNS

        with self.engine.begin() as conn:
            raw = conn.connection.driver_connection
            with raw.cursor() as cursor, cursor.copy(f'COPY "{table}" ({", ".join(COLUMNS)}) FROM STDIN') as copy:
                for row in self.rows:
                    copy.write_row(row)


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def measure(bench: Bench, methods: list[str], rounds: int, label: str) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(rounds):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for method in order:
            seconds = bench.run(method)
            times[method].append(seconds)
            print(f"  round {r + 1} {label:10s} {method:14s} {seconds:7.2f} s  (load {load_average()})", flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-sqlite", action="store_true", help="only PostgreSQL")
    parser.add_argument("--out", type=Path, help="also write the JSON result here")
    args = parser.parse_args()

    import pandas as pd

    from lifecycle.persistence.predictions_db import COLUMNS

    rows = make_rows(args.rows)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    print(f"{args.rows:,} rows x {len(COLUMNS)} columns, {args.rounds} round(s), chunks of {CHUNK:,}")
    results: dict[str, dict[str, list[float]]] = {}
    load_before = load_average()

    with postgres_helper().throwaway_database("lifecycle_bench") as url:
        bench = Bench(url, rows, frame)
        with bench.engine.connect() as conn:
            server = conn.exec_driver_sql("SHOW server_version").scalar_one()
        print(f"PostgreSQL {server} (throwaway database {bench.engine.url.database})")
        try:
            results["postgresql"] = measure(
                bench, ["project", "project-rerun", "raw-copy", "to_sql"], args.rounds, "postgres"
            )
        finally:
            bench.engine.dispose()

    if not args.no_sqlite:
        with tempfile.TemporaryDirectory() as work:
            bench = Bench(f"sqlite:///{work}/bench.db", rows, frame)
            try:
                results["sqlite"] = measure(bench, ["project", "to_sql"], args.rounds, "sqlite")
            finally:
                bench.engine.dispose()

    medians = {db: {m: statistics.median(t) for m, t in methods.items()} for db, methods in results.items()}
    # Speed ratios (rows/s of one over rows/s of the other, i.e. the inverse ratio of times): above 1 is faster.
    pg = medians["postgresql"]
    ratios = {
        "postgresql_project_speed_vs_raw_copy": round(pg["raw-copy"] / pg["project"], 3),
        "postgresql_project_rerun_speed_vs_raw_copy": round(pg["raw-copy"] / pg["project-rerun"], 3),
        "postgresql_project_speed_vs_to_sql": round(pg["to_sql"] / pg["project"], 2),
    }
    if "sqlite" in medians:
        ratios["sqlite_project_speed_vs_to_sql"] = round(medians["sqlite"]["to_sql"] / medians["sqlite"]["project"], 2)

    print()
    print(
        f"{'database':10s} {'method':14s} {'median s':>9s} {'rows/s':>10s} {'speed/raw COPY':>15s} {'speed/to_sql':>13s}"
    )
    for db, methods in medians.items():
        for method, seconds in methods.items():
            vs_copy = f"{pg['raw-copy'] / seconds:.2f}x" if db == "postgresql" else "-"
            vs_to_sql = f"{methods['to_sql'] / seconds:.2f}x"
            print(f"{db:10s} {method:14s} {seconds:9.2f} {args.rows / seconds:10,.0f} {vs_copy:>15s} {vs_to_sql:>13s}")
    print("(speed/X: this method's rows/s divided by X's rows/s on the same database; above 1x is faster than X)")
    for key, value in ratios.items():
        print(f"{key}: {value}")

    result = {
        "benchmark": "write_speed",
        "rows": args.rows,
        "rounds": args.rounds,
        "chunk": CHUNK,
        "postgres_server": server,
        "load_average_1m": {"before": load_before, "after": load_average()},
        "seconds": {db: {m: [round(t, 3) for t in ts] for m, ts in methods.items()} for db, methods in results.items()},
        "median_seconds": {db: {m: round(s, 3) for m, s in ms.items()} for db, ms in medians.items()},
        "rows_per_second": {db: {m: round(args.rows / s) for m, s in ms.items()} for db, ms in medians.items()},
        "ratios": ratios,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
