"""The drift-check lifecycle, one function per Airflow task: plain arguments in, small dicts out."""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
from typing import Any

import numpy as np

from lifecycle.config.pipeline import PipelineConfig
from lifecycle.persistence import storage


def _batch_scores(engine: Any, table: str, pipeline: str, batch_key: dt.date) -> tuple[dict[str, float], str | None]:
    import sqlalchemy as sa

    from lifecycle.persistence.predictions_db import ensure_table

    predictions = ensure_table(engine, table)
    query = sa.select(predictions.c.entity_id, predictions.c.score, predictions.c.model_version).where(
        predictions.c.pipeline == pipeline, predictions.c.batch_key == batch_key
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return {r.entity_id: r.score for r in rows}, (rows[0].model_version if rows else None)


RELATIVE_METRICS = frozenset({"rmse", "mae"})


def _performance(config: PipelineConfig, frame: Any, scores: dict[str, float], holdout: float | None) -> dict | None:
    """The champion on this batch's labels, when they have arrived, against its holdout score."""
    from lifecycle.config.pipeline import METRICS
    from lifecycle.ml.metrics import metric

    # With a labels source, performance is the performance DAG's job, from the labels as they arrive.
    if config.labels is not None or config.target not in frame or holdout is None or config.task == "multiclass":
        return None
    labelled = frame[frame[config.target].notna()]
    ids = labelled[config.id_column].astype(str)
    known = ids.isin(scores.keys()).to_numpy()
    if known.sum() < 50:
        return None
    y = labelled[config.target].to_numpy()[known]
    s = np.array([scores[i] for i in ids[known]])
    primary = config.training.primary_metric
    current = metric(config.task, primary, y, s, config.prediction.threshold)
    higher = METRICS[primary][1]
    drop = (holdout - current) if higher else (current - holdout)
    # Errors in the target's own units (RMSE, MAE) have no fixed scale: their drop is relative to the holdout's.
    relative = primary in RELATIVE_METRICS
    if relative:
        drop = drop / abs(holdout) if holdout else float("inf")
    return {"metric": primary, "holdout": holdout, "current": current, "drop": drop, "relative": relative,
            "higher_is_better": higher, "threshold": config.drift.max_performance_drop,
            "rows": int(known.sum())}  # fmt: skip


def run_check(
    config: PipelineConfig,
    run_id: str,
    batch_key: str,
    batch_uri: str,
    database_url: str,
) -> dict[str, Any]:
    """Compare the scored batch with the champion's training reference; record it everywhere it is read."""
    import mlflow

    from lifecycle.ml import drift
    from lifecycle.persistence import drift_store
    from lifecycle.persistence.predictions_db import engine_for
    from lifecycle.registry import tracking

    key = dt.date.fromisoformat(batch_key)
    # The URI comes from an Asset event, which anyone allowed to post events can write: only ours.
    storage.require_under(batch_uri, [storage.pipeline_root(config.name)], "the event's batch_uri")
    engine = engine_for(database_url)
    try:
        scores, version = _batch_scores(engine, config.prediction.table, config.name, key)
        if not scores:
            raise ValueError(f"no predictions for {config.name} batch {batch_key} in {config.prediction.table}")
        client = tracking.mlflow_client()
        model = client.get_model_version(config.registered_model_name, version)
        reference = mlflow.artifacts.load_dict(f"runs:/{model.run_id}/drift/reference.json")
        holdout = client.get_run(model.run_id).data.metrics.get(f"holdout_challenger_{config.training.primary_metric}")
        frame = storage.read_parquet(batch_uri)
        ordered = np.array([scores.get(i, np.nan) for i in frame[config.id_column].astype(str)])
        performance = _performance(config, frame, scores, holdout)
        result = drift.check(reference, frame, ordered[~np.isnan(ordered)], config.drift, performance)
        result.update({"pipeline": config.name, "batch_key": batch_key, "model_version": version,
                       "batch_uri": batch_uri, "airflow_run_id": run_id})  # fmt: skip
        drift_store.record(engine, config.drift.metrics_table, config.name, key, result, version, run_id)
        history = drift_store.dataset_history(
            engine, config.drift.metrics_table, config.name, key, config.drift.policy.window
        )
        since = drift_store.days_since_last_request(engine, config.drift.metrics_table, config.name, key)
        fire, why = drift.should_retrain(history, since, config.drift.policy)
        fire = fire and config.drift.policy.enabled
        result["policy"] = {"history": history, "days_since_last_request": since, "retrain": fire, "reason": why}
        # The request (and so the cool-down) is recorded by the task that emits it, not here: if emitting
        # failed after this, the cool-down would hold back every retrain for a week.
    finally:
        engine.dispose()

    json_uri = storage.write_json(storage.artifact_uri(config.name, run_id, "drift", "report.json"), result)
    page = html_report(config.name, result)
    html_uri = storage.write_bytes(storage.artifact_uri(config.name, run_id, "drift", "report.html"), page.encode())
    experiment = tracking.experiment_id(config.name)
    with mlflow.start_run(experiment_id=experiment, run_name=f"drift {batch_key}") as run:
        mlflow.set_tags({"lifecycle.kind": "drift", "airflow.run_id": run_id, "batch_key": batch_key,
                         "model_version": str(version), "dataset_drift": str(result["dataset_drift"]),
                         "batch.uri": batch_uri})  # fmt: skip
        mlflow.log_metrics({f"psi.{k}" if v["kind"] == "numeric" else f"js.{k}": v["value"]
                            for k, v in result["features"].items()})  # fmt: skip
        mlflow.log_metric("drifted_share", result["drifted_share"])
        mlflow.log_dict(result, "drift/report.json")
        mlflow.log_text(page, "drift/report.html")
    return {
        "batch_key": batch_key,
        "dataset_drift": result["dataset_drift"],
        "drifted_features": result["drifted_features"],
        "drifted_share": result["drifted_share"],
        "reason": result["reason"],
        "retrain": result["policy"]["retrain"],
        "policy_reason": result["policy"]["reason"],
        "report_uri": html_uri,
        "json_uri": json_uri,
        "mlflow_run_id": run.info.run_id,
    }


def run_checks(
    config: PipelineConfig,
    run_id: str,
    events: list[dict[str, Any]],
    database_url: str,
    recheck: bool = False,
) -> list[dict[str, Any]]:
    """Check each batch the predictions events name, its latest event only, oldest batch first.

    Airflow dates an asset-triggered run at its first queued event, and an event that lands after that but before
    the run is created waits for the next run (a day later, or never if none comes). The DAG therefore hands over
    those later events too, and a later run then finds their batches already checked by another run since the
    event and skips them; `recheck` (a run asked for by hand) checks regardless.
    """
    from lifecycle.persistence import drift_store
    from lifecycle.persistence.predictions_db import engine_for

    latest: dict[str, dict[str, Any]] = {}
    for event in sorted(events, key=lambda e: e.get("event_time") or ""):
        latest[event["batch_key"]] = event
    pending = []
    engine = engine_for(database_url)
    try:
        for key, event in sorted(latest.items()):
            last = drift_store.last_check(engine, config.drift.metrics_table, config.name, dt.date.fromisoformat(key))
            handled = (
                last is not None
                and last[1] != run_id  # a retry of this run checks again: its first attempt may have died half-way
                and event.get("event_time") is not None
                and last[0] >= dt.datetime.fromisoformat(event["event_time"])
            )
            if handled and not recheck:
                print(f"{key}: already checked by {last[1]} at {last[0].isoformat()}, after its predictions event")
            else:
                pending.append(event)
    finally:
        engine.dispose()
    return [run_check(config, run_id, e["batch_key"], e["batch_uri"], database_url) for e in pending]


def record_retrain_request(config: PipelineConfig, run_id: str, batch_key: str, reason: str, database_url: str) -> None:
    """Start the policy's cool-down: called by the task that emits the retrain request, in the same attempt."""
    from lifecycle.persistence import drift_store
    from lifecycle.persistence.predictions_db import engine_for

    engine = engine_for(database_url)
    try:
        key = dt.date.fromisoformat(batch_key)
        drift_store.record_request(engine, config.drift.metrics_table, config.name, key, reason, run_id)
    finally:
        engine.dispose()


def _histograms(result: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(result["features"].items())
    if result["prediction"]:
        items.append(("prediction", result["prediction"]))
    cols = 3
    rows = max(1, -(-len(items) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(12, 2.6 * rows), squeeze=False)
    for ax, (name, r) in zip(axes.flat, items, strict=False):
        labels = r.get("categories") or [str(i) for i in range(len(r["reference_fractions"]))]
        x = np.arange(len(labels))
        ax.bar(x - 0.2, r["reference_fractions"], 0.4, label="reference")
        ax.bar(x + 0.2, r["current_fractions"], 0.4, label="current")
        ax.set_title(f"{name}: {r['metric']} {r['value']:.3f}" + _flag(r).upper(), fontsize=9)
        ax.set_xticks(x, labels if r.get("categories") else [""] * len(x), fontsize=6, rotation=45)
    for ax in list(axes.flat)[len(items) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=70)
    plt.close(fig)
    return buffer.getvalue()


def _flag(r: dict[str, Any]) -> str:
    """What a feature's row says: expected-to-move columns moving is news, not drift."""
    if r.get("expected_to_move"):
        return " expected to move: moved" if r["drifted"] else " expected to move"
    return " drift" if r["drifted"] else ""


def html_report(pipeline: str, result: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:.4g}"

    def style(r: dict[str, Any]) -> str:
        if r.get("expected_to_move"):
            return ' style="background:#eef"'
        return ' style="background:#fdd"' if r["drifted"] else ""

    rows = "".join(
        f"<tr{style(r)}><td>{html.escape(name)}</td><td>{r['kind']}</td><td>{html.escape(_flag(r).strip() or 'ok')}"
        f"</td><td>{r['metric']}</td><td>{fmt(r['value'])}</td><td>{fmt(r['threshold'])}</td>"
        f"<td>{fmt(r.get('noise_floor'))}</td><td>{fmt(r.get('effective_threshold', r['threshold']))}</td>"
        f"<td>{r['test']}</td><td>{fmt(r['statistic'])}</td><td>{fmt(r['p_value'])}</td></tr>"
        for name, r in sorted(result["features"].items())
    )
    image = base64.b64encode(_histograms(result)).decode()
    policy = result.get("policy", {})
    moving = result.get("expected_to_move") or []
    expected = (
        f"<b>Expected to move</b> (reported, never counted toward dataset drift): {html.escape(', '.join(moving))}<br>"
        if moving
        else ""
    )
    quantile = result.get("noise_quantile")
    floor = f" (the {quantile:.3g} quantile of the statistic under the reference at this size)" if quantile else ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(pipeline)} drift</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:3px 8px;border-bottom:1px solid #ddd}}</style></head>
<body><h1>{html.escape(pipeline)}: drift on {result["batch_key"]}</h1>
<p><b>Dataset drift:</b> {result["dataset_drift"]} &mdash; {html.escape(result["reason"])}<br>
<b>Retrain:</b> {policy.get("retrain")} &mdash; {html.escape(str(policy.get("reason", "")))}<br>
{expected}Decided on effect sizes; test statistics and p-values are context only. A feature drifts when its effect
reaches the effective threshold: the larger of the configured threshold and the noise floor{floor}.</p>
<table><tr><th>feature</th><th>kind</th><th>status</th><th>effect</th><th>value</th><th>threshold</th>
<th>noise floor</th><th>effective threshold</th><th>test</th><th>statistic</th><th>p-value</th></tr>{rows}</table>
<img alt="reference vs current" src="data:image/png;base64,{image}"></body></html>"""
