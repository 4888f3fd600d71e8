"""The predictions table and the drift history on real databases: PostgreSQL (COPY + swap) and SQLite (batched).

Every test runs on both. PostgreSQL comes from `postgres.py` next to this file (TEST_POSTGRES_URL, else
127.0.0.1:5432, else a throwaway cluster; a database of this session's own either way); SQLite is a file in
tmp_path. Each test writes to tables of its own, so tests never see each other's rows.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from lifecycle.ml import drift
from lifecycle.persistence import drift_store
from lifecycle.persistence.predictions_db import (
    COLUMNS,
    PredictionWriteError,
    chunks_of,
    count_batch,
    engine_for,
    ensure_table,
    predictions_table,
    write_batch,
)

pytestmark = pytest.mark.timeout(120)

PIPELINE = "demo_churn"
DAY = dt.date(2026, 3, 1)
SCORED_AT = dt.datetime(2026, 3, 2, 6, 0, 0, 123000, tzinfo=dt.UTC)
ROWS = 5_000
CHUNK = 1_000
BOTH = ["postgresql", "sqlite"]


@dataclass
class Database:
    dialect: str
    url: str
    engine: sa.Engine
    table: str  # a predictions table name of this test's own

    def other_engine(self) -> sa.Engine:
        """A second engine, as another process (an Airflow task or a dashboard) would have."""
        return engine_for(self.url)


@pytest.fixture(params=BOTH)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'predictions.db'}"
    engine = engine_for(url)
    try:
        yield Database(request.param, url, engine, f"predictions_{uuid.uuid4().hex[:10]}")
    finally:
        engine.dispose()


# --- helpers ------------------------------------------------------------------------------------------------------


def make_rows(
    n: int = ROWS,
    pipeline: str = PIPELINE,
    batch_key: dt.date = DAY,
    version: str = "3",
    seed: int = 0,
    first_id: int = 0,
) -> list[tuple[Any, ...]]:
    """n prediction rows in COLUMNS order; `version` and `seed` tell one version of a batch from another."""
    rng = random.Random(f"{pipeline}/{batch_key}/{seed}")
    rows = []
    for i in range(first_id, first_id + n):
        score = round(rng.random(), 6)
        rows.append(
            (pipeline, batch_key, f"acct-{i:07d}", score, "1" if score >= 0.3 else "0", "demo_churn-model",
             version, f"scheduled__{batch_key}T06:00:00+00:00#{seed}", SCORED_AT)
        )  # fmt: skip
    return rows


def as_arrow(chunk: list[tuple[Any, ...]]) -> Any:
    """The chunk as batch prediction hands it over (lifecycle.ml.scoring.prediction_rows): an Arrow table."""
    import pyarrow as pa

    text = pa.string()
    schema = pa.schema([("pipeline", text), ("batch_key", pa.date32()), ("entity_id", text), ("score", pa.float64()),
                        ("label", text), ("model_name", text), ("model_version", text), ("airflow_run_id", text),
                        ("scored_at", pa.timestamp("us", tz="UTC"))])  # fmt: skip
    return pa.table({name: [row[i] for row in chunk] for i, name in enumerate(COLUMNS)}, schema=schema)


def chunked(rows: list[tuple[Any, ...]], size: int = CHUNK) -> Iterator[Any]:
    """Every other chunk as Arrow (PostgreSQL: binary COPY), the others as tuples: every test writes both ways."""
    for i, chunk in enumerate(chunks_of(rows, size)):
        yield as_arrow(chunk) if i % 2 else chunk


def failing_after(rows: list[tuple[Any, ...]], good_chunks: int = 2) -> Iterator[list[tuple[Any, ...]]]:
    """Yields `good_chunks` chunks, then fails like a scored part that cannot be read."""
    for i, chunk in enumerate(chunked(rows)):
        if i == good_chunks:
            raise OSError("scores part-00002 is truncated")
        yield chunk


def pausing_after_first(
    rows: list[tuple[Any, ...]], inside: threading.Event, release: threading.Event
) -> Iterator[list[tuple[Any, ...]]]:
    """Yields one chunk, signals that the writer is inside its transaction, waits to be released, yields the rest."""
    for i, chunk in enumerate(chunked(rows)):
        yield chunk
        if i == 0:
            inside.set()
            if not release.wait(60):
                raise TimeoutError("the test never released the writer")


def _normal(value: Any) -> Any:
    if isinstance(value, dt.datetime):  # PostgreSQL returns timestamptz aware, SQLite naive UTC
        return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
    return value


def normalized(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(tuple(_normal(v) for v in row) for row in rows)


def contents(
    engine: sa.Engine, table_name: str, pipeline: str | None = None, batch_key: dt.date | None = None
) -> list[tuple[Any, ...]]:
    """The table's rows (or one pipeline's, or one batch's) in COLUMNS order, sorted and normalised."""
    table = predictions_table(sa.MetaData(), table_name)
    query = sa.select(*[table.c[name] for name in COLUMNS])
    if pipeline is not None:
        query = query.where(table.c.pipeline == pipeline)
    if batch_key is not None:
        query = query.where(table.c.batch_key == batch_key)
    with engine.connect() as conn:
        return normalized([tuple(row) for row in conn.execute(query)])


