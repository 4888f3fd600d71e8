"""Labels that arrive later than the predictions: read the YAML's `labels:` source for a range of timestamps.

Every reader (the performance DAG, the rollout DAG, the demo) gets one frame shape: `entity_id` (text, as the
predictions tables store it), `labelled_at` (the timestamp the label belongs to, naive UTC), `batch_key` (its
day, which is the batch a batch prediction was written under) and `label`. A label that arrives twice (a
correction) counts once: the one read last, which for date partitions is the newest arrival.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

from lifecycle.config.pipeline import PipelineConfig
from lifecycle.ml import ingestion
from lifecycle.ml.ingestion import SourceError

COLUMNS = ["entity_id", "labelled_at", "batch_key", "label"]


class NoLabelsSourceError(SourceError):
    """The pipeline's YAML has no `labels:` section."""


def entity_text(values: pd.Series) -> pd.Series:
    """Ids as the predictions tables store them: 42, 42.0 and "42" are one entity."""
    if pd.api.types.is_float_dtype(values) and values.dropna().map(float.is_integer).all():
        return values.astype("Int64").astype(str)
    return values.astype(str)


def read_labels(
    config: PipelineConfig,
    start: dt.date,
    end: dt.date,
    arrived_by: dt.date,
    connection_urls: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The labels for timestamps in [start, end) that had arrived by the end of `arrived_by`.

    A date-partitioned source is partitioned by arrival day: partitions `start`..`arrived_by` are read (a label
    cannot arrive before the row it labels). A file or glob source is read whole; a SQL query gets :start and
    :end. An empty frame (with the columns) is a normal answer: labels may not have arrived yet.
    """
    source = config.labels
    if source is None:
        raise NoLabelsSourceError(f"pipeline {config.name!r} has no 'labels' source in its YAML")
    id_column, timestamp_column, label_column = config.label_columns
    where = f"pipeline {config.name!r}, labels source ({source.uri or 'sql'})"
    if source.layout == "date_partitioned" and source.sql is None:
        files, _missing = ingestion.partitions(source, start, arrived_by + dt.timedelta(days=1))  # type: ignore[arg-type]
        if not files:
            return pd.DataFrame(columns=COLUMNS)
        frame = pd.concat([ingestion._read_file(f, source.format) for f in files], ignore_index=True)
    else:
        try:
            frame = ingestion.read_source(source, start, end, connection_urls)  # type: ignore[arg-type]
        except SourceError as err:
            nothing_yet = "does not exist" in str(err) or "no files match" in str(err)
            if source.sql is None and nothing_yet:
                return pd.DataFrame(columns=COLUMNS)  # nothing has arrived yet
            raise SourceError(f"{where}: {err}") from err
    missing = [c for c in (id_column, timestamp_column, label_column) if c not in frame.columns]
    if missing:
        raise SourceError(
            f"{where}: columns {missing} are missing (it has {sorted(map(str, frame.columns))[:20]}); set "
            "labels.id_column, labels.timestamp_column or labels.label_column to the names it uses"
        )
    frame = ingestion.in_window(frame, timestamp_column, start, end, where)
    frame = frame[frame[label_column].notna()]
    labels = pd.DataFrame(
        {
            "entity_id": entity_text(frame[id_column]).to_numpy(),
            "labelled_at": frame[timestamp_column].to_numpy(),
            "label": frame[label_column].to_numpy(),
        }
    )
    labels["batch_key"] = labels["labelled_at"].dt.date
    labels = labels.drop_duplicates(["entity_id", "labelled_at"], keep="last")
    return labels[COLUMNS].reset_index(drop=True)


def join_batch(predictions: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Batch predictions (entity_id, batch_key, ...) with the label of the same entity on the same day.

    More than one label for an entity on one day (two timestamps) is ambiguous for a daily batch: the latest
    timestamp's wins. Unlabelled rows keep `label` empty (NaN), so a caller can count what is still to come.
    """
    daily = labels.sort_values("labelled_at").drop_duplicates(["entity_id", "batch_key"], keep="last")
    return predictions.merge(
        daily[["entity_id", "batch_key", "label"]].rename(columns={"label": "actual"}),
        on=["entity_id", "batch_key"],
        how="left",
    )


def summary(labels: pd.DataFrame) -> dict[str, Any]:
    """Counts for logs and XCom: how many labels, over which days."""
    if labels.empty:
        return {"labels": 0, "first_day": None, "last_day": None}
    return {
        "labels": len(labels),
        "first_day": str(min(labels["batch_key"])),
        "last_day": str(max(labels["batch_key"])),
    }
