"""
### Retrain: ingestion → validation → features → grid-search training → evaluation gate

One DAG per pipeline YAML in `include/pipelines/` (`<pipeline>__retrain`). Nightly on the YAML's cron,
or triggered from the UI with the form below. Each phase is a task group; data moves through the
artifact store and XCom carries only URIs, ids and metrics. A challenger becomes `champion` in the
MLflow registry only when the gate says so. A pipeline with `segments` trains one model per segment value:
features, training and the gate run as a mapped task group (`segment`), one map index per segment, each
segment its own registered model `<model_name>__<segment>` with its own champion alias; beside them, the
pooled model on every row (`segments.fallback: pooled`) scores the rows of segments without a champion.
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param, TaskGroup, task, task_group

from lifecycle.config.pipeline import PipelineConfig, load_all
from lifecycle.tasks.airflow_glue import (
    collector_paused,
    connection_urls,
    default_args,
    end_mlflow_run_on_failure,
    fail_fast_on_bad_input,
    retrain_request_asset,
    run_date,
    sqlalchemy_url,
    triggering_extra,
)
from lifecycle.ui.access import access_control


def retrain_params(config: PipelineConfig) -> dict[str, Param]:
    training = config.training
    return {
        "as_of_date": Param(
            None,
            type=["null", "string"],
            format="date",
            title="As-of date",
            description="Train on the window that ends the day before this date. Empty: the run's logical date.",
        ),
        "window_days": Param(
            training.window_days,
            type="integer",
            minimum=7,
            maximum=3650,
            title="Training window (days)",
            description="How many days of data before the as-of date to train, validate and hold out on.",
        ),
        "search": Param(
            training.search,
            type="string",
            enum=["halving", "grid"],
            title="Search strategy",
            description="Successive halving (fast) or an exhaustive grid search.",
        ),
        "grid": Param(
            training.grid,
            type="object",
            title="Hyper-parameter grid",
            description="LightGBM parameter -> list of values. Edit to widen, narrow or override the search.",
        ),
        "reason": Param(
            "scheduled",
            type="string",
            minLength=1,
            maxLength=500,
            title="Reason",
            description="Why this run: recorded with the MLflow run and the model version.",
        ),
    }


def schedule(config: PipelineConfig):
    """The YAML's cron, or a retrain request from the drift policy, whichever comes first."""
    request = retrain_request_asset(config)
    if config.schedules.retrain is None:
        return [request]
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(config.schedules.retrain, timezone="UTC"), assets=request)


def approval_request(config: PipelineConfig):
    """A person approves or rejects a challenger that passed every automatic check (gate mode `approve`)."""
    from airflow.providers.standard.operators.hitl import HITLOperator

    decision = "ti.xcom_pull(task_ids='evaluation.score_and_decide')"
    return HITLOperator(
        task_id="approve",
        subject=f"Promote the new {config.name} challenger to champion?",
        body=(
            "The challenger passed the gate: {{ " + decision + "['reason'] }}.\n\n"
            "Challenger holdout metrics: {{ " + decision + "['challenger'] }}\n\n"
            "Decision record: {{ " + decision + "['decision_uri'] }}\n\n"
            "Evaluation report: {{ " + decision + "['report_uri'] }} (also on the Models page)"
        ),
        options=["Approve", "Reject"],
        defaults=["Reject"],  # what an unanswered request becomes at the timeout: the champion stays
        response_timeout=dt.timedelta(hours=config.gate.approval_timeout_hours),
    )


