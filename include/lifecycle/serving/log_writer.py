"""The online prediction log: rows queued in memory by requests, inserted in batches by one thread.

A request only appends its rows to a bounded in-memory queue, so its latency never depends on the
database. The writer inserts up to `batch_rows` at a time whenever `flush_seconds` pass or a batch is
full, and drops rows from the queue only after their insert committed: while the database is down it
retries with backoff (up to 10 s apart) and keeps every row. When the queue is full, `offer` refuses and
the request is answered 503 instead: a prediction is returned only if its row is queued, so the table
holds exactly one row per returned prediction (shadow rows that do not fit are dropped and counted).
On a clean shutdown `close` writes what is queued, retrying until its deadline.

With a positional DBAPI (SQLite's) the INSERT is compiled once and the DBAPI's executemany gets the queued rows
processed by the columns' bind processors (text timestamps, 0/1 booleans): SQLAlchemy's executemany builds and
processes a dict per row, twice the CPU (~1 ms per 100 rows, as much as a 100-row request's own checks and
answer, in the same process). psycopg's named parameters keep SQLAlchemy's insertmanyvalues, as fast there.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from lifecycle.persistence.predictions_db import create_tables

log = logging.getLogger(__name__)

TABLE = "online_predictions"
COLUMNS = (
    "pipeline",
    "request_id",
    "row_index",
    "entity_id",
    "arm",
    "model_name",
    "model_version",
    "score",
    "label",
    "predicted_at",
    "shadow",
)
MAX_BACKOFF_SECONDS = 10.0
_Processors = tuple[tuple[int, Callable[[Any], Any]], ...]  # (place in COLUMNS, bind processor)


def online_predictions_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        TABLE,
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("pipeline", sa.String(100), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),  # one per request, returned with every row
        sa.Column("row_index", sa.Integer, nullable=False),  # the row's place in its request
        sa.Column("entity_id", sa.String(200), nullable=False),  # the id column's value, as text
        sa.Column("arm", sa.String(20), nullable=False),  # champion | challenger
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(50), nullable=False),
        sa.Column("score", sa.Float, nullable=True),  # as scoring.predict: P(positive), top-class probability, value
        sa.Column("label", sa.String(200), nullable=True),  # the class; empty for regression
        sa.Column("predicted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("shadow", sa.Boolean, nullable=False),  # True: scored beside the answer, never returned
        # A retried insert whose first commit did succeed must not log a row twice.
        sa.UniqueConstraint("request_id", "row_index", "shadow", name=f"uq_{TABLE}_row"),
        sa.Index(f"ix_{TABLE}_pipeline_time", "pipeline", "predicted_at"),
    )


class PredictionLog:
    def __init__(
        self, engine: sa.Engine, *, capacity: int, batch_rows: int, flush_seconds: float, name: str = ""
    ) -> None:
        self.engine, self.name = engine, name or engine.url.render_as_string(hide_password=True)
        self.capacity, self.batch_rows, self.flush_seconds = capacity, batch_rows, flush_seconds
        self.table = online_predictions_table(sa.MetaData())
        self._rows: collections.deque[tuple[Any, ...]] = collections.deque()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._deadline = float("inf")
        self._thread: threading.Thread | None = None
        self.written = self.refused = self.failures = 0
        self.last_error: str | None = None
        self._direct: tuple[str, _Processors] | None = None  # set by the writer thread: see _direct_insert

    @property
    def queued(self) -> int:
        return len(self._rows)

    @property
    def full(self) -> bool:
        return len(self._rows) >= self.capacity

    def offer(self, rows: list[tuple[Any, ...]]) -> bool:
        """Queue the rows (tuples in COLUMNS order), all or none; False when they do not fit."""
        with self._lock:
            if len(self._rows) + len(rows) > self.capacity:
                self.refused += len(rows)
                return False
            self._rows.extend(rows)
            if len(self._rows) >= self.batch_rows:
                self._wake.set()
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"prediction-log {self.name}", daemon=True)
        self._thread.start()

    def close(self, timeout: float) -> int:
        """Write what is queued (retrying until `timeout` has passed); the number of rows that could not be."""
        self._deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout + 5)
        left = self.queued
        if left:
            log.error("prediction log %s: %d rows could not be written before shutdown: %s", self.name, left,
                      self.last_error)  # fmt: skip
        return left

    def stats(self) -> dict[str, Any]:
        return {
            "database": self.name,
            "queued": self.queued,
            "capacity": self.capacity,
            "written": self.written,
            "refused": self.refused,
            "failed_attempts": self.failures,
            "last_error": self.last_error,
        }

    def _run(self) -> None:
        backoff, table_ready = self.flush_seconds, False
        while True:
            if self._stopping.is_set():
                if not self._rows or time.monotonic() > self._deadline:
                    return
            else:
                self._wake.wait(self.flush_seconds)
                self._wake.clear()
            try:
                if not table_ready:
                    create_tables(self.engine, self.table.metadata)
                    self._direct = _direct_insert(self.table, self.engine.dialect)  # the dialect has connected
                    table_ready = True
                while self._rows:
                    self._write_batch()
                backoff = self.flush_seconds
            except Exception as err:
                self.failures += 1
                self.last_error = f"{type(err).__name__}: {err}"[:500]
                log.warning("prediction log %s: writing failed, %d rows kept, retrying in %.1fs: %s", self.name,
                            self.queued, backoff, self.last_error)  # fmt: skip
                pause = backoff if not self._stopping.is_set() else min(backoff, self._deadline - time.monotonic())
                time.sleep(max(0.0, pause))
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    def _write_batch(self) -> None:
        with self._lock:
            batch = list(itertools.islice(self._rows, self.batch_rows))
        try:
            with self.engine.begin() as conn:
                self._insert(conn, batch)
        except sa.exc.IntegrityError:  # an earlier attempt committed some of these: insert the rest one by one
            for record in (dict(zip(COLUMNS, row, strict=True)) for row in batch):
                try:
                    with self.engine.begin() as conn:
                        conn.execute(sa.insert(self.table), record)
                except sa.exc.IntegrityError as err:
                    log.warning("prediction log %s: row %s/%s not inserted (already logged?): %s", self.name,
                                record["request_id"], record["row_index"], err.orig)  # fmt: skip
        with self._lock:  # only this thread removes rows, and requests only append: these are the batch
            for _ in batch:
                self._rows.popleft()
        self.written += len(batch)

    def _insert(self, conn: sa.Connection, batch: list[tuple[Any, ...]]) -> None:
        if self._direct is None:
            conn.execute(sa.insert(self.table), [dict(zip(COLUMNS, row, strict=True)) for row in batch])
            return
        sql, processors = self._direct
        conn.exec_driver_sql(sql, [_processed(row, processors) for row in batch] if processors else batch)


def _direct_insert(table: sa.Table, dialect: sa.Dialect) -> tuple[str, _Processors] | None:
    """The INSERT of COLUMNS as the DBAPI's SQL and the columns' bind processors, when its parameters are
    positional in COLUMNS order (SQLite, MySQL); None for named ones (psycopg)."""
    compiled = sa.insert(table).compile(dialect=dialect, column_keys=list(COLUMNS))
    if compiled.positiontup != list(COLUMNS):
        return None
    processors = []
    for place, name in enumerate(COLUMNS):
        processor = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors.append((place, processor))
    return str(compiled), tuple(processors)


def _processed(row: tuple[Any, ...], processors: _Processors) -> tuple[Any, ...]:
    values = list(row)
    for place, processor in processors:
        values[place] = processor(values[place])
    return tuple(values)  # exec_driver_sql takes a list of tuples (or of dicts) as executemany
