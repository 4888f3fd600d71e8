"""Read a pipeline's sources for a time window, join them, and snapshot the result as Parquet."""

from __future__ import annotations

import datetime as dt
import glob as globlib
from typing import Any

import pandas as pd

from lifecycle import storage
from lifecycle.config import PipelineConfig, Source


class SourceError(RuntimeError):
    """A source that is missing, unreadable or cannot be joined; the message names it."""


def _read_file(uri: str, fmt: str) -> pd.DataFrame:
    if storage.local_path(uri) is None:  # s3:// through the artifact store's client
        import io

        data = io.BytesIO(storage.read_bytes(uri))
        return pd.read_parquet(data) if fmt == "parquet" else pd.read_csv(data)
    path = str(storage.local_path(uri))
    return pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)


def _days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


def read_source(
    source: Source,
    start: dt.date,
    end: dt.date,
    connection_urls: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Rows of one source for [start, end); date partitions outside the window are not read."""
    if source.sql is not None:
        import sqlalchemy as sa

        url = (connection_urls or {}).get(source.conn_id or "")
        if not url:
            raise SourceError(f"source {source.name!r}: connection {source.conn_id!r} is not defined")
        engine = sa.create_engine(url)
        try:
            with engine.connect() as conn:
                return pd.read_sql_query(sa.text(source.sql), conn, params={"start": start, "end": end})
        finally:
            engine.dispose()
    uri = source.uri or ""
    if source.layout == "date_partitioned":
        frames = []
        for day in _days(start, end):
            part = uri.format(date=day.isoformat())
            if storage.exists(part):
                frames.append(_read_file(part, source.format))
        if not frames:
            raise SourceError(f"source {source.name!r}: no partitions of {uri} between {start} and {end}")
        return pd.concat(frames, ignore_index=True)
    if source.layout == "glob":
        paths = sorted(globlib.glob(str(storage.local_path(uri) or uri)))
        if not paths:
            raise SourceError(f"source {source.name!r}: no files match {uri}")
        return pd.concat([_read_file(p, source.format) for p in paths], ignore_index=True)
    if not storage.exists(uri):
        raise SourceError(f"source {source.name!r}: {uri} does not exist")
    return _read_file(uri, source.format)


def load_window(
    config: PipelineConfig,
    start: dt.date,
    end: dt.date,
    connection_urls: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The joined dataset for [start, end), sorted by time then id so every run sees one order."""
    base_source, *others = config.sources
    frame = read_source(base_source, start, end, connection_urls)
    ts = config.timestamp_column
    if ts not in frame.columns:
        raise SourceError(f"source {base_source.name!r} has no timestamp column {ts!r}")
    frame[ts] = pd.to_datetime(frame[ts])
    frame = frame[(frame[ts] >= pd.Timestamp(start)) & (frame[ts] < pd.Timestamp(end))]
    for source in others:
        assert source.join is not None
        other = read_source(source, start, end, connection_urls)
        missing = [k for k in source.join.keys if k not in other.columns or k not in frame.columns]
        if missing:
            raise SourceError(f"source {source.name!r}: join keys {missing} are missing on one side")
        if other.duplicated(source.join.keys).any():
            raise SourceError(
                f"source {source.name!r}: join keys {source.join.keys} are not unique, the join would duplicate rows"
            )
        frame = frame.merge(other, on=source.join.keys, how=source.join.how, suffixes=("", f"_{source.name}"))
    return frame.sort_values([ts, config.id_column], kind="stable").reset_index(drop=True)


def snapshot(
    config: PipelineConfig,
    as_of: dt.date,
    window_days: int,
    out_uri: str,
    connection_urls: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Snapshot the training window ending at `as_of` (exclusive); return its URI, hash, rows and schema."""
    start = as_of - dt.timedelta(days=window_days)
    frame = load_window(config, start, as_of, connection_urls)
    if frame.empty:
        raise SourceError(f"pipeline {config.name!r}: no rows between {start} and {as_of}")
    meta = storage.write_parquet(out_uri, frame)
    return {**meta, "window_start": start.isoformat(), "window_end": as_of.isoformat()}