def build(config: PipelineConfig) -> DAG:
    name = config.name
    approve_mode = config.gate.mode == "approve"

    def restricted(segment: str | None) -> PipelineConfig:
        return config if segment is None else config.for_segment(segment)

    with DAG(
        dag_id=f"{name}__retrain",
        description=f"Retrain {name}: {config.description}"[:200],
        doc_md=__doc__,
        schedule=schedule(config),
        catchup=False,  # no start_date: a new deployment waits for the next cron time instead of running the last
        max_active_runs=1,
        # A run whose task fails for good ends its MLflow run FAILED, naming the task.
        default_args={**default_args(config), "on_failure_callback": end_mlflow_run_on_failure(config)},
        params=retrain_params(config),
        tags=["lifecycle", "retrain", name, *config.tags],
        access_control=access_control(config, "retrain"),  # the YAML's `access` roles (FAB)
    ) as dag:

        @task
        @fail_fast_on_bad_input
        def snapshot(**context) -> dict:
            from lifecycle.tasks import retraining

            return retraining.ingest(
                config, context["run_id"], run_date(context, "as_of_date"), context["params"]["window_days"],
                connection_urls(config),
            )  # fmt: skip

        @task
        @fail_fast_on_bad_input
        def run_suite(snap: dict, **context) -> dict:
            from lifecycle.tasks import retraining

            return retraining.validate_snapshot(config, context["run_id"], snap["uri"], snap["sha256"])

        @task
        @fail_fast_on_bad_input
        def split_and_fit(snap: dict, _checked: dict, segment: str | None = None, **context) -> dict:
            from lifecycle.tasks import retraining

            return retraining.prepare_features(restricted(segment), context["run_id"], snap["uri"], snap["sha256"])

        @task
        @fail_fast_on_bad_input
        def start_mlflow_run(snap: dict, segment: str | None = None, **context) -> str:
            from lifecycle.config.pipeline import with_training_overrides
            from lifecycle.tasks import retraining

            params = dict(context["params"])
            with_training_overrides(config, grid=params["grid"], search=params["search"])  # fail early
            params["as_of_date"] = run_date(context, "as_of_date")
            trigger = triggering_extra(context)
            if trigger:  # a retrain requested by the drift policy says so in its MLflow run
                params["triggered_by"] = trigger
                params["reason"] = trigger.get("reason", params["reason"])
            return retraining.start_run(restricted(segment), context["dag"].dag_id, context["run_id"], params, snap)

        @task
        @fail_fast_on_bad_input
        def grid_search(mlflow_run_id: str, features: dict, segment: str | None = None, **context) -> dict:
            from lifecycle.config.pipeline import with_training_overrides
            from lifecycle.tasks import retraining

            params = context["params"]
            tuned = with_training_overrides(restricted(segment), grid=params["grid"], search=params["search"])
            return retraining.train_challenger(
                tuned, mlflow_run_id, features, tuned.training.grid, tuned.training.search
            )

        @task
        @fail_fast_on_bad_input
        def baseline(mlflow_run_id: str, features: dict, segment: str | None = None) -> dict:
            from lifecycle.tasks import retraining

            return retraining.train_baseline(restricted(segment), mlflow_run_id, features)

        @task
        @fail_fast_on_bad_input
        def score_and_decide(
            mlflow_run_id: str, features: dict, challenger: dict, base: dict, segment: str | None = None, **context
        ) -> dict:
            from lifecycle.tasks import retraining

            return retraining.evaluate(
                restricted(segment), context["run_id"], mlflow_run_id, features, challenger, base
            )

        @task(trigger_rule="none_failed")  # runs after a skipped approval too: it tags why nothing was promoted
        @fail_fast_on_bad_input
        def promote(
            mlflow_run_id: str, challenger: dict, evaluation: dict, snap: dict, segment: str | None = None, **context
        ) -> dict:
            from lifecycle.tasks import retraining

            approval = context["ti"].xcom_pull(task_ids="evaluation.approve") if approve_mode else None
            return retraining.promote(
                restricted(segment), mlflow_run_id, challenger, evaluation, snap, approval,
                run_id=context["run_id"], database_url=sqlalchemy_url(config.prediction.conn_id),
            )  # fmt: skip

        @task.short_circuit(ignore_downstream_trigger_rules=False)
        def needs_approval(evaluation: dict) -> bool:
            return evaluation["action"] == "await approval"

        with TaskGroup("ingestion"):
            snap = snapshot()
        with TaskGroup("validation"):
            checked = run_suite(snap)
        if config.segments is not None:

            @task
            @fail_fast_on_bad_input
            def plan_segments(snap: dict, _checked: dict) -> list[str]:
                from lifecycle.ml import segments

                return segments.plan(config, snap["uri"], snap["sha256"])

            @task_group(group_id="segment")
            def train_segment(segment: str) -> None:
                """Features, training and the gate of one segment (one map index per segment value)."""
                features = split_and_fit(snap, checked, segment=segment)
                mlflow_run_id = start_mlflow_run(snap, segment=segment)
                features >> mlflow_run_id
                challenger = grid_search(mlflow_run_id, features, segment=segment)
                base = baseline(mlflow_run_id, features, segment=segment)
                evaluation = score_and_decide(mlflow_run_id, features, challenger, base, segment=segment)
                promote(mlflow_run_id, challenger, evaluation, snap, segment=segment)

            train_segment.expand(segment=plan_segments(snap, checked))
            if config.segments.fallback == "none":
                return dag
            # fallback: pooled: the pipeline's own model on every row, below, for segments without a champion
        with TaskGroup("features"):
            features = split_and_fit(snap, checked)
        with TaskGroup("training"):
            mlflow_run_id = start_mlflow_run(snap)
            features >> mlflow_run_id  # open no MLflow run for data that failed validation
            challenger = grid_search(mlflow_run_id, features)
            base = baseline(mlflow_run_id, features)
        with TaskGroup("evaluation"):
            evaluation = score_and_decide(mlflow_run_id, features, challenger, base)
            promoted = promote(mlflow_run_id, challenger, evaluation, snap)
            if approve_mode:
                ask = approval_request(config)
                needs_approval(evaluation) >> ask >> promoted
    return dag


with collector_paused():  # hundreds of DAGs: see lifecycle.tasks.airflow_glue.collector_paused
    for _config in load_all():
        globals()[f"{_config.name}__retrain"] = build(_config)
