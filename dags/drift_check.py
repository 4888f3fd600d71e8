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

from lifecycle.config.pipeline import PipelineConfig, load_all
from lifecycle.tasks.airflow_glue import (
    collector_paused,
    default_args,
    fail_fast_on_bad_input,
    predictions_asset,
    retrain_request_asset,
    run_date,
    sqlalchemy_url,
)
from lifecycle.ui.access import access_control


def build(config: PipelineConfig) -> DAG:
    name = config.name
    predictions, retrain_request = predictions_asset(config), retrain_request_asset(config)
    with DAG(
        dag_id=f"{name}__drift_check",
        description=f"Drift of {name} batches against the champion's reference; requests retraining",
        doc_md=__doc__,
        schedule=[predictions],
        catchup=False,  # no start_date: a new deployment waits for the next cron time instead of running the last
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
        access_control=access_control(config, "drift_check"),  # the YAML's `access` roles (FAB)
    ) as dag:

        @task(inlets=[predictions])
        @fail_fast_on_bad_input
        def compute_drift(**context) -> list[dict]:
            """Check every batch this run covers: the scheduler folds events that arrive together into one run."""
            from lifecycle.tasks import drift_monitoring

            url = sqlalchemy_url(config.prediction.conn_id)
            manual = bool(context["params"].get("batch_date"))
            return drift_monitoring.run_checks(config, context["run_id"], _events(context), url, recheck=manual)

        def _events(context) -> list[dict]:
            """The Param's batch (from the predictions Asset's history), else the events that triggered the run
            and those that landed after them, which the scheduler would leave for the next run."""
            history = context["inlet_events"][predictions]
            if context["params"].get("batch_date"):
                wanted = run_date(context, "batch_date")
                found = [e.extra for e in history if e.extra.get("batch_key") == wanted]
                if not found:
                    raise ValueError(f"no predictions event for batch {wanted}: run {name}__batch_predict first")
                return found[-1:]
            triggering = [e for found in context["triggering_asset_events"].values() for e in found]
            if not triggering:
                raise ValueError("nothing to check: trigger with a batch_date, or let a predictions event trigger it")
            later = history.after(max(e.timestamp for e in triggering).isoformat())
            return [{**e.extra, "event_time": e.timestamp.isoformat()} for e in [*triggering, *later]]

        @task.short_circuit
        @fail_fast_on_bad_input
        def policy_fires(checks: list[dict]) -> bool:
            for check in checks:
                print(f"{check['batch_key']}: dataset drift {check['dataset_drift']} ({check['reason']}); "
                      f"retrain: {check['retrain']} ({check['policy_reason']})")  # fmt: skip
            return any(check["retrain"] for check in checks)

        @task(outlets=[retrain_request])
        @fail_fast_on_bad_input
        def request_retrain(checks: list[dict], **context) -> dict:
            from lifecycle.tasks import drift_monitoring

            check = [c for c in checks if c["retrain"]][-1]
            reason = f"drift on {check['batch_key']}: {check['reason']}"
            url = sqlalchemy_url(config.prediction.conn_id)
            drift_monitoring.record_retrain_request(
                config, context["run_id"], check["batch_key"], f"{reason} ({check['policy_reason']})", url
            )
            extra = {
                "reason": reason,
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


with collector_paused():  # hundreds of DAGs: see lifecycle.tasks.airflow_glue.collector_paused
    for _config in load_all():
        if _config.segments is None:  # segment models: drift per segment is not built yet (docs/segments.md)
            globals()[f"{_config.name}__drift_check"] = build(_config)
