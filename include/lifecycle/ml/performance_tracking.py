"""The performance lifecycle, one function per Airflow task: realised metrics as labels arrive, estimates before.

For every batch of the last `performance.lookback_days` days, per model version that scored it: the label-free
estimate from the calibrated scores of all its rows (lifecycle.ml.estimation, CBPE), the realised metrics on the
rows whose labels have arrived (with bootstrap intervals), and, once both exist, the estimate's error. A batch
whose labelled rows have not changed since the last run is left as it is, so reruns and daily runs are cheap and
the table holds one answer per batch and version.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from lifecycle.config.pipeline import METRICS, PipelineConfig

RELATIVE_METRICS = frozenset({"rmse", "mae"})  # in the target's units: their drop is relative to the holdout's


def _predictions(engine: Any, table: str, pipeline: str, start: dt.date, end: dt.date) -> Any:
    """The scored rows of [start, end): entity_id, batch_key, score, label, model_version."""
    import pandas as pd
    import sqlalchemy as sa

    from lifecycle.persistence.predictions_db import ensure_table

    predictions = ensure_table(engine, table)
    query = sa.select(
        predictions.c.entity_id, predictions.c.batch_key, predictions.c.score, predictions.c.label,
        predictions.c.model_version,
    ).where(predictions.c.pipeline == pipeline, predictions.c.batch_key >= start, predictions.c.batch_key < end)  # fmt: skip
    with engine.connect() as conn:
        frame = pd.DataFrame(
            conn.execute(query).all(), columns=["entity_id", "batch_key", "score", "label", "model_version"]
        )
    frame["batch_key"] = pd.to_datetime(frame["batch_key"]).dt.date
    return frame


def _references(config: PipelineConfig, versions: set[str]) -> dict[str, dict[str, float]]:
    """Each version's holdout metrics (what "dropped" is measured from)."""
    from lifecycle.registry.tracking import mlflow_client

    client = mlflow_client()
    found: dict[str, dict[str, float]] = {}
    for version in sorted(versions):
        run_id = client.get_model_version(config.registered_model_name, version).run_id
        metrics = client.get_run(run_id).data.metrics
        found[version] = {
            k.removeprefix("holdout_challenger_"): v for k, v in metrics.items() if k.startswith("holdout_challenger_")
        }
    return found


def batch_rows(config: PipelineConfig, group: Any, reference: dict[str, float]) -> list[dict[str, Any]]:
    """The table rows of one batch and version: estimated, realised (enough labels) and the estimate's error."""
    import numpy as np

    from lifecycle.ml import estimation

    task, threshold = config.task, config.prediction.threshold
    scores = group["score"].to_numpy(dtype=float)
    total = len(group)
    rows: list[dict[str, Any]] = []
    kept, _dropped = estimation.clean_scores(task, scores)  # a row without a score cannot be estimated
    estimates = estimation.estimate(task, scores, threshold)
    for name, value in estimates.items():
        rows.append({"metric": name, "kind": "estimated", "value": value, "rows": len(kept), "batch_rows": total,
                     "reference": reference.get(name)})  # fmt: skip
    labelled = group[group["actual"].notna()]
    if len(labelled) >= config.performance.min_labelled:
        bootstrap = config.gate.bootstrap
        realised = estimation.realised(
            task, labelled["actual"].to_numpy(), labelled["score"].to_numpy(dtype=float),
            labelled["label"].to_numpy(), threshold, confidence=bootstrap.confidence,
            resamples=max(bootstrap.resamples, 50), seed=0,
        )  # fmt: skip
        for name, result in realised.items():
            rows.append({"metric": name, "kind": "realised", "value": result["value"], "ci_low": result["ci_low"],
                         "ci_high": result["ci_high"], "rows": int(result["rows"]), "batch_rows": total,
                         "reference": reference.get(name)})  # fmt: skip
            if name in estimates and not np.isnan(result["value"]):
                rows.append({"metric": name, "kind": "estimate_error", "value": estimates[name] - result["value"],
                             "rows": int(result["rows"]), "batch_rows": total, "reference": reference.get(name)})  # fmt: skip
    return rows


def _labelled_counts(stored: list[dict[str, Any]]) -> dict[tuple[dt.date, str], int]:
    """What the table already holds: labelled rows per (batch, version); 0 when only the estimate is there."""
    counts: dict[tuple[dt.date, str], int] = {}
    for row in stored:
        key = (row["batch_key"], row["model_version"])
        counts[key] = max(counts.get(key, 0), row["rows"] if row["kind"] == "realised" else 0)
    return counts


