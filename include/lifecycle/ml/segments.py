"""Segment models: which segments a window trains, each segment's champion, and routing rows to them.

A segmented pipeline (`segments: {column: ...}` in its YAML) trains one model per value of the column as
mapped Airflow tasks. Each segment is the pipeline restricted to its rows (`PipelineConfig.for_segment`) and
its own registered model, `<model_name>__<segment>`, so every registry guarantee (compare-and-set alias
moves, the history, rollbacks) holds per segment without anything new.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from lifecycle.config.pipeline import ConfigError, PipelineConfig, segment_slug
from lifecycle.persistence import storage

log = logging.getLogger(__name__)

# Tags on each segment's registered model, so batch prediction can find a pipeline's segments in the registry.
PIPELINE_TAG = "lifecycle.pipeline"
COLUMN_TAG = "lifecycle.segment_column"
VALUE_TAG = "lifecycle.segment"


class NoSegmentsError(ConfigError):
    """No segment has enough rows to train on (or none of the listed values occur)."""


def segment_values(frame: Any, column: str) -> Any:
    """The column as segment values (strings; missing stays missing), as routing and training both see them."""
    values = frame[column]
    return values.astype("string").where(values.notna())


def plan(config: PipelineConfig, snapshot_uri: str, sha256: str | None = None) -> list[str]:
    """The segments this window trains: the listed ones, else every value with at least `min_rows` rows.

    Segments left out are logged with their row counts; a listed segment with too few rows is left out too
    (its task would fail on an empty split), and the log says so.
    """
    segments = config.segments
    if segments is None:
        raise ConfigError(f"pipeline {config.name!r} has no segments")
    frame = storage.read_parquet(snapshot_uri, sha256)
    if segments.column not in frame.columns:
        raise ConfigError(
            f"pipeline {config.name!r}: segments.column {segments.column!r} is not a column of the training window "
            f"(columns: {sorted(map(str, frame.columns))[:30]})"
        )
    counts = segment_values(frame, segments.column).value_counts(dropna=True)
    wanted = segments.values if segments.values is not None else [str(v) for v in counts.index]
    chosen = sorted(v for v in wanted if counts.get(v, 0) >= segments.min_rows)
    left_out = {v: int(counts.get(v, 0)) for v in wanted if v not in chosen}
    if left_out:
        log.warning(
            "segments with fewer than %d rows in the window are not trained (their rows cannot be scored until "
            "they have a champion): %s",
            segments.min_rows,
            ", ".join(f"{v} ({n} rows)" for v, n in sorted(left_out.items(), key=lambda kv: kv[1])),
        )
    if not chosen:
        raise NoSegmentsError(
            f"pipeline {config.name!r}: no value of {segments.column!r} has {segments.min_rows} rows in the window "
            f"(segments.min_rows); counts: {dict(counts.head(10).astype(int))}"
        )
    slugs: dict[str, str] = {}
    for value in chosen:
        other = slugs.setdefault(segment_slug(value), value)
        if other != value:
            raise ConfigError(
                f"pipeline {config.name!r}: segment values {other!r} and {value!r} would share the registered "
                f"model {config.registered_model_name}__{segment_slug(value)}"
            )
    log.info("training %d segments of %s: %s", len(chosen), segments.column, ", ".join(chosen))
    return chosen


def rows_of(config: PipelineConfig, frame: Any) -> Any:
    """The rows of `config`'s segment (a config from `for_segment`)."""
    column = config.segments.column  # type: ignore[union-attr]
    return frame[(segment_values(frame, column) == config.segment).fillna(False).to_numpy()].reset_index(drop=True)


def tag_registered_model(config: PipelineConfig) -> None:
    """Mark a segment's registered model as the pipeline's (idempotent: a retry sets the same tags)."""
    from lifecycle.registry.tracking import mlflow_client

    client = mlflow_client()
    name = config.registered_model_name
    pipeline = config.name.rsplit("__", 1)[0]
    client.set_registered_model_tag(name, PIPELINE_TAG, pipeline)
    client.set_registered_model_tag(name, COLUMN_TAG, config.segments.column)  # type: ignore[union-attr]
    client.set_registered_model_tag(name, VALUE_TAG, str(config.segment))


def registered_segments(config: PipelineConfig) -> dict[str, str]:
    """Segment value -> registered model name, for every segment model of this pipeline in the registry."""
    from lifecycle.registry.tracking import mlflow_client

    prefix = f"{config.registered_model_name}__"
    found: dict[str, str] = {}
    token = None
    while True:
        page = mlflow_client().search_registered_models(
            filter_string=f"name LIKE '{prefix}%'",  # `_` matches any character: the names are checked below
            max_results=1000,
            page_token=token,
        )
        for model in page:
            tags = model.tags or {}
            if model.name.startswith(prefix) and tags.get(PIPELINE_TAG) == config.name and VALUE_TAG in tags:
                found[tags[VALUE_TAG]] = model.name
        token = page.token
        if not token:
            return found


def resolve_champions(
    config: PipelineConfig,
    choice: str,
    run_type: str | None,
    at: dt.datetime | None,
    database_url: str | None,
) -> dict[str, Any]:
    """Each segment's model for this batch, by the same rule (`model` Param) as an unsegmented pipeline's.

    A version number names one model, so it is refused here. A segment with no champion (by the rule) is
    left out: its rows make the batch fail at validation, naming the segment, before anything is written.
    """
    from lifecycle.tasks.batch_scoring import ModelChoiceError, NoChampionError, resolve_one

    if str(choice).strip().isdigit():
        raise ModelChoiceError(
            f"the run's model Param is version {choice}, but pipeline {config.name!r} has one model per segment: "
            "use auto, champion or on_date; nothing was scored"
        )
    models = registered_segments(config)
    resolved: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for value in sorted(models):
        try:
            resolved[value] = resolve_one(config.for_segment(value), choice, run_type, at, database_url)
        except NoChampionError as err:
            missing[value] = str(err)
    fallback = None
    if config.segments.fallback == "pooled":  # type: ignore[union-attr]
        try:
            fallback = resolve_one(config, choice, run_type, at, database_url)
        except NoChampionError as err:
            missing["<pooled fallback>"] = str(err)
    if not resolved and fallback is None:
        raise NoChampionError(
            f"pipeline {config.name!r} has no segment champion ({len(models)} segment models registered) and no "
            f"pooled fallback. Run {config.name}__retrain first; nothing was written."
        )
    rules = sorted({r["chosen_by"] for r in [*resolved.values(), *([fallback] if fallback else [])]})
    return {
        "model_name": config.registered_model_name,
        "version": f"{len(resolved)} segments",
        "model_uri": None,
        "run_id": None,
        "chosen_by": "; ".join(rules),
        "segments": resolved,
        "fallback": fallback,
        "segments_without_champion": missing,
        "segment_column": config.segments.column,  # type: ignore[union-attr]
    }


def unknown_segments(config: PipelineConfig, frame: Any, champions: dict[str, Any]) -> dict[str, int]:
    """Segment values in `frame` that have no champion, with their row counts (missing values as '<missing>').

    With a pooled fallback those rows are scored by it; without one they make the batch fail.
    """
    values = segment_values(frame, config.segments.column)  # type: ignore[union-attr]
    counts = values.fillna("<missing>").value_counts()
    return {str(v): int(n) for v, n in counts.items() if v not in champions}
