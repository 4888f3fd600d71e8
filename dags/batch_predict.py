"""
### Batch predict: ingestion → validation → prediction (mapped partitions) → write

One DAG per pipeline (`<pipeline>__batch_predict`). Scores one day's partition with one model version,
resolved once at the start (the `model` Param: by default the current `champion`, and for a backfill run the
version that was champion when the run was due, from the registry history), and replaces that day's rows
in the `predictions_db` database in one transaction (docs/backfills.md). Partitions of the batch are
scored by mapped tasks, so Celery workers share a large batch. Updates the pipeline's predictions Asset, on
which the drift check is scheduled.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, TaskGroup, task

from lifecycle.config.pipeline import PipelineConfig, load_all
from lifecycle.tasks.airflow_glue import (
    collector_paused,
    connection_urls,
    default_args,
    fail_fast_on_bad_input,
    predictions_asset,
    run_date,
    sqlalchemy_url,
)
from lifecycle.tasks.batch_scoring import MODEL_CHOICES, MODEL_PATTERN  # light: no pandas, sklearn or mlflow
from lifecycle.ui.access import access_control


def predict_params() -> dict[str, Param]:
    return {
        "batch_date": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Batch date",
            description="The day's partition to score. Empty: the run's logical date.",
        ),
        "input_uri": Param(
            None,
            type=["null", "string"],
            title="Input URI",
            description="Score this file (local path, file:// or s3://, Parquet or CSV) instead of the day's partition.",
        ),
        "model": Param(
            "auto",
            type="string",
            pattern=MODEL_PATTERN,
            examples=list(MODEL_CHOICES),
            title="Model",
            description=(
                "auto: for a backfill run the version that was champion when the run was due (its logical date), "
                "else the current champion. champion: the current champion. on_date: the champion at the run's "
                "logical date, or at the end of the batch date's day. A number: that registered version."
            ),
        ),
        "partitions": Param(
            2,
            type="integer",
            minimum=1,
            maximum=64,
            title="Partitions",
            description="How many mapped tasks score the batch side by side.",
        ),
    }


def build(config: PipelineConfig) -> DAG:
    name = config.name
    predictions = predictions_asset(config)
    with DAG(
        dag_id=f"{name}__batch_predict",
        description=f"Score {name} batches with the champion and write them to {config.prediction.table}",
        doc_md=__doc__,
        schedule=config.schedules.batch_predict,
        catchup=False,  # no start_date: a new deployment waits for the next cron time instead of running the last
        max_active_runs=1,
        default_args=default_args(config),
        params=predict_params(),
        tags=["lifecycle", "batch_predict", name, *config.tags],
        access_control=access_control(config, "batch_predict"),  # the YAML's `access` roles (FAB)
    ) as dag:

        @task
        @fail_fast_on_bad_input
        def resolve_champion(**context) -> dict:
            from lifecycle.tasks import batch_scoring

            params, run = context["params"], context["dag_run"]
            run_type = getattr(run.run_type, "value", run.run_type)
            at = batch_scoring.resolve_time(params.get("batch_date"), context.get("logical_date"), run.run_after)
            url = sqlalchemy_url(config.prediction.conn_id)
            champion = batch_scoring.resolve_champion(config, params.get("model") or "auto", run_type, at, url)
            scorer = champion["model_uri"] or f"{champion['version']} of {champion['model_name']}"  # segment models
            print(f"scoring with {scorer}: {champion['chosen_by']}")
            return champion

        @task
        @fail_fast_on_bad_input
        def stage_batch(_champion: dict, **context) -> dict:
            from lifecycle.tasks import batch_scoring

            params = context["params"]
            return batch_scoring.stage(
                config, context["run_id"], run_date(context, "batch_date"), params["input_uri"],
                connection_urls(config),
            )  # fmt: skip

        @task
        @fail_fast_on_bad_input
        def check_batch(batch: dict, champion: dict, **context) -> dict:
            from lifecycle.tasks import batch_scoring

            return batch_scoring.validate_batch(config, context["run_id"], batch, champion)

        @task
        @fail_fast_on_bad_input
        def plan_partitions(batch: dict, _checked: dict, **context) -> list[list[int]]:
            from lifecycle.tasks import batch_scoring

            return batch_scoring.plan_partitions(batch, context["params"]["partitions"])

        @task
        @fail_fast_on_bad_input
        def score_partition(row_groups: list[int], batch: dict, champion: dict, **context) -> dict:
            from lifecycle.tasks import batch_scoring

            return batch_scoring.score(config, context["run_id"], batch, champion, row_groups)

        @task(outlets=[predictions])
        @fail_fast_on_bad_input
        def write_predictions(batch: dict, champion: dict, parts: list[dict], **context) -> dict:
            from lifecycle.tasks import batch_scoring

            url = sqlalchemy_url(config.prediction.conn_id)
            written = batch_scoring.write(config, context["run_id"], url, batch, champion, list(parts))
            context["outlet_events"][predictions].extra = {**written, "batch_uri": batch["uri"]}
            return written

        with TaskGroup("ingestion"):
            champion = resolve_champion()
            batch = stage_batch(champion)
        with TaskGroup("validation"):
            checked = check_batch(batch, champion)
        with TaskGroup("prediction"):
            plan = plan_partitions(batch, checked)
            parts = score_partition.partial(batch=batch, champion=champion).expand(row_groups=plan)
        with TaskGroup("write"):
            write_predictions(batch, champion, parts)
    return dag


with collector_paused():  # hundreds of DAGs: see lifecycle.tasks.airflow_glue.collector_paused
    for _config in load_all():
        globals()[f"{_config.name}__batch_predict"] = build(_config)
