"""Batch scoring in chunks: memory follows the chunk size, not the batch size.

The batch is staged once as Parquet with one row group per chunk; partitions are contiguous ranges of
row groups, so mapped Airflow tasks on several workers can score one large batch side by side.
"""

from __future__ import annotations

import datetime as dt
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lifecycle.config.pipeline import PipelineConfig
from lifecycle.ml.ingestion import (
    NO_VIOLATIONS,
    SourceError,
    add_violations,
    in_window,
    join_source,
    query_source,
    read_source,
    source_files,
    timestamp_violations,
)
from lifecycle.persistence import storage


class ScoringBatchError(ValueError):
    """A scoring batch that cannot be scored; the message names the column or file at fault."""


def _file_chunks(uri: str, fmt: str, chunk_size: int, work: Path) -> Iterator[pd.DataFrame]:
    path = storage.local_copy(uri, work)
    try:
        if fmt == "csv" or uri.endswith(".csv"):
            try:
                yield from pd.read_csv(path, chunksize=chunk_size)
            except pd.errors.EmptyDataError:  # not even a header: no rows
                return
            return
        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size):
            yield batch.to_pandas()
    except (pa.ArrowInvalid, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SourceError(f"{uri} cannot be read as {'csv' if uri.endswith('.csv') else fmt}: {err}") from err


def input_prefixes(config: PipelineConfig) -> list[str]:
    """Where a trigger's `input_uri` may point: as configured, else the first source's folder."""
    if config.prediction.input_prefixes:
        return list(config.prediction.input_prefixes)
    uri = config.sources[0].uri
    if uri is None:
        return []
    fixed = re.split(r"[*?\[{]", uri, maxsplit=1)[0]
    return [fixed.rsplit("/", 1)[0] + "/"] if "/" in fixed else []


def _base_chunks(
    config: PipelineConfig,
    input_uri: str | None,
    chunk_size: int,
    work: Path,
    connection_urls: dict[str, str],
    day: dt.date,
) -> Iterator[pd.DataFrame]:
    """The day's base rows, chunk by chunk: the given file, the day's partition, or the day's rows of the rest."""
    base = config.sources[0]
    next_day = day + dt.timedelta(days=1)
    if input_uri is not None:  # a file chosen at trigger time is scored whole, whatever the source's kind
        storage.require_under(input_uri, input_prefixes(config), "input_uri")
        if not storage.exists(input_uri):
            raise SourceError(f"input_uri {input_uri} does not exist")
        yield from _file_chunks(input_uri, "csv" if input_uri.endswith(".csv") else "parquet", chunk_size, work)
        return
    if base.sql is not None:  # the query's :start/:end select the day
        engine, statement, params = query_source(base, day, next_day, connection_urls)
        try:
            with engine.connect() as conn:
                yield from pd.read_sql_query(statement, conn, params=params, chunksize=chunk_size)
        finally:
            engine.dispose()
        return
    if base.layout == "date_partitioned":
        uri = (base.uri or "").format(date=day.isoformat())
        if not storage.exists(uri):
            raise SourceError(f"source {base.name!r}: no scoring input at {uri}")
        yield from _file_chunks(uri, base.format, chunk_size, work)
        return
    # A single file or a glob holds many days: score only the rows stamped with the batch's day.
    where = f"source {base.name!r}"
    for uri in source_files(base, day, next_day):
        for chunk in _file_chunks(uri, base.format, chunk_size, work):
            yield in_window(chunk, config.timestamp_column, day, next_day, where)


def stage_batch(
    config: PipelineConfig,
    batch_date: dt.date,
    out_uri: str,
    input_uri: str | None = None,
    connection_urls: dict[str, str] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Read the day's base rows (or `input_uri`) chunk by chunk, join the other sources, stage as Parquet.

    The result counts the rows that break the timestamp rule (`timestamp_violations`): stamped in the future, or
    on another day than the batch's (a file, glob or query is already cut to the day; an `input_uri` is scored
    whole as the batch, so only the future counts there). The data contract's check judges them.
    """
    connection_urls = connection_urls or {}
    base, *others = config.sources
    described = input_uri or base.uri or f"source {base.name!r} (sql)"
    if input_uri is None and base.uri is not None:
        described = base.uri.format(date=batch_date.isoformat())
    lookups = [(s, read_source(s, batch_date, batch_date + dt.timedelta(days=1), connection_urls)) for s in others]
    chunk_size = config.prediction.chunk_size
    rows, chunks = 0, []
    seen: dict[str, list[pa.DataType]] = {}  # column -> its type in each chunk where it has a value
    day_rule = batch_date if input_uri is None else None
    violations = None
    with tempfile.TemporaryDirectory() as work:
        staged = Path(work) / "batch.parquet"
        # Pass 1. A reader infers types chunk by chunk (a CSV or SQL chunk of whole numbers is integers, the next
        # with a decimal floats; a column missing from a whole chunk has no type at all), so the batch's schema is
        # only known once every chunk has been seen. While each chunk has the first one's schema (a Parquet
        # source: the usual case) it goes straight into the staged file as its row group, and there is no pass 2
        # (writing and reading every row once more was about a third of staging's time). From the first chunk that differs,
        # each chunk goes to a file of its own, and pass 2 rewrites them all under the batch's schema.
        writer: pq.ParquetWriter | None = None
        first_chunks: Path | None = None  # the chunks the staged file held when one differed
        try:
            for chunk in _base_chunks(config, input_uri, chunk_size, Path(work), connection_urls, batch_date):
                if chunk.empty:
                    continue
                if config.timestamp_column in chunk.columns:  # absent: the suite names the missing column
                    found = timestamp_violations(chunk[config.timestamp_column], day_rule, now, batch_date.isoformat())
                    violations = add_violations(violations, found)
                for source, lookup in lookups:
                    chunk = join_source(chunk, source, lookup)
                table = pa.Table.from_pandas(chunk, preserve_index=False).replace_schema_metadata(None)
                for field, column in zip(table.schema, table.columns, strict=True):
                    if column.null_count < len(column):
                        seen.setdefault(field.name, []).append(field.type)
                if writer is None and first_chunks is None:
                    writer = pq.ParquetWriter(staged, table.schema)
                if writer is not None and table.schema.equals(writer.schema):
                    writer.write_table(table, row_group_size=chunk_size)
                else:
                    if writer is not None:
                        writer.close()
                        writer = None
                        first_chunks = staged.rename(Path(work) / "first-chunks.parquet")
                    chunks.append(Path(work) / f"chunk-{len(chunks):06d}.parquet")
                    pq.write_table(table, chunks[-1])
                rows += table.num_rows
        finally:
            if writer is not None:
                writer.close()
        if rows == 0:
            raise ScoringBatchError(f"scoring input {described} has no rows for {batch_date}")
        if first_chunks is not None:  # Pass 2: one schema that holds every chunk, one row group per chunk.
            schema = _batch_schema(pq.read_schema(first_chunks), seen, described)
            with pq.ParquetWriter(staged, schema) as out, pq.ParquetFile(first_chunks) as done:
                for group in range(done.num_row_groups):
                    out.write_table(_conform(done.read_row_group(group), schema, described), row_group_size=chunk_size)
                for path in chunks:
                    table = pq.read_table(path)
                    out.write_table(_conform(table, schema, described), row_group_size=chunk_size)
                    path.unlink()
        storage.upload_file(staged, out_uri)
        groups = pq.ParquetFile(staged).num_row_groups
    return {
        "uri": out_uri,
        "input_uri": described,
        "rows": rows,
        "row_groups": groups,
        "batch_key": batch_date.isoformat(),
        "partitions": {batch_date.isoformat(): rows},
        "timestamp_violations": violations or dict(NO_VIOLATIONS),
        "timestamp_rule": "not in the future"
        if day_rule is None
        else f"on {batch_date.isoformat()}, not in the future",
    }


def _batch_schema(first: pa.Schema, seen: dict[str, list[pa.DataType]], where: str) -> pa.Schema:
    """The first chunk's columns, each typed to hold its values in every chunk (integers and floats: floats)."""
    fields = []
    for field in first:
        types = seen.get(field.name)
        if not types:  # no value in the whole batch: the type it was read with
            fields.append(field)
            continue
        try:
            unified = pa.unify_schemas([pa.schema([(field.name, t)]) for t in types], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:
            kinds = sorted({str(t) for t in types})
            raise ScoringBatchError(
                f"{where}: column {field.name!r} has values of different types in different chunks ({kinds}): {err}"
            ) from err
        fields.append(unified.field(field.name))
    return pa.schema(fields)


def _conform(table: pa.Table, schema: pa.Schema, uri: str) -> pa.Table:
    try:
        return table.select(schema.names).cast(schema)
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise ScoringBatchError(f"{uri}: a later chunk has a different schema than the first: {err}") from err


def check_signature(frame: pd.DataFrame, input_schema: Any, where: str) -> None:
    """Check the batch against the champion's signature before anything is scored or written."""
    problems = []
    for spec in input_schema.inputs:
        name, kind = spec.name, str(spec.type).lower()
        if name not in frame.columns:
            if getattr(spec, "required", True):
                problems.append(f"column {name!r} is missing")
            continue
        column = frame[name]
        numeric_expected = any(t in kind for t in ("double", "float", "long", "integer"))
        if numeric_expected and not pd.api.types.is_numeric_dtype(column):
            converted = pd.to_numeric(column, errors="coerce")
            bad = column[converted.isna() & column.notna()].head(3).tolist()
            problems.append(f"column {name!r} must be numeric ({kind}), got {column.dtype} e.g. {bad}")
    if problems:
        raise ScoringBatchError(f"{where} does not match the champion's signature: " + "; ".join(problems))


def partition_row_groups(row_groups: int, partitions: int) -> list[list[int]]:
    """Contiguous ranges of row groups, one per partition, none empty."""
    partitions = max(1, min(partitions, row_groups))
    bounds = np.linspace(0, row_groups, partitions + 1).round().astype(int)
    return [list(range(bounds[i], bounds[i + 1])) for i in range(partitions)]


SCORES_SCHEMA = pa.schema([("entity_id", pa.string()), ("score", pa.float64()), ("label", pa.string())])
# Segment models: each row also names the model that scored it.
SEGMENT_SCORES_SCHEMA = pa.schema([*SCORES_SCHEMA, ("model_name", pa.string()), ("model_version", pa.string())])


class SegmentRouter:
    """Scores each row with its segment's champion; a model is loaded the first time its segment appears."""

    def __init__(
        self, config: PipelineConfig, champions: dict[str, dict[str, Any]], fallback: dict[str, Any] | None = None
    ):
        self.config = config
        self.champions = champions
        self.fallback = fallback  # the pooled model, for rows of segments without a champion of their own
        self._models: dict[str, Any] = {}

    def champion(self, segment: str) -> dict[str, Any] | None:
        return self.champions.get(segment, self.fallback)

    def model(self, segment: str) -> Any:
        uri = self.champion(segment)["model_uri"]  # type: ignore[index]
        if uri not in self._models:
            from lifecycle.registry import model_trust

            self._models[uri] = model_trust.load(uri)
        return self._models[uri]

    def score(self, chunk: pd.DataFrame) -> pa.Table:
        from lifecycle.ml.features import input_columns
        from lifecycle.ml.segments import segment_values

        column = self.config.segments.column  # type: ignore[union-attr]
        segments = segment_values(chunk, column).fillna("<missing>").to_numpy(dtype=object)
        frame = chunk[input_columns(self.config, chunk)]
        rows = len(chunk)
        score, label = np.empty(rows, dtype=float), np.empty(rows, dtype=object)
        names, versions = np.empty(rows, dtype=object), np.empty(rows, dtype=object)
        for segment in pd.unique(segments):
            champion = self.champion(segment)
            if champion is None:  # validation refuses such a batch first; this guards a direct call
                raise ScoringBatchError(f"column {column!r}: segment {segment!r} has no champion; nothing was scored")
            at = np.flatnonzero(segments == segment)
            score[at], label[at] = predict(
                self.config, self.model(segment), frame.iloc[at], self.config.prediction.threshold
            )
            names[at], versions[at] = champion["model_name"], champion["version"]
        ids = chunk[self.config.id_column].astype(str).to_numpy()
        columns = {"entity_id": ids, "score": score, "label": label, "model_name": names, "model_version": versions}
        return pa.table(columns, schema=SEGMENT_SCORES_SCHEMA)


def score_partition(
    config: PipelineConfig,
    model: Any,
    batch_uri: str,
    row_groups: list[int],
    out_uri: str,
) -> dict[str, Any]:
    """Score the given row groups chunk by chunk; write (entity_id, score, label) as Parquet, in row-group order.

    One chunk at a time, on the task's own thread: parallelism is the mapped partitions', which Airflow's pools
    and worker slots account for (a thread pool here would take cores no slot was given).
    """
    rows = 0
    routed = isinstance(model, SegmentRouter)
    schema = SEGMENT_SCORES_SCHEMA if routed else SCORES_SCHEMA
    with tempfile.TemporaryDirectory() as work:
        batch = pq.ParquetFile(storage.local_copy(batch_uri, work))
        out = Path(work) / "scores.parquet"
        # Dictionary-encode the repeated strings only: the ids are unique, a dictionary of them is work thrown away.
        repeated = ["label", "model_name", "model_version"] if routed else ["label"]
        with pq.ParquetWriter(out, schema, use_dictionary=repeated) as writer:
            for group in row_groups:
                chunk = batch.read_row_group(group).to_pandas()
                scored = model.score(chunk) if routed else _score_chunk(config, model, chunk)
                writer.write_table(scored)
                rows += scored.num_rows
        storage.upload_file(out, out_uri)
    return {"uri": out_uri, "rows": rows}


def _score_chunk(config: PipelineConfig, model: Any, chunk: pd.DataFrame) -> pa.Table:
    from lifecycle.ml.features import input_columns

    score, label = predict(config, model, chunk[input_columns(config, chunk)], config.prediction.threshold)
    ids = chunk[config.id_column].astype(str).to_numpy()
    return pa.table({"entity_id": ids, "score": score, "label": label}, schema=SCORES_SCHEMA)


def predict(config: PipelineConfig, model: Any, frame: pd.DataFrame, threshold: float) -> tuple[Any, Any]:
    if config.task == "regression":
        return np.asarray(model.predict(frame), dtype=float), np.full(len(frame), None, dtype=object)
    proba = np.asarray(model.predict_proba(frame), dtype=float)
    classes = np.asarray(model.classes_)
    if config.task == "binary":
        score = proba[:, 1]
        return score, np.where(score >= threshold, str(classes[1]), str(classes[0])).astype(object)
    return proba.max(axis=1), classes[proba.argmax(axis=1)].astype(str).astype(object)


def prediction_rows(
    part_uris: list[str],
    pipeline: str,
    batch_key: dt.date,
    model_name: str,
    model_version: str,
    run_id: str,
    scored_at: dt.datetime,
    chunk_size: int,
    work: str,
) -> Iterator[pa.Table]:
    """The scored partitions as chunks of table rows (Arrow tables in predictions_db.COLUMNS order), streamed.

    Columnar, not tuples: a Python tuple per row cost the writer more than the database's own work on the row,
    and predictions_db.write_batch encodes an Arrow chunk for PostgreSQL's COPY column by column.
    """
    constants = {
        "pipeline": pa.scalar(pipeline, pa.string()),
        "batch_key": pa.scalar(batch_key, pa.date32()),
        "model_name": pa.scalar(model_name, pa.string()),
        "model_version": pa.scalar(str(model_version), pa.string()),
        "airflow_run_id": pa.scalar(run_id, pa.string()),
        "scored_at": pa.scalar(scored_at, pa.timestamp("us", tz="UTC" if scored_at.tzinfo else None)),
    }
    for uri in part_uris:
        parquet = pq.ParquetFile(storage.local_copy(uri, work))
        routed = "model_name" in parquet.schema_arrow.names  # segment models: each row names its model
        columns = ["entity_id", "score", "label", *(["model_name", "model_version"] if routed else [])]
        for batch in parquet.iter_batches(batch_size=chunk_size, columns=columns):
            rows = batch.num_rows
            yield pa.table(
                {
                    "pipeline": pa.repeat(constants["pipeline"], rows),
                    "batch_key": pa.repeat(constants["batch_key"], rows),
                    "entity_id": batch.column("entity_id"),
                    "score": batch.column("score"),
                    "label": batch.column("label"),
                    "model_name": batch.column("model_name") if routed else pa.repeat(constants["model_name"], rows),
                    "model_version": (
                        batch.column("model_version") if routed else pa.repeat(constants["model_version"], rows)
                    ),
                    "airflow_run_id": pa.repeat(constants["airflow_run_id"], rows),
                    "scored_at": pa.repeat(constants["scored_at"], rows),
                }
            )
