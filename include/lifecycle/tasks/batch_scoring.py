"""The batch-prediction lifecycle, one function per Airflow task: plain arguments in, small dicts out."""

from __future__ import annotations

import datetime as dt
import logging
import re
import tempfile
from collections import Counter
from typing import Any

from lifecycle.config.pipeline import PipelineConfig
from lifecycle.persistence import storage


class NoChampionError(RuntimeError):
    """There is no model behind the `champion` alias: nothing can be scored."""


class NoChampionOnDateError(NoChampionError):
    """The registry history has no champion at the time asked for: before its first recorded move."""


class ModelChoiceError(NoChampionError):
    """The run's `model` Param names no version that can score: not a choice, or not in the registry."""


# The `model` Param's choices; the DAG's Param carries the same pattern, so the trigger form refuses the rest.
MODEL_CHOICES = ("auto", "champion", "on_date")
MODEL_PATTERN = r"^(auto|champion|on_date|[0-9]+)$"
BACKFILL = "backfill"  # the run type of the runs Airflow's backfill creates


def resolve_time(batch_date: str | None, logical_date: dt.datetime | None, run_after: dt.datetime) -> dt.datetime:
    """When `on_date` looks the champion up: the end of the batch_date Param's day, else when the run was due."""
    if batch_date:
        day = dt.date.fromisoformat(str(batch_date)[:10])
        return dt.datetime.combine(day, dt.time.max, tzinfo=dt.UTC)
    return _utc(logical_date or run_after)


def _utc(when: dt.datetime) -> dt.datetime:
    # A plain datetime (pendulum's is a subclass) in UTC: SQLite compares the history's times as text.
    when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
    when = when.astimezone(dt.UTC)
    return dt.datetime(
        when.year, when.month, when.day, when.hour, when.minute, when.second, when.microsecond, tzinfo=dt.UTC
    )


