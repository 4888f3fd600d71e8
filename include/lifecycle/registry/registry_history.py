"""Which version was champion from when to when, who or what moved it and why: MLflow keeps no alias history.

Every move of an alias by the gate or a rollback happens inside `alias_lock`, a database transaction that
holds a row lock (PostgreSQL, MySQL) or the write lock (SQLite) on the alias's row of
`lifecycle_registry_aliases`: the compare-and-set on MLflow's alias and the history row are then one step
that two racing writers take one after the other. A move that MLflow saw but the history did not (the
writer died between the two, or someone used MLflow's UI) is recorded when it is next observed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

CHAMPION = "champion"
metadata = sa.MetaData()
aliases = sa.Table(
    "lifecycle_registry_aliases",
    metadata,
    sa.Column("model_name", sa.String(256), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(32)),
    sa.Column("locked_at", sa.DateTime(timezone=True)),
)
history = sa.Table(
    "lifecycle_registry_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.String(256), nullable=False),
    sa.Column("alias", sa.String(64), nullable=False),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("previous_version", sa.String(32)),
    sa.Column("moved_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("moved_by", sa.String(256), nullable=False),
    sa.Column("how", sa.String(32), nullable=False),  # gate, rollback, observed (moved outside the lifecycle)
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("airflow_run_id", sa.String(256)),
    sa.Column("mlflow_run_id", sa.String(64)),
    sa.Index("ix_lifecycle_registry_history_model", "model_name", "alias", "moved_at"),
)


def ensure_tables(engine: sa.Engine) -> None:
    from lifecycle.persistence.predictions_db import create_tables

    create_tables(engine, metadata)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@contextmanager
def alias_lock(engine: sa.Engine, model_name: str, alias: str = CHAMPION) -> Iterator[sa.Connection]:
    """A transaction holding the alias's lock: read MLflow, move the alias and record it, then commit."""
    ensure_tables(engine)
    key = (aliases.c.model_name == model_name) & (aliases.c.alias == alias)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(aliases).values(model_name=model_name, alias=alias))
    except sa.exc.IntegrityError:  # the row exists (or another writer created it just now)
        pass
    with engine.begin() as conn:
        # An UPDATE takes the row lock on PostgreSQL and MySQL, and SQLite's write lock, until commit.
        conn.execute(sa.update(aliases).where(key).values(locked_at=_now()))
        yield conn


def last_version(conn: sa.Connection, model_name: str, alias: str = CHAMPION) -> str | None:
    query = (
        sa.select(history.c.version)
        .where(history.c.model_name == model_name, history.c.alias == alias)
        .order_by(history.c.moved_at.desc(), history.c.id.desc())
        .limit(1)
    )
    return conn.execute(query).scalar()


def record(
    conn: sa.Connection,
    model_name: str,
    version: str,
    *,
    previous: str | None,
    moved_by: str,
    how: str,
    reason: str = "",
    airflow_run_id: str | None = None,
    mlflow_run_id: str | None = None,
    alias: str = CHAMPION,
    at: dt.datetime | None = None,
) -> None:
    """One move, inside `alias_lock`'s transaction."""
    moved_at = at or _now()
    conn.execute(
        sa.insert(history).values(
            model_name=model_name, alias=alias, version=str(version),
            previous_version=str(previous) if previous is not None else None, moved_at=moved_at,
            moved_by=moved_by[:256], how=how, reason=reason[:5000], airflow_run_id=airflow_run_id,
            mlflow_run_id=mlflow_run_id,
        )
    )  # fmt: skip
    key = (aliases.c.model_name == model_name) & (aliases.c.alias == alias)
    conn.execute(sa.update(aliases).where(key).values(version=str(version)))


def observe(
    conn: sa.Connection, model_name: str, current: str | None, alias: str = CHAMPION, at: dt.datetime | None = None
) -> None:
    """Record the alias as MLflow has it now, if the history does not say so already."""
    if current is None or last_version(conn, model_name, alias) == str(current):
        return
    record(
        conn, model_name, str(current), previous=last_version(conn, model_name, alias),
        moved_by="unknown", how="observed",
        reason="found on the alias: moved outside the lifecycle, or before its history was kept",
        alias=alias, at=at,
    )  # fmt: skip


def periods(engine: sa.Engine, model_name: str, alias: str = CHAMPION, limit: int = 50) -> list[dict[str, Any]]:
    """The newest `limit` moves as periods: version, from, until (None: still champion), by, how, why."""
    if not sa.inspect(engine).has_table(history.name):
        return []
    query = (
        sa.select(history)
        .where(history.c.model_name == model_name, history.c.alias == alias)
        .order_by(history.c.moved_at.desc(), history.c.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    until = None
    for row in rows:  # newest first: each period ends when the next (newer) one began
        row["until"], until = until, row["moved_at"]
    return rows


def version_on(engine: sa.Engine, model_name: str, when: dt.datetime, alias: str = CHAMPION) -> str | None:
    """The version the alias pointed at, at `when` (None before the first recorded move)."""
    if not sa.inspect(engine).has_table(history.name):
        return None
    query = (
        sa.select(history.c.version)
        .where(history.c.model_name == model_name, history.c.alias == alias, history.c.moved_at <= when)
        .order_by(history.c.moved_at.desc(), history.c.id.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        return conn.execute(query).scalar()
