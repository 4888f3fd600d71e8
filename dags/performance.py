"""
### Performance: realised metrics as labels arrive, label-free estimates before they do → maybe a retrain

One DAG per pipeline with a `labels:` source (`<pipeline>__performance`). Daily on the YAML's cron, and on
every labels or predictions Asset event. Joins the labels that have arrived to the predictions table per batch
and model version, records realised metrics (with intervals and counts) and CBPE estimates from the calibrated
scores in `performance_metrics`, and when the primary metric (realised, else estimated) has fallen past the
policy's drop for enough batches, updates the retrain-request Asset, saying which signal fired.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, TaskGroup, task

from lifecycle.config.pipeline import PipelineConfig, load_all
from lifecycle.tasks.airflow_glue import (
    as_of_from_events,
    collector_paused,
    connection_urls,
    default_args,
    fail_fast_on_bad_input,
    labels_asset,
    predictions_asset,
    retrain_request_asset,
    sqlalchemy_url,
)
from lifecycle.ui.access import access_control


def schedule(config: PipelineConfig):
    """The YAML's cron, or new labels, or a new batch of predictions (its estimate), whichever comes first."""
    assets = labels_asset(config) | predictions_asset(config)
    if config.performance.schedule is None:
        return assets
    return AssetOrTimeSchedule(
        timetable=CronTriggerTimetable(config.performance.schedule, timezone="UTC"), assets=assets
    )


def build(config: PipelineConfig) -> DAG:
    name = config.name
    retrain_request = retrain_request_asset(config)
    with DAG(
        dag_id=f"{name}__performance",
        description=f"Realised and estimated performance of {name} batches; requests retraining",
        doc_md=__doc__,
        schedule=schedule(config),
        catchup=False,  # no start_date: a new deployment waits for the next cron time instead of running the last
        max_active_runs=1,
        default_args=default_args(config),
        params={
            "as_of_date": Param(
                None,
                type=["null", "string"],
                format="date",
                title="As-of date",
                description="Labels that arrived by this day, for the batches of the look-back window ending on it. "
                "Empty: the day the triggering events name, else the run's logical date.",
            ),
        },
        tags=["lifecycle", "performance", name, *config.tags],
        access_control=access_control(config, "performance"),  # the YAML's `access` roles (FAB)
    ) as dag:

        @task
        @fail_fast_on_bad_input
        def record_performance(**context) -> dict:
            from lifecycle.ml import performance_tracking

            url = sqlalchemy_url(config.prediction.conn_id)
            urls = connection_urls(config)
            if config.labels is not None and config.labels.conn_id:
                urls[config.labels.conn_id] = sqlalchemy_url(config.labels.conn_id)
            return performance_tracking.evaluate(config, context["run_id"], as_of_from_events(context), url, urls)

        @task
        @fail_fast_on_bad_input
        def decide(recorded: dict) -> dict:
            from lifecycle.ml import performance_tracking

            decision = performance_tracking.policy(config, recorded["as_of"], sqlalchemy_url(config.prediction.conn_id))
            print(f"{recorded['as_of']}: {recorded['batches']} batches, {len(recorded['updated'])} updated; "
                  f"retrain: {decision['retrain']} ({decision['reason']})")  # fmt: skip
            return decision

        @task.short_circuit
        def policy_fires(decision: dict) -> bool:
            return bool(decision["retrain"])

        @task(outlets=[retrain_request])
        @fail_fast_on_bad_input
        def request_retrain(decision: dict, **context) -> dict:
            from lifecycle.ml import performance_tracking

            batch_key = decision["batch_key"]
            reason = f"performance on {batch_key}: {decision['reason']}"
            performance_tracking.record_retrain_request(
                config, context["run_id"], batch_key, reason, sqlalchemy_url(config.prediction.conn_id)
            )
            extra = {
                "reason": reason,
                "signal": decision["signal"],
                "batch_key": batch_key,
                "as_of_date": pendulum.parse(batch_key).add(days=1).to_date_string(),
                "performance_run_id": context["run_id"],
            }
            context["outlet_events"][retrain_request].extra = extra
            return extra

        with TaskGroup("performance"):
            recorded = record_performance()
        with TaskGroup("policy"):
            decision = decide(recorded)
            policy_fires(decision) >> request_retrain(decision)
    return dag


with collector_paused():  # hundreds of DAGs: see lifecycle.tasks.airflow_glue.collector_paused
    for _config in load_all():
        if _config.labels is not None and _config.segments is None:  # segment models: see docs/segments.md
            globals()[f"{_config.name}__performance"] = build(_config)
