"""The batch-prediction lifecycle, one function per Airflow task: plain arguments in, small dicts out."""

from __future__ import annotations

import datetime as dt
import tempfile
from typing import Any

from lifecycle import storage
from lifecycle.config import PipelineConfig


class NoChampionError(RuntimeError):
    """There is no model behind the `champion` alias: nothing can be scored."""


def resolve_champion(config: PipelineConfig) -> dict[str, Any]:
    """Resolve the alias once, at the start: every partition then loads this exact version."""
    from lifecycle import tracking

    version = tracking.champion(config.registered_model_name)
    if version is None:
        raise NoChampionError(
            f"pipeline {config.name!r} has no champion: models:/{config.registered_model_name}@champion is not set. "
            f"Run {config.name}__retrain first (or move the alias to a version); nothing was written."
        )
    return {
        "model_name": config.registered_model_name,
        "version": str(version.version),
        "model_uri": f"models:/{config.registered_model_name}/{version.version}",
        "run_id": version.run_id,
    }


def stage(
    config: PipelineConfig,
    run_id: str,
    batch_date: str,
    input_uri: str | None,
    connection_urls: dict[str, str] | None = None,
) -> dict[str, Any]:
    from lifecycle.scoring import stage_batch

    out = storage.artifact_uri(config.name, run_id, "prediction", "batch.parquet")
    return stage_batch(config, dt.date.fromisoformat(batch_date), out, input_uri, connection_urls)


def validate_batch(config: PipelineConfig, run_id: str, batch: dict[str, Any], champion: dict[str, Any]) -> dict:
    """The training suite minus the target, chunk by chunk, plus the champion's signature and unique ids."""
    import mlflow
    import pyarrow.parquet as pq

    from lifecycle.scoring import ScoringBatchError, check_signature
    from lifecycle.tracking import mlflow_client
    from lifecycle.validation import DataValidationError, validate

    mlflow_client()
    schema = mlflow.models.get_model_info(champion["model_uri"]).signature.inputs
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
                validate(chunk, config, with_target=False)
            except ScoringBatchError as err:
                failures.append({"chunk": group, "error": str(err)})
            except DataValidationError as err:
                failures.append({"chunk": group, "error": str(err), "failures": err.report["failures"]})
            ids = chunk[config.id_column].tolist()
            duplicates.extend(i for i in ids if i in seen_ids)
            seen_ids.update(ids)
            if failures:
                break
    if duplicates:
        failures.append({"error": f"{config.id_column} repeats within the batch, e.g. {duplicates[:5]}"})
    report = {"success": not failures, "rows": batch["rows"], "failures": failures, "batch_uri": batch["uri"]}
    storage.write_json(report_uri, report)
    if failures:
        raise DataValidationError(
            f"scoring batch rejected, nothing written: {failures[0]['error']} (report: {report_uri})", report
        )
    return {"report_uri": report_uri}


def plan_partitions(batch: dict[str, Any], partitions: int) -> list[list[int]]:
    from lifecycle.scoring import partition_row_groups

    return partition_row_groups(batch["row_groups"], partitions)


def score(
    config: PipelineConfig, run_id: str, batch: dict[str, Any], champion: dict[str, Any], row_groups: list[int]
) -> dict[str, Any]:
    from lifecycle import model_trust
    from lifecycle.scoring import score_partition

    model = model_trust.load(champion["model_uri"])
    name = f"part-{row_groups[0]:05d}-{row_groups[-1]:05d}.parquet"
    out = storage.artifact_uri(config.name, run_id, "prediction", "scores", name)
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
    from lifecycle.predictions_db import PredictionWriteError, count_batch, engine_for, write_batch
    from lifecycle.scoring import prediction_rows

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
        "input_uri": batch["input_uri"],
        "dialect": engine.dialect.name,
    }