def run_in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            outcome["result"] = target()
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = err

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, outcome


def finished(thread: threading.Thread, outcome: dict[str, Any], timeout: float = 60) -> Any:
    thread.join(timeout)
    assert not thread.is_alive(), "the writer thread did not finish"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def wait_for_advisory_lock_waiter(
    engine: sa.Engine, thread: threading.Thread, outcome: dict[str, Any], timeout: float = 20
) -> None:
    """Until some session of this database waits on an advisory lock (the second writer queued behind the first)."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
    )
    deadline = time.monotonic() + timeout
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            if conn.execute(query).scalar_one():
                return
            if not thread.is_alive():
                result = finished(thread, outcome)  # raises the writer's error, if any
                raise AssertionError(f"the second writer finished ({result} rows) without waiting for the first")
            time.sleep(0.05)
        sessions = conn.execute(
            sa.text(
                "SELECT pid, state, wait_event_type, wait_event, left(query, 80) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).all()
    raise AssertionError(f"the second writer never waited on the batch's advisory lock; sessions: {sessions}")


# --- writing a batch -----------------------------------------------------------------------------------------------


def test_write_batch_counts_and_unique_key(db: Database) -> None:
    rows = make_rows()
    assert write_batch(db.engine, db.table, PIPELINE, DAY, chunked(rows)) == ROWS

    assert count_batch(db.engine, db.table, PIPELINE, DAY) == ROWS
    assert contents(db.engine, db.table) == normalized(rows)  # every value round-trips, nothing else is there

    unique = sa.inspect(db.engine).get_unique_constraints(db.table)
    assert ["pipeline", "batch_key", "entity_id"] in [c["column_names"] for c in unique]
    table = predictions_table(sa.MetaData(), db.table)
    duplicate = dict(zip(COLUMNS, rows[1234], strict=True)) | {"score": 0.5, "model_version": "4"}
    with pytest.raises(sa.exc.IntegrityError), db.engine.begin() as conn:
        conn.execute(sa.insert(table), duplicate)
    assert count_batch(db.engine, db.table, PIPELINE, DAY) == ROWS


def test_same_batch_twice_leaves_exactly_one_copy(db: Database) -> None:
    rows = make_rows()
    write_batch(db.engine, db.table, PIPELINE, DAY, chunked(rows))
    first = contents(db.engine, db.table)
    assert write_batch(db.engine, db.table, PIPELINE, DAY, chunked(rows, 700)) == ROWS
    assert contents(db.engine, db.table) == first == normalized(rows)

    # A rerun with another model and fewer rows replaces the batch: no stale rows of the first version stay.
    smaller = make_rows(ROWS - 1_500, version="4", seed=1, first_id=500)
    assert write_batch(db.engine, db.table, PIPELINE, DAY, chunked(smaller)) == len(smaller)
    assert contents(db.engine, db.table) == normalized(smaller)


def test_failed_write_keeps_the_previous_version_then_a_rerun_replaces_it(db: Database) -> None:
    previous = make_rows(version="3", seed=0)
    write_batch(db.engine, db.table, PIPELINE, DAY, chunked(previous))
    new = make_rows(ROWS + 200, version="4", seed=1)

    with pytest.raises(PredictionWriteError) as failure:
        write_batch(db.engine, db.table, PIPELINE, DAY, failing_after(new, good_chunks=2))
    message = str(failure.value)
    assert str(DAY) in message and PIPELINE in message and db.table in message and "truncated" in message
    assert contents(db.engine, db.table) == normalized(previous)  # no partial batch, no loss

    # A batch that breaks the unique key mid-way (the same entity twice) is refused the same way.
    twice = [*new[:3000], new[10], *new[3000:]]
    with pytest.raises(PredictionWriteError, match=str(DAY)):
        write_batch(db.engine, db.table, PIPELINE, DAY, chunked(twice))
    assert contents(db.engine, db.table) == normalized(previous)

    # The retry (on the same engine: its pooled connections must be clean after the failures) succeeds.
    assert write_batch(db.engine, db.table, PIPELINE, DAY, chunked(new)) == len(new)
    assert contents(db.engine, db.table) == normalized(new)
    assert count_batch(db.engine, db.table, PIPELINE, DAY) == len(new)


def test_a_rewrite_leaves_other_batches_and_pipelines_untouched(db: Database) -> None:
    others = {
        (PIPELINE, DAY - dt.timedelta(days=1)): make_rows(3_000, batch_key=DAY - dt.timedelta(days=1)),
        (PIPELINE, DAY + dt.timedelta(days=1)): make_rows(2_000, batch_key=DAY + dt.timedelta(days=1)),
        ("other_pipeline", DAY): make_rows(4_000, pipeline="other_pipeline"),  # same day and entity ids
    }
    for (pipeline, key), rows in others.items():
        write_batch(db.engine, db.table, pipeline, key, chunked(rows))
    write_batch(db.engine, db.table, PIPELINE, DAY, chunked(make_rows(version="3")))
    before = {key: contents(db.engine, db.table, *key) for key in others}

    rewrite = make_rows(ROWS - 1_000, version="4", seed=7)
    write_batch(db.engine, db.table, PIPELINE, DAY, chunked(rewrite))
    with pytest.raises(PredictionWriteError):
        write_batch(db.engine, db.table, PIPELINE, DAY, failing_after(make_rows(version="5", seed=8)))

    assert contents(db.engine, db.table, PIPELINE, DAY) == normalized(rewrite)
    for key, rows in others.items():
        assert contents(db.engine, db.table, *key) == before[key] == normalized(rows)
    assert len(contents(db.engine, db.table)) == len(rewrite) + sum(len(r) for r in others.values())


def test_readers_never_see_a_half_written_batch(db: Database) -> None:
    old, new = make_rows(version="3", seed=0), make_rows(ROWS + 300, version="4", seed=1)
    write_batch(db.engine, db.table, PIPELINE, DAY, chunked(old))
    reader = db.other_engine()
    inside, release = threading.Event(), threading.Event()
    try:
        writer, outcome = run_in_thread(
            lambda: write_batch(db.engine, db.table, PIPELINE, DAY, pausing_after_first(new, inside, release))
        )
        assert inside.wait(30), "the writer never started"
        # The writer is inside its transaction with the first chunk sent: another connection sees the old batch.
        assert count_batch(reader, db.table, PIPELINE, DAY) == len(old)
        assert contents(reader, db.table) == normalized(old)
        release.set()
        assert finished(writer, outcome) == len(new)
        assert count_batch(reader, db.table, PIPELINE, DAY) == len(new)
        assert contents(reader, db.table) == normalized(new)
    finally:
        release.set()
        reader.dispose()


def test_two_concurrent_writes_of_a_batch_leave_one_copy(db: Database) -> None:
    write_batch(db.engine, db.table, PIPELINE, DAY, chunked(make_rows(version="2", seed=9)))
    versions = [make_rows(version="3", seed=0), make_rows(ROWS + 500, version="4", seed=1)]
    engines = [db.engine, db.other_engine()]  # as two Airflow tasks would: separate processes, separate pools
    start = threading.Barrier(2)

    def writer(i: int) -> int:
        start.wait(10)
        return write_batch(engines[i], db.table, PIPELINE, DAY, chunked(versions[i]))

    try:
        running = [run_in_thread(lambda i=i: writer(i)) for i in range(2)]
        assert [finished(*r) for r in running] == [len(v) for v in versions]
    finally:
        engines[1].dispose()
    assert contents(db.engine, db.table) in (normalized(versions[0]), normalized(versions[1]))


def test_a_second_write_waits_for_a_slow_first_one(db: Database) -> None:
    """The second write of a batch arrives while the first is still streaming: it must wait, not fail.

    On SQLite the wait is longer than pysqlite's default 5 s busy timeout, which engine_for must raise.
    """
    old = make_rows(version="2", seed=9)
    write_batch(db.engine, db.table, PIPELINE, DAY, chunked(old))
    first, second = make_rows(version="3", seed=0), make_rows(ROWS + 500, version="4", seed=1)
    other = db.other_engine()
    inside, release = threading.Event(), threading.Event()
    try:
        slow, slow_outcome = run_in_thread(
            lambda: write_batch(db.engine, db.table, PIPELINE, DAY, pausing_after_first(first, inside, release))
        )
        assert inside.wait(30), "the first writer never started"
        queued, queued_outcome = run_in_thread(lambda: write_batch(other, db.table, PIPELINE, DAY, chunked(second)))
        if db.dialect == "postgresql":
            wait_for_advisory_lock_waiter(other, queued, queued_outcome)
        else:
            time.sleep(6)  # a large batch still streaming: longer than pysqlite's default 5 s busy timeout
        assert count_batch(other, db.table, PIPELINE, DAY) == len(old)
        release.set()
        assert finished(slow, slow_outcome) == len(first)
        assert finished(queued, queued_outcome) == len(second)
    finally:
        release.set()
        other.dispose()
    assert contents(db.engine, db.table) == normalized(second)  # the later write wins, whole


def _race_table_creation(monkeypatch: pytest.MonkeyPatch, engine: sa.Engine) -> None:
    """Make the check-then-create window of create_all(checkfirst=True) deterministic.

    The first has_table check of each of two threads waits for the other thread's check, so both look before
    either creates, as two tasks starting together on a fresh database do. It never waits longer than 3 s, so
    a fix that serialises creation (a lock) does not deadlock here.
    """
    barrier, seen = threading.Barrier(2), threading.local()
    original = engine.dialect.has_table

    def has_table(connection: Any, table_name: str, *args: Any, **kwargs: Any) -> bool:
        found = original(connection, table_name, *args, **kwargs)
        if not getattr(seen, "done", False):
            seen.done = True
            try:
                barrier.wait(3)
            except threading.BrokenBarrierError:
                pass
        return found

    monkeypatch.setattr(engine.dialect, "has_table", has_table)


def test_first_writes_on_a_fresh_database_race_to_create_the_table(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    _race_table_creation(monkeypatch, db.engine)
    days = [DAY, DAY + dt.timedelta(days=1)]
    running = [
        run_in_thread(lambda d=d: write_batch(db.engine, db.table, PIPELINE, d, chunked(make_rows(batch_key=d))))
        for d in days
    ]
    assert [finished(*r) for r in running] == [ROWS, ROWS]
    for day in days:
        assert count_batch(db.engine, db.table, PIPELINE, day) == ROWS


# --- drift history -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drift_result() -> dict[str, Any]:
    """A real drift.check result (features, prediction and performance), to record as the DAG does."""
    from lifecycle.config.pipeline import load_pipeline
    from lifecycle.devtools import demo_data

    config = load_pipeline(Path(__file__).resolve().parents[2] / "include" / "pipelines" / "demo_churn.yaml")
    accounts = demo_data.accounts()
    reference_frame = demo_data.activity(dt.date(2026, 1, 5), 2_000).merge(accounts, on="account_id")
    current = demo_data.activity(DAY, 2_000, drift_from=DAY).merge(accounts, on="account_id")
    numeric, categorical = list(config.features.numeric), list(config.features.categorical)
    reference = drift.reference_profile(reference_frame, numeric, categorical)
    reference["prediction"] = drift.numeric_profile(pd.Series(np.random.default_rng(0).random(2_000)))
    scores = np.random.default_rng(1).beta(2, 5, len(current))
    performance = {"metric": "roc_auc", "holdout": 0.81, "current": np.float64(0.72), "rows": 2000,
                   "drop": np.float64(0.81) - np.float64(0.72), "threshold": config.drift.max_performance_drop}  # fmt: skip
    return drift.check(reference, current, scores, config.drift, performance)


def verdict(result: dict[str, Any], drifted: bool) -> dict[str, Any]:
    return {**result, "dataset_drift": drifted}


def stored_rows(engine: sa.Engine, metrics_table: str, pipeline: str, batch_key: dt.date) -> list[sa.Row]:
    metrics, _ = drift_store.tables(sa.MetaData(), metrics_table)
    query = (
        sa.select(metrics)
        .where(metrics.c.pipeline == pipeline, metrics.c.batch_key == batch_key)
        .order_by(metrics.c.feature)
    )
    with engine.connect() as conn:
        return conn.execute(query).all()


def test_drift_record_twice_leaves_one_set_of_rows(db: Database, drift_result: dict[str, Any]) -> None:
    metrics_table = f"drift_{uuid.uuid4().hex[:10]}"
    expected = {*drift_result["features"], "__prediction__", "__performance__", "__dataset__"}
    recorded = drift_store.record(db.engine, metrics_table, PIPELINE, DAY, drift_result, "3", "run-1")
    assert recorded == len(expected)
    drift_store.record(db.engine, metrics_table, PIPELINE, DAY - dt.timedelta(days=1), drift_result, "3", "run-0")

    again = verdict(drift_result, not drift_result["dataset_drift"])
    assert drift_store.record(db.engine, metrics_table, PIPELINE, DAY, again, "4", "run-2") == len(expected)

    rows = stored_rows(db.engine, metrics_table, PIPELINE, DAY)
    assert sorted(r.feature for r in rows) == sorted(expected)  # one set, not two
    assert {(r.model_version, r.airflow_run_id) for r in rows} == {("4", "run-2")}
    dataset = next(r for r in rows if r.feature == "__dataset__")
    assert dataset.drifted is (not drift_result["dataset_drift"])
    assert dataset.value == pytest.approx(drift_result["drifted_share"])
    performance = next(r for r in rows if r.feature == "__performance__")
    assert performance.drifted is True and performance.value == pytest.approx(0.09)
    assert len(stored_rows(db.engine, metrics_table, PIPELINE, DAY - dt.timedelta(days=1))) == len(expected)


def test_dataset_history_is_oldest_first_and_limited(db: Database, drift_result: dict[str, Any]) -> None:
    metrics_table = f"drift_{uuid.uuid4().hex[:10]}"
    verdicts = [True, False, True, True, False, True]
    days = [DAY + dt.timedelta(days=i) for i in range(len(verdicts))]
    for day, drifted in reversed(list(zip(days, verdicts, strict=True))):  # recorded out of order
        drift_store.record(db.engine, metrics_table, PIPELINE, day, verdict(drift_result, drifted), "3", f"r-{day}")
    for day in days:  # another pipeline's verdicts never leak in
        drift_store.record(db.engine, metrics_table, "other", day, verdict(drift_result, True), "1", f"o-{day}")

    def history(day: dt.date, last: int) -> list[bool]:
        return drift_store.dataset_history(db.engine, metrics_table, PIPELINE, day, last)

    assert history(days[3], 3) == verdicts[1:4]
    assert history(days[4], 2) == verdicts[3:5]
    assert history(days[-1], 100) == verdicts
    assert history(days[0], 3) == verdicts[:1]
    assert history(DAY - dt.timedelta(days=1), 3) == []
    drift_store.record(db.engine, metrics_table, PIPELINE, days[3], verdict(drift_result, False), "4", "rerun")
    assert history(days[3], 3) == [False, True, False]


def test_days_since_last_request(db: Database, drift_result: dict[str, Any]) -> None:
    metrics_table = f"drift_{uuid.uuid4().hex[:10]}"
    # retrain_requests is one table for every pipeline and test: a pipeline of this test's own, so a request
    # that another test's DAG run recorded in the same database cannot show up here.
    pipeline = f"{PIPELINE}_{uuid.uuid4().hex[:8]}"
    assert drift_store.days_since_last_request(db.engine, metrics_table, pipeline, DAY) is None
    drift_store.record_request(db.engine, metrics_table, pipeline, DAY, "drift on day 1", "run-1")
    drift_store.record_request(db.engine, metrics_table, pipeline, DAY, "drift on day 1 (rerun)", "run-2")
    drift_store.record_request(db.engine, metrics_table, "other", DAY + dt.timedelta(days=8), "other", "o-1")

    assert drift_store.days_since_last_request(db.engine, metrics_table, pipeline, DAY) is None  # strictly before
    assert drift_store.days_since_last_request(db.engine, metrics_table, pipeline, DAY + dt.timedelta(days=1)) == 1
    assert drift_store.days_since_last_request(db.engine, metrics_table, pipeline, DAY + dt.timedelta(days=10)) == 10
    drift_store.record_request(db.engine, metrics_table, pipeline, DAY + dt.timedelta(days=7), "again", "run-3")
    assert drift_store.days_since_last_request(db.engine, metrics_table, pipeline, DAY + dt.timedelta(days=10)) == 3

    _, requests = drift_store.tables(sa.MetaData(), metrics_table)
    with db.engine.connect() as conn:
        stored = conn.execute(sa.select(requests.c.batch_key, requests.c.reason).where(requests.c.pipeline == pipeline))
        assert sorted(stored.all()) == [(DAY, "drift on day 1 (rerun)"), (DAY + dt.timedelta(days=7), "again")]


def test_first_drift_records_on_a_fresh_database_race_to_create_the_tables(
    db: Database, drift_result: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics_table = f"drift_{uuid.uuid4().hex[:10]}"
    _race_table_creation(monkeypatch, db.engine)
    days = [DAY, DAY + dt.timedelta(days=1)]
    running = [
        run_in_thread(lambda d=d: drift_store.record(db.engine, metrics_table, PIPELINE, d, drift_result, "3", "r"))
        for d in days
    ]
    assert [finished(*r) for r in running] == [len(drift_store.metric_rows(drift_result))] * 2


def test_ensure_table_is_idempotent(db: Database) -> None:
    """Sanity for the race tests above: sequential calls never fail and keep the rows."""
    ensure_table(db.engine, db.table)
    write_batch(db.engine, db.table, PIPELINE, DAY, chunked(make_rows(10)))
    ensure_table(db.engine, db.table)
    assert count_batch(db.engine, db.table, PIPELINE, DAY) == 10
