"""Drift history in the predictions database: one row per feature per batch, and the retrain requests."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa


def tables(metadata: sa.MetaData, metrics_table: str) -> tuple[sa.Table, sa.Table]:
    metrics = sa.Table(
        metrics_table,
        metadata,
        sa.Column("pipeline", sa.String(100), nullable=False),
        sa.Column("batch_key", sa.Date, nullable=False),
        sa.Column("feature", sa.String(200), nullable=False),  # a column, "__prediction__" or "__dataset__"
        sa.Column("kind", sa.String(30), nullable=False),
        sa.Column("metric", sa.String(30), nullable=False),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("threshold", sa.Float, nullable=True),
        sa.Column("drifted", sa.Boolean, nullable=False),
        sa.Column("test", sa.String(30), nullable=True),
        sa.Column("statistic", sa.Float, nullable=True),
        sa.Column("p_value", sa.Float, nullable=True),
        sa.Column("model_version", sa.String(50), nullable=True),
        sa.Column("airflow_run_id", sa.String(250), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("pipeline", "batch_key", "feature", name=f"uq_{metrics_table}_batch_feature"),
    )
    requests = sa.Table(
        "retrain_requests",
        metadata,
        sa.Column("pipeline", sa.String(100), nullable=False),
        sa.Column("batch_key", sa.Date, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("airflow_run_id", sa.String(250), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("pipeline", "batch_key", name="uq_retrain_requests_batch"),
    )
    return metrics, requests


def _ensure(engine: sa.Engine, metrics_table: str) -> tuple[sa.Table, sa.Table]:
    from lifecycle.persistence.predictions_db import create_tables

    metadata = sa.MetaData()
    found = tables(metadata, metrics_table)
    create_tables(engine, metadata)
    return found


def metric_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per statistic: the threshold that decided (noise floor included) and whether it counted.

    A column expected to move is stored as not drifted: the table answers "what made the verdict".
    """
    rows = [
        {
            "feature": name,
            "kind": r["kind"],
            "metric": r["metric"],
            "value": r["value"],
            "threshold": r.get("effective_threshold", r["threshold"]),
            "drifted": bool(r["drifted"]) and not r.get("expected_to_move"),
            "test": r["test"],
            "statistic": r["statistic"],
            "p_value": r["p_value"],
        }
        for name, r in result["features"].items()
    ]
    if result["prediction"]:
        p = result["prediction"]
        rows.append(
            {"feature": "__prediction__", "kind": "prediction", "metric": "psi", "value": p["value"],
             "threshold": p.get("effective_threshold", p["threshold"]), "drifted": bool(p["drifted"]),
             "test": p["test"],
             "statistic": p["statistic"], "p_value": p["p_value"]}
        )  # fmt: skip
    if result["performance"]:
        perf = result["performance"]
        rows.append(
            {"feature": "__performance__", "kind": "performance", "metric": f"{perf['metric']}_drop",
             "value": perf["drop"], "threshold": perf["threshold"], "drifted": perf["drop"] > perf["threshold"],
             "test": None, "statistic": perf["current"], "p_value": None}
        )  # fmt: skip
    rows.append(
        {"feature": "__dataset__", "kind": "dataset", "metric": "drifted_share", "value": result["drifted_share"],
         "threshold": None, "drifted": result["dataset_drift"], "test": None, "statistic": None, "p_value": None}
    )  # fmt: skip
    return rows


def record(
    engine: sa.Engine,
    metrics_table: str,
    pipeline: str,
    batch_key: dt.date,
    result: dict[str, Any],
    model_version: str | None,
    run_id: str,
) -> int:
    """Replace this batch's drift rows in one transaction (a rerun leaves one set)."""
    metrics, _ = _ensure(engine, metrics_table)
    now = dt.datetime.now(dt.UTC)
    rows = [
        {**row, "pipeline": pipeline, "batch_key": batch_key, "model_version": model_version,
         "airflow_run_id": run_id, "checked_at": now}
        for row in metric_rows(result)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.delete(metrics).where(metrics.c.pipeline == pipeline, metrics.c.batch_key == batch_key))
        conn.execute(sa.insert(metrics), rows)
    return len(rows)


def last_check(
    engine: sa.Engine, metrics_table: str, pipeline: str, batch_key: dt.date
) -> tuple[dt.datetime, str] | None:
    """When and by which Airflow run this batch was last checked (None: never)."""
    metrics, _ = _ensure(engine, metrics_table)
    query = (
        sa.select(metrics.c.checked_at, metrics.c.airflow_run_id)
        .where(metrics.c.pipeline == pipeline, metrics.c.batch_key == batch_key)
        .order_by(metrics.c.checked_at.desc())
        .limit(1)
    )
    with engine.connect() as conn:
        row = conn.execute(query).first()
    if row is None:
        return None
    checked_at = row.checked_at
    if checked_at.tzinfo is None:  # SQLite keeps no zone: written in UTC
        checked_at = checked_at.replace(tzinfo=dt.UTC)
    return checked_at, row.airflow_run_id


def dataset_history(engine: sa.Engine, metrics_table: str, pipeline: str, batch_key: dt.date, last: int) -> list[bool]:
    """Dataset-drift verdicts of the last `last` batches up to this one, oldest first."""
    metrics, _ = _ensure(engine, metrics_table)
    query = (
        sa.select(metrics.c.batch_key, metrics.c.drifted)
        .where(metrics.c.pipeline == pipeline, metrics.c.feature == "__dataset__", metrics.c.batch_key <= batch_key)
        .order_by(metrics.c.batch_key.desc())
        .limit(last)
    )
    with engine.connect() as conn:
        return [bool(r.drifted) for r in reversed(conn.execute(query).all())]


def days_since_last_request(engine: sa.Engine, metrics_table: str, pipeline: str, batch_key: dt.date) -> int | None:
    _, requests = _ensure(engine, metrics_table)
    query = sa.select(sa.func.max(requests.c.batch_key)).where(
        requests.c.pipeline == pipeline, requests.c.batch_key < batch_key
    )
    with engine.connect() as conn:
        last = conn.execute(query).scalar_one_or_none()
    if last is None:
        return None
    if isinstance(last, str):  # SQLite returns the aggregate as text
        last = dt.date.fromisoformat(last)
    return (batch_key - last).days


def record_request(
    engine: sa.Engine, metrics_table: str, pipeline: str, batch_key: dt.date, reason: str, run_id: str
) -> None:
    _, requests = _ensure(engine, metrics_table)
    with engine.begin() as conn:
        conn.execute(sa.delete(requests).where(requests.c.pipeline == pipeline, requests.c.batch_key == batch_key))
        conn.execute(
            sa.insert(requests),
            {"pipeline": pipeline, "batch_key": batch_key, "reason": reason, "airflow_run_id": run_id,
             "requested_at": dt.datetime.now(dt.UTC)},
        )  # fmt: skip
