"""Writing a prediction batch to SQL: all of it or none of it, exactly once per (pipeline, batch, entity).

PostgreSQL: COPY (psycopg) into a temporary staging table, then, in the same transaction and under an
advisory lock on the batch, delete the batch's old rows and insert the new ones. Readers see the old
batch or the new one, never half. Other databases: the same delete-and-insert in one transaction, with
batched executemany inserts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa

COLUMNS = [
    "pipeline",
    "batch_key",
    "entity_id",
    "score",
    "label",
    "model_name",
    "model_version",
    "airflow_run_id",
    "scored_at",
]


class PredictionWriteError(RuntimeError):
    """The batch could not be written; nothing of it was committed."""


def predictions_table(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("pipeline", sa.String(100), nullable=False),
        sa.Column("batch_key", sa.Date, nullable=False),
        sa.Column("entity_id", sa.String(200), nullable=False),
        sa.Column("score", sa.Float, nullable=True),  # P(positive), the top class's probability, or the value
        sa.Column("label", sa.String(200), nullable=True),  # the class at the threshold; empty for regression
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(50), nullable=False),
        sa.Column("airflow_run_id", sa.String(250), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("pipeline", "batch_key", "entity_id", name=f"uq_{name}_batch_entity"),
        sa.Index(f"ix_{name}_pipeline_batch", "pipeline", "batch_key"),
    )


def engine_for(url: str) -> sa.Engine:
    if url.startswith(("postgres://", "postgresql://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        # SQLite has one writer at a time: wait for it instead of failing with "database is locked".
        return sa.create_engine(url, connect_args={"timeout": 120})
    return sa.create_engine(url, pool_pre_ping=True)


def create_tables(engine: sa.Engine, metadata: sa.MetaData, attempts: int = 3) -> None:
    """create_all(checkfirst=True) that survives another task creating the same tables at the same moment.

    The existence check and the CREATE are separate statements: two writers on a fresh database can both
    see no table, and the later CREATE then fails (PostgreSQL: UniqueViolation on pg_type or DuplicateTable;
    SQLite: "table ... already exists"). Checking again finds the other writer's table and skips it.
    """
    for attempt in range(attempts):
        try:
            metadata.create_all(engine, checkfirst=True)
            return
        except sa.exc.DBAPIError:
            if attempt == attempts - 1:
                raise


def ensure_table(engine: sa.Engine, name: str) -> sa.Table:
    metadata = sa.MetaData()
    table = predictions_table(metadata, name)
    create_tables(engine, metadata)
    return table


def _lock_key(pipeline: str, batch_key: dt.date) -> int:
    digest = hashlib.sha256(f"{pipeline}/{batch_key.isoformat()}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def write_batch(
    engine: sa.Engine,
    table_name: str,
    pipeline: str,
    batch_key: dt.date,
    rows: Iterable[list[tuple[Any, ...]]],
    insert_chunk: int = 10_000,
) -> int:
    """Replace the batch's rows with `rows` (an iterable of chunks of tuples in COLUMNS order) atomically.

    Chunks are streamed, so memory is bounded by the chunk, not the batch. Returns the rows written.
    """
    try:
        table = ensure_table(engine, table_name)
        if engine.dialect.name == "postgresql":
            return _write_postgres(engine, table, pipeline, batch_key, rows)
        return _write_generic(engine, table, pipeline, batch_key, rows, insert_chunk)
    except PredictionWriteError:
        raise
    except Exception as err:
        raise PredictionWriteError(
            f"writing batch {batch_key} of {pipeline} to table {table_name!r} failed; nothing was committed: {err}"
        ) from err


def _write_generic(
    engine: sa.Engine,
    table: sa.Table,
    pipeline: str,
    batch_key: dt.date,
    rows: Iterable[list[tuple[Any, ...]]],
    insert_chunk: int,
) -> int:
    written = 0
    with engine.begin() as conn:
        conn.execute(sa.delete(table).where(table.c.pipeline == pipeline, table.c.batch_key == batch_key))
        insert = sa.insert(table)
        for chunk in rows:
            for start in range(0, len(chunk), insert_chunk):
                part = chunk[start : start + insert_chunk]
                conn.execute(insert, [dict(zip(COLUMNS, row, strict=True)) for row in part])
                written += len(part)
    return written


def _write_postgres(
    engine: sa.Engine, table: sa.Table, pipeline: str, batch_key: dt.date, rows: Iterable[list[tuple[Any, ...]]]
) -> int:
    staging = f"_staging_{table.name}"
    columns = ", ".join(COLUMNS)
    written = 0
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(pipeline, batch_key)})
        conn.exec_driver_sql(f'CREATE TEMP TABLE "{staging}" (LIKE "{table.name}" INCLUDING DEFAULTS) ON COMMIT DROP')
        raw = conn.connection.driver_connection  # the psycopg connection, inside this transaction
        with raw.cursor() as cursor, cursor.copy(f'COPY "{staging}" ({columns}) FROM STDIN') as copy:
            for chunk in rows:
                for row in chunk:
                    copy.write_row(row)
                written += len(chunk)
        conn.execute(sa.delete(table).where(table.c.pipeline == pipeline, table.c.batch_key == batch_key))
        conn.exec_driver_sql(f'INSERT INTO "{table.name}" ({columns}) SELECT {columns} FROM "{staging}"')
    return written


def count_batch(engine: sa.Engine, table_name: str, pipeline: str, batch_key: dt.date) -> int:
    table = ensure_table(engine, table_name)
    with engine.connect() as conn:
        query = sa.select(sa.func.count()).where(table.c.pipeline == pipeline, table.c.batch_key == batch_key)
        return int(conn.execute(query).scalar_one())


def chunks_of(iterable: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in iterable:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
