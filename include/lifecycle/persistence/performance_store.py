"""The performance table: realised and estimated metrics per batch and model version, replaced as labels arrive.

One row per (pipeline, batch, model version, metric, kind). `kind` is `realised` (from the labels that have
arrived: value, confidence interval, labelled rows), `estimated` (label-free, from the calibrated scores of
every row) or `estimate_error` (estimated minus realised, once both exist). A rerun, or labels trickling in,
replace a batch's rows in one transaction: the table always holds one answer per batch and version.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

KINDS = ("realised", "estimated", "estimate_error")


def performance_table(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column("pipeline", sa.String(100), nullable=False),
        sa.Column("batch_key", sa.Date, nullable=False),
        sa.Column("model_version", sa.String(50), nullable=False),
        sa.Column("metric", sa.String(30), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),  # realised | estimated | estimate_error
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("ci_low", sa.Float, nullable=True),
        sa.Column("ci_high", sa.Float, nullable=True),
        sa.Column("rows", sa.Integer, nullable=False),  # the batch's rows this value is computed from
        sa.Column("batch_rows", sa.Integer, nullable=False),  # all the batch's rows (labelled share = rows / this)
        sa.Column("reference", sa.Float, nullable=True),  # the version's holdout value of the metric
        sa.Column("airflow_run_id", sa.String(250), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("pipeline", "batch_key", "model_version", "metric", "kind", name=f"uq_{name}_row"),
        sa.Index(f"ix_{name}_pipeline_batch", "pipeline", "batch_key"),
    )


def ensure_table(engine: sa.Engine, name: str) -> sa.Table:
    from lifecycle.persistence.predictions_db import create_tables

    metadata = sa.MetaData()
    table = performance_table(metadata, name)
    create_tables(engine, metadata)
    return table


def replace_batch(
    engine: sa.Engine,
    name: str,
    pipeline: str,
    batch_key: dt.date,
    model_version: str,
    rows: list[dict[str, Any]],
    run_id: str,
) -> int:
    """Replace one batch and version's rows (each a dict of metric, kind, value, ci_low, ci_high, rows, ...)."""
    table = ensure_table(engine, name)
    now = dt.datetime.now(dt.UTC)
    full = [
        {"ci_low": None, "ci_high": None, "reference": None, **row, "pipeline": pipeline, "batch_key": batch_key,
         "model_version": model_version, "airflow_run_id": run_id, "computed_at": now}
        for row in rows
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(
            sa.delete(table).where(
                table.c.pipeline == pipeline, table.c.batch_key == batch_key, table.c.model_version == model_version
            )
        )
        if full:
            conn.execute(sa.insert(table), full)
    return len(full)


def load(engine: sa.Engine, name: str, pipeline: str, since: dt.date | None = None) -> list[dict[str, Any]]:
    """Every row of the pipeline (from `since`), oldest batch first: for the Models page and the policy."""
    if not sa.inspect(engine).has_table(name):
        return []
    table = performance_table(sa.MetaData(), name)
    query = sa.select(table).where(table.c.pipeline == pipeline)
    if since is not None:
        query = query.where(table.c.batch_key >= since)
    query = query.order_by(table.c.batch_key, table.c.model_version, table.c.metric, table.c.kind)
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
    for row in rows:
        if isinstance(row["batch_key"], str):  # SQLite without type affinity on raw reads
            row["batch_key"] = dt.date.fromisoformat(row["batch_key"])
    return rows
