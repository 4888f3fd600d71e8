"""The rollout decisions table: every daily verdict of `<pipeline>__rollout` on a canary or A/B test.

One row per (pipeline, decision day): the arms' versions, labelled rows, the primary metric per arm with its
interval, the difference and its interval, whether it was paired, the decision (promote, extend, abort) and why.
A rerun of a day replaces that day's row.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

TABLE = "rollout_decisions"


def decisions_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        TABLE,
        metadata,
        sa.Column("pipeline", sa.String(100), nullable=False),
        sa.Column("decided_on", sa.Date, nullable=False),  # the day the rollout DAG ran for
        sa.Column("mode", sa.String(20), nullable=False),  # shadow | canary | ab
        sa.Column("metric", sa.String(30), nullable=False),
        sa.Column("champion_version", sa.String(50), nullable=False),
        sa.Column("challenger_version", sa.String(50), nullable=False),
        sa.Column("champion_rows", sa.Integer, nullable=False),  # labelled online predictions per arm
        sa.Column("challenger_rows", sa.Integer, nullable=False),
        sa.Column("champion_value", sa.Float, nullable=True),
        sa.Column("champion_ci_low", sa.Float, nullable=True),
        sa.Column("champion_ci_high", sa.Float, nullable=True),
        sa.Column("challenger_value", sa.Float, nullable=True),
        sa.Column("challenger_ci_low", sa.Float, nullable=True),
        sa.Column("challenger_ci_high", sa.Float, nullable=True),
        sa.Column("difference", sa.Float, nullable=True),  # challenger minus champion, oriented: > 0 is better
        sa.Column("difference_ci_low", sa.Float, nullable=True),
        sa.Column("difference_ci_high", sa.Float, nullable=True),
        sa.Column("paired", sa.Boolean, nullable=False),  # True: both arms scored the same requests (shadow)
        sa.Column("decision", sa.String(20), nullable=False),  # promote | extend | abort
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("airflow_run_id", sa.String(250), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("pipeline", "decided_on", name="uq_rollout_decisions_day"),
    )


COLUMNS = tuple(c.name for c in decisions_table(sa.MetaData()).columns)


def ensure_table(engine: sa.Engine) -> sa.Table:
    from lifecycle.persistence.predictions_db import create_tables

    metadata = sa.MetaData()
    table = decisions_table(metadata)
    create_tables(engine, metadata)
    return table


def replace_decision(engine: sa.Engine, row: dict[str, Any]) -> None:
    """Write one day's decision, replacing an earlier one of the same (pipeline, day), in one transaction.

    `row` holds the table's columns (`decided_at` defaults to now); a retried or rerun day leaves one row.
    """
    table = ensure_table(engine)
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise ValueError(f"{TABLE}: unknown columns {unknown}; the table has {list(COLUMNS)}")
    values = {"decided_at": dt.datetime.now(dt.UTC), **row}
    day = values["decided_on"]
    if isinstance(day, str):
        values["decided_on"] = day = dt.date.fromisoformat(day)
    with engine.begin() as conn:
        conn.execute(sa.delete(table).where(table.c.pipeline == values["pipeline"], table.c.decided_on == day))
        conn.execute(sa.insert(table).values(**values))


def load_decisions(engine: sa.Engine, pipeline: str, limit: int = 30) -> list[dict[str, Any]]:
    """The pipeline's newest `limit` decisions, newest day first, as dicts of the table's columns ([] before any)."""
    if not sa.inspect(engine).has_table(TABLE):
        return []
    table = decisions_table(sa.MetaData())
    query = sa.select(table).where(table.c.pipeline == pipeline).order_by(table.c.decided_on.desc()).limit(limit)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    for row in rows:
        if isinstance(row["decided_on"], str):  # SQLite read back without type affinity
            row["decided_on"] = dt.date.fromisoformat(row["decided_on"])
    return rows
