"""
### Drift check: the scored batch against the champion's training reference → maybe a retrain

One DAG per pipeline (`<pipeline>__drift_check`), scheduled on the predictions Asset, so it runs after
every batch written. Decides drift on effect sizes (PSI, Jensen-Shannon) against the YAML's thresholds,
writes a JSON and HTML report and one row per feature to `drift_metrics`, and when the retraining
policy fires (drift in k of the last n batches, outside the cool-down) updates the retrain-request
Asset, on which `<pipeline>__retrain` is scheduled.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, TaskGroup, task
from lifecycle.airflow_glue import (
    default_args,
    fail_fast_on_bad_input,
    predictions_asset,
    retrain_request_asset,
    run_date,
    sqlalchemy_url,
)
from lifecycle.config import PipelineConfig, load_all


def build(config: PipelineConfig) -> DAG:
    name = config.name
    predictions, retrain_request = predictions_asset(config), retrain_request_asset(config)
    with DAG(
        dag_id=f"{name}__drift_check",
        description=f"Drift of {name} batches against the champion's reference; requests retraining",
        doc_md=__doc__,
        schedule=[predictions],
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        default_args=default_args(config),
        params={
            "batch_date": Param(
                None,
                type=["null", "string"],
                format="date",
                title="Batch date",
                description="Check this scored batch. Empty: the batch of the predictions event that triggered the run.",
            ),
        },
        tags=["lifecycle", "drift", name, *config.tags],
    ) as dag:

        @task(inlets=[predictions])
        @fail_fast_on_bad_input
        def compute_drift(**context) -> dict:
            from lifecycle import drift_check

            batch = _triggering_batch(context)
            return drift_check.run_check(
                config, context["run_id"], batch["batch_key"], batch["batch_uri"],
                sqlalchemy_url(config.prediction.conn_id),
            )  # fmt: skip

        def _triggering_batch(context) -> dict:
            """The batch to check: the Param's date, else the newest predictions event (its extra)."""
            wanted = context["params"].get("batch_date")
            events = [e for events in context["triggering_asset_events"].values() for e in events]
            if not events or wanted:
                events = list(context["inlet_events"][predictions])
            if wanted:
                wanted = run_date(context, "batch_date")
                events = [e for e in events if e.extra.get("batch_key") == wanted]
            if not events:
                raise ValueError(
                    f"no predictions event for batch {wanted or '(latest)'}: run {name}__batch_predict first"
                )
            return events[-1].extra

        @task.short_circuit
        def policy_fires(check: dict) -> bool:
            print(f"dataset drift: {check['dataset_drift']} ({check['reason']}); retrain: {check['policy_reason']}")
            return bool(check["retrain"])

        @task(outlets=[retrain_request])
        def request_retrain(check: dict, **context) -> dict:
            extra = {
                "reason": f"drift on {check['batch_key']}: {check['reason']}",
                "batch_key": check["batch_key"],
                "as_of_date": pendulum.parse(check["batch_key"]).add(days=1).to_date_string(),
                "drifted_features": check["drifted_features"],
                "drift_report_uri": check["report_uri"],
                "drift_run_id": context["run_id"],
            }
            context["outlet_events"][retrain_request].extra = extra
            return extra

        with TaskGroup("drift"):
            check = compute_drift()
        with TaskGroup("policy"):
            policy_fires(check) >> request_retrain(check)
    return dag


for _config in load_all():
    globals()[f"{_config.name}__drift_check"] = build(_config)