def evaluate(
    config: PipelineConfig,
    run_id: str,
    as_of: str,
    database_url: str,
    connection_urls: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Record the performance of every batch of the look-back window ending on `as_of` (labels arrived by then)."""
    from lifecycle.ml import labels as labels_source
    from lifecycle.persistence import performance_store
    from lifecycle.persistence.predictions_db import engine_for

    day = dt.date.fromisoformat(as_of)
    start = day - dt.timedelta(days=config.performance.lookback_days - 1)
    end = day + dt.timedelta(days=1)
    name = config.performance.metrics_table
    engine = engine_for(database_url)
    try:
        scored = _predictions(engine, config.prediction.table, config.name, start, end)
        if scored.empty:
            return {"as_of": as_of, "batches": 0, "updated": [], "labels": 0, "window": [str(start), str(day)]}
        arrived = labels_source.read_labels(config, start, end, day, connection_urls)
        joined = labels_source.join_batch(scored, arrived)
        stored = _labelled_counts(performance_store.load(engine, name, config.name, start))
        references = _references(config, set(joined["model_version"]))
        updated, kept = [], []
        for (batch_key, version), group in joined.groupby(["batch_key", "model_version"], sort=True):
            labelled = int(group["actual"].notna().sum())
            effective = labelled if labelled >= config.performance.min_labelled else 0
            if stored.get((batch_key, version)) == effective:
                kept.append(str(batch_key))
                continue
            rows = batch_rows(config, group, references[version])
            performance_store.replace_batch(engine, name, config.name, batch_key, version, rows, run_id)
            updated.append({"batch_key": str(batch_key), "model_version": version, "rows": len(group),
                            "labelled": labelled})  # fmt: skip
    finally:
        engine.dispose()
    return {
        "as_of": as_of,
        "window": [str(start), str(day)],
        "batches": len(updated) + len(kept),
        "updated": updated,
        "unchanged": len(kept),
        **labels_source.summary(arrived),
    }


def _drop(metric: str, value: float, reference: float) -> float:
    """How far below the holdout (above, for lower-is-better metrics); relative for errors in target units."""
    drop = (reference - value) if METRICS[metric][1] else (value - reference)
    if metric in RELATIVE_METRICS:
        return drop / abs(reference) if reference else float("inf")
    return drop


def watched_metric(config: PipelineConfig) -> str:
    return config.performance.policy.metric or config.training.primary_metric


def signals(config: PipelineConfig, stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per batch, the metric the policy watches (`performance.policy.metric`, default the primary): realised when
    the labels are in, else the estimate; with its drop from the version's holdout value."""
    metric = watched_metric(config)
    allowed = set(config.performance.policy.signals)
    by_batch: dict[dt.date, dict[str, dict[str, Any]]] = {}
    for row in stored:
        if row["metric"] == metric and row["kind"] in allowed and row["value"] is not None:
            by_batch.setdefault(row["batch_key"], {})[row["kind"]] = row
    found = []
    for batch_key in sorted(by_batch):
        kinds = by_batch[batch_key]
        row = kinds.get("realised") or kinds.get("estimated")
        if row is None or row["reference"] is None:
            continue
        found.append({"batch_key": str(batch_key), "signal": row["kind"], "metric": metric, "value": row["value"],
                      "reference": row["reference"], "model_version": row["model_version"],
                      "drop": _drop(metric, row["value"], row["reference"])})  # fmt: skip
    return found


def decide_retrain(
    config: PipelineConfig, as_of: str, stored: list[dict[str, Any]], days_since_request: int | None
) -> dict[str, Any]:
    """Fire when the newest `min_batches` batches all fell past `max_drop`, outside the drift policy's cool-down."""
    policy = config.performance.policy
    limit = policy.max_drop if policy.max_drop is not None else config.drift.max_performance_drop
    found = [s for s in signals(config, stored) if s["batch_key"] <= as_of]
    recent = found[-policy.min_batches :]
    past = [s for s in recent if s["drop"] > limit]
    described = ", ".join(
        f"{s['batch_key']} {s['signal']} {s['metric']} {s['value']:.4f} vs holdout {s['reference']:.4f} (drop {s['drop']:+.4f})"
        for s in recent
    )
    result = {
        "retrain": False,
        "signals": recent,
        "max_drop": limit,
        "batch_key": recent[-1]["batch_key"] if recent else None,
    }
    if not policy.enabled:
        return {**result, "reason": "the performance policy is disabled"}
    if len(recent) < policy.min_batches:
        return {**result, "reason": f"{len(recent)} batch(es) with a {watched_metric(config)} signal, "
                                    f"the policy needs {policy.min_batches}"}  # fmt: skip
    if len(past) < policy.min_batches:
        return {
            **result,
            "reason": f"not every one of the last {policy.min_batches} batches fell past {limit}: {described}",
        }
    cooldown = config.drift.policy.cooldown_days
    if days_since_request is not None and days_since_request < cooldown:
        return {**result, "reason": f"performance fell ({described}) but a retrain was requested {days_since_request} "
                                    f"day(s) ago, inside the {cooldown}-day cool-down"}  # fmt: skip
    kinds = sorted({s["signal"] for s in past})
    return {**result, "retrain": True, "signal": "+".join(kinds),
            "reason": f"{' and '.join(kinds)} performance fell past {limit} for {policy.min_batches} batches: {described}"}  # fmt: skip


def policy(config: PipelineConfig, as_of: str, database_url: str) -> dict[str, Any]:
    """The retrain decision from what the table holds now (after `evaluate`)."""
    from lifecycle.persistence import drift_store, performance_store
    from lifecycle.persistence.predictions_db import engine_for

    day = dt.date.fromisoformat(as_of)
    start = day - dt.timedelta(days=config.performance.lookback_days - 1)
    engine = engine_for(database_url)
    try:
        stored = performance_store.load(engine, config.performance.metrics_table, config.name, start)
        since = drift_store.days_since_last_request(
            engine, config.drift.metrics_table, config.name, day + dt.timedelta(days=1)
        )
    finally:
        engine.dispose()
    return decide_retrain(config, as_of, stored, since)


def record_retrain_request(config: PipelineConfig, run_id: str, batch_key: str, reason: str, database_url: str) -> None:
    """Start the shared cool-down (the drift policy's table): called by the task that emits the request."""
    from lifecycle.tasks.drift_monitoring import record_retrain_request as record

    record(config, run_id, batch_key, reason, database_url)