def _shown(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ" if when.second or when.microsecond else "%Y-%m-%dT%H:%MZ")


def resolve_champion(
    config: PipelineConfig,
    choice: str = "champion",
    run_type: str | None = None,
    at: dt.datetime | None = None,
    database_url: str | None = None,
) -> dict[str, Any]:
    """Resolve the model once, at the start: every partition then loads this exact version.

    `choice` is the run's `model` Param: `champion` (the alias now), `on_date` (the alias at `at`, from the
    registry history in the predictions database at `database_url`: MLflow keeps no alias history), a
    version number, or `auto` (`on_date` for a backfill run, so that re-scoring history uses the model of each
    day, else `champion`). The answer says which rule chose the version (`chosen_by`). A segmented pipeline
    resolves each segment's model by the same rule (lifecycle.ml.segments.resolve_champions).
    """
    if config.segments is not None and config.segment is None:  # one model per segment: resolve each
        from lifecycle.ml.segments import resolve_champions

        return resolve_champions(config, choice, run_type, at, database_url)
    return resolve_one(config, choice, run_type, at, database_url)


def resolve_one(
    config: PipelineConfig,
    choice: str = "champion",
    run_type: str | None = None,
    at: dt.datetime | None = None,
    database_url: str | None = None,
) -> dict[str, Any]:
    """`resolve_champion` for one registered model (a segment's, or a segmented pipeline's pooled model)."""
    from lifecycle.registry import tracking

    name = config.registered_model_name
    choice = str(choice if choice is not None else "auto").strip()
    if not re.fullmatch(MODEL_PATTERN, choice):
        raise ModelChoiceError(
            f"the run's model Param is {choice!r}: expected auto, champion, on_date or a version number; "
            "nothing was scored"
        )
    rule = choice
    if choice == "auto":
        rule = "on_date" if run_type == BACKFILL else "champion"
    if rule == "champion":
        version = tracking.champion(name)
        if version is None:
            raise NoChampionError(
                f"pipeline {config.name!r} has no champion: models:/{name}@champion is not set. "
                f"Run {config.name}__retrain first (or move the alias to a version); nothing was written."
            )
        chosen_by = "current champion" + (" (model auto: not a backfill run)" if choice == "auto" else "")
        return _resolved(name, version, chosen_by, None)
    if rule == "on_date":
        if at is None or database_url is None:
            raise ValueError("resolving the champion on a date needs the time (at) and the predictions database URL")
        at = _utc(at)
        number = _version_on(config, database_url, at)
        chosen_by = f"champion on {_shown(at)} (registry history" + (
            ", model auto: a backfill run)" if choice == "auto" else ")"
        )
        where = f"the registry history says version {number} was champion on {_shown(at)}"
        return _resolved(name, _registered(name, number, where), chosen_by, at)
    where = f"the run's model Param asks for version {choice}"
    return _resolved(name, _registered(name, choice, where), f"version {choice} (the run's model Param)", None)


def _resolved(name: str, version: Any, chosen_by: str, at: dt.datetime | None) -> dict[str, Any]:
    return {
        "model_name": name,
        "version": str(version.version),
        "model_uri": f"models:/{name}/{version.version}",
        "run_id": version.run_id,
        "chosen_by": chosen_by,
        "resolved_at": at.isoformat() if at is not None else None,
    }


def _registered(name: str, number: str, where: str) -> Any:
    """The registry's version `number`, or a ModelChoiceError saying who asked for it."""
    from mlflow.exceptions import MlflowException

    from lifecycle.registry.tracking import mlflow_client

    try:
        return mlflow_client().get_model_version(name, str(number))
    except MlflowException as err:
        if "RESOURCE_DOES_NOT_EXIST" not in str(err.error_code) and "not found" not in str(err).lower():
            raise  # the registry is down or refused us: a retry may help
        raise ModelChoiceError(
            f"{where}, but models:/{name}/{number} is not in the registry; nothing was scored"
        ) from err


def _version_on(config: PipelineConfig, database_url: str, at: dt.datetime) -> str:
    """The champion at `at`, or NoChampionOnDateError naming the date and the history's first recorded move."""
    import sqlalchemy as sa

    from lifecycle.persistence.predictions_db import engine_for
    from lifecycle.registry import registry_history

    name = config.registered_model_name
    engine = engine_for(database_url)
    try:
        number = registry_history.version_on(engine, name, at)
        if number:
            return number
        if number == "":  # a history row with no version: the alias had been removed by then
            raise NoChampionOnDateError(
                f"no champion of models:/{name}@champion on {_shown(at)}: the registry history says the alias had "
                "been removed by then. Choose model: champion or a version number for this date; nothing was scored."
            )
        first = None
        if sa.inspect(engine).has_table(registry_history.history.name):
            history = registry_history.history
            query = (
                sa.select(history.c.version, history.c.moved_at)
                .where(history.c.model_name == name, history.c.alias == registry_history.CHAMPION)
                .order_by(history.c.moved_at, history.c.id)
                .limit(1)
            )
            with engine.connect() as conn:
                first = conn.execute(query).first()
    finally:
        engine.dispose()
    if first is None:
        since = "the registry history has no recorded move of the alias"
    else:
        moved = _utc(first.moved_at)
        since = f"its first recorded move made version {first.version} champion at {moved.isoformat()}"
    raise NoChampionOnDateError(
        f"no champion of models:/{name}@champion on {_shown(at)}: {since} (table "
        f"{registry_history.history.name} in the predictions database). Choose model: champion or a version "
        "number for this date; nothing was scored."
    )


def stage(
    config: PipelineConfig,
    run_id: str,
    batch_date: str,
    input_uri: str | None,
    connection_urls: dict[str, str] | None = None,
) -> dict[str, Any]:
    from lifecycle.ml.scoring import stage_batch

    out = storage.artifact_uri(config.name, run_id, "prediction", "batch.parquet")
    return stage_batch(config, dt.date.fromisoformat(batch_date), out, input_uri, connection_urls)


def validate_batch(config: PipelineConfig, run_id: str, batch: dict[str, Any], champion: dict[str, Any]) -> dict:
    """The training suite minus the target, chunk by chunk, plus the champion's signature and unique ids."""
    import mlflow
    import pyarrow.parquet as pq

    from lifecycle.ml.scoring import ScoringBatchError, check_signature
    from lifecycle.ml.segments import unknown_segments
    from lifecycle.ml.validation import DataValidationError, validate
    from lifecycle.registry.tracking import mlflow_client

    mlflow_client()
    segmented = champion.get("segments")
    # Segment models are trained on the same features: any segment's signature is every segment's.
    first = next(iter(segmented.values()))["model_uri"] if segmented else champion["model_uri"]
    schema = mlflow.models.get_model_info(first).signature.inputs
    unknown: Counter[str] = Counter()
    report_uri = storage.artifact_uri(config.name, run_id, "validation", "scoring_report.json")
    failures: list[dict[str, Any]] = []
    seen_ids: set[Any] = set()
    duplicates: list[Any] = []
    with tempfile.TemporaryDirectory() as work:
        parquet = pq.ParquetFile(storage.local_copy(batch["uri"], work))
        for group in range(parquet.num_row_groups):
            chunk = parquet.read_row_group(group).to_pandas()
            where = f"scoring batch {batch['input_uri']} (rows of chunk {group})"
            try:
                check_signature(chunk, schema, where)
                validate(chunk, config, with_target=False, contract_rules=False)  # the contract: below, whole batch
            except ScoringBatchError as err:
                failures.append({"chunk": group, "error": str(err)})
            except DataValidationError as err:
                failures.append({"chunk": group, "error": str(err), "failures": err.report["failures"]})
            if segmented and not champion.get("fallback"):  # with a pooled fallback, every row has a model
                unknown.update(unknown_segments(config, chunk, segmented))
            ids = chunk[config.id_column].tolist()
            duplicates.extend(i for i in ids if i in seen_ids)
            seen_ids.update(ids)
            if failures:
                break
    if duplicates:
        failures.append({"error": f"{config.id_column} repeats within the batch, e.g. {duplicates[:5]}"})
    if unknown:
        shown = ", ".join(f"{value!r} ({rows} rows)" for value, rows in unknown.most_common(10))
        failures.append({
            "error": f"{sum(unknown.values())} rows of segments with no champion in column "
                     f"{config.segments.column!r}: {shown}; train them ({config.name}__retrain, segments.min_rows) "
                     "or leave their rows out of the batch",
            "unknown_segments": dict(unknown),
        })  # fmt: skip
    checked = None
    # Segment models: each segment's contract was held to its training window; the batch is held to the suite.
    if (
        not failures and not segmented
    ):  # the champion's data contract, over the whole batch (read again, row group by row group)
        from lifecycle.ml import contract

        try:
            checked = contract.check_batch(config, batch, contract.for_run(champion["run_id"]))
        except DataValidationError as err:
            checked = err.report["contract"]
            failures.append({"error": str(err), "contract": checked})
    report = {
        "success": not failures,
        "rows": batch["rows"],
        "failures": failures,
        "batch_uri": batch["uri"],
        "contract": checked,
    }
    storage.write_json(report_uri, report)
    if failures:
        raise DataValidationError(
            f"scoring batch rejected, nothing written: {failures[0]['error']} (report: {report_uri})", report
        )
    if checked:
        for warning in checked["warnings"]:
            logging.getLogger(__name__).warning("data contract: %s", warning)
    return {"report_uri": report_uri, "contract_warnings": len(checked["warnings"]) if checked else 0}


def plan_partitions(batch: dict[str, Any], partitions: int) -> list[list[int]]:
    from lifecycle.ml.scoring import partition_row_groups

    return partition_row_groups(batch["row_groups"], partitions)


def score(
    config: PipelineConfig, run_id: str, batch: dict[str, Any], champion: dict[str, Any], row_groups: list[int]
) -> dict[str, Any]:
    from lifecycle.ml.scoring import SegmentRouter, score_partition
    from lifecycle.registry import model_trust

    name = f"part-{row_groups[0]:05d}-{row_groups[-1]:05d}.parquet"
    out = storage.artifact_uri(config.name, run_id, "prediction", "scores", name)
    if champion.get("segments"):
        router = SegmentRouter(config, champion["segments"], champion.get("fallback"))
        return score_partition(config, router, batch["uri"], row_groups, out)
    model = model_trust.load(champion["model_uri"])
    return score_partition(config, model, batch["uri"], row_groups, out)


def write(
    config: PipelineConfig,
    run_id: str,
    database_url: str,
    batch: dict[str, Any],
    champion: dict[str, Any],
    parts: list[dict[str, Any]],
) -> dict[str, Any]:
    """Replace the batch in the predictions table in one transaction, then check the row count."""
    from lifecycle.ml.scoring import prediction_rows
    from lifecycle.persistence.predictions_db import PredictionWriteError, count_batch, engine_for, write_batch

    batch_key = dt.date.fromisoformat(batch["batch_key"])
    scored = sum(p["rows"] for p in parts)
    if scored != batch["rows"]:
        raise PredictionWriteError(f"scored {scored} rows but the batch has {batch['rows']}; nothing was written")
    engine = engine_for(database_url)
    table = config.prediction.table
    try:
        with tempfile.TemporaryDirectory() as work:
            rows = prediction_rows(
                [p["uri"] for p in parts], config.name, batch_key, champion["model_name"], champion["version"],
                run_id, dt.datetime.now(dt.UTC), config.prediction.chunk_size, work,
            )  # fmt: skip
            written = write_batch(engine, table, config.name, batch_key, rows)
        in_table = count_batch(engine, table, config.name, batch_key)
    finally:
        engine.dispose()
    if not written == in_table == batch["rows"]:
        raise PredictionWriteError(
            f"row count mismatch for batch {batch_key}: input {batch['rows']}, written {written}, in table {in_table}"
        )
    return {
        "table": table,
        "batch_key": batch["batch_key"],
        "rows": in_table,
        "model_name": champion["model_name"],
        "model_version": champion["version"],
        "model_chosen_by": champion.get("chosen_by", "current champion"),
        "input_uri": batch["input_uri"],
        "dialect": engine.dialect.name,
    }
