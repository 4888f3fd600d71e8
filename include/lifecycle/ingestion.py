"""Read a pipeline's sources for a time window, join them, and snapshot the result as Parquet."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

from lifecycle import storage
from lifecycle.config import PipelineConfig, Source


class SourceError(RuntimeError):
    """A source that is missing, unreadable or cannot be joined; the message names it."""


def _read_file(uri: str, fmt: str) -> pd.DataFrame:
    if storage.local_path(uri) is None:  # s3:// through the artifact store's client
        import tempfile

        # A local copy under the object's name, as scoring reads it: pandas infers a compression (.csv.gz,
        # .zip, ...) from the name, never from a buffer of bytes.
        with tempfile.TemporaryDirectory() as work:
            return _read_file(str(storage.local_copy(uri, work)), fmt)
    path = str(storage.local_path(uri))
    return pd.read_parquet(path) if fmt == "parquet" else pd.read_csv(path)


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days)]


def partitions(source: Source, start: dt.date, end: dt.date) -> tuple[list[str], list[str]]:
    """The files of a date-partitioned source for [start, end): the URIs present and the days missing."""
    present, missing = [], []
    for day in days(start, end):
        part = (source.uri or "").format(date=day.isoformat())
        if storage.exists(part):
            present.append(part)
        else:
            missing.append(day.isoformat())
    return present, missing


def source_files(source: Source, start: dt.date, end: dt.date) -> list[str]:
    """The files a file-based source reads for [start, end); an error names the source when there are none."""
    uri = source.uri or ""
    if source.layout == "date_partitioned":
        found = partitions(source, start, end)[0]
        if not found:
            raise SourceError(f"source {source.name!r}: no partitions of {uri} between {start} and {end}")
        return found
    if source.layout == "glob":
        found = storage.glob(uri)
        if not found:
            raise SourceError(f"source {source.name!r}: no files match {uri}")
        return found
    if not storage.exists(uri):
        raise SourceError(f"source {source.name!r}: {uri} does not exist")
    return [uri]


def query_source(source: Source, start: dt.date, end: dt.date, connection_urls: dict[str, str] | None) -> Any:
    """A SQL source's query for [start, end) as an engine and statement (the caller reads and disposes)."""
    import sqlalchemy as sa

    url = (connection_urls or {}).get(source.conn_id or "")
    if not url:
        raise SourceError(f"source {source.name!r}: connection {source.conn_id!r} is not defined")
    return sa.create_engine(url), sa.text(source.sql or ""), {"start": start, "end": end}


def read_source(
    source: Source,
    start: dt.date,
    end: dt.date,
    connection_urls: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Rows of one source for [start, end); date partitions outside the window are not read."""
    if source.sql is not None:
        engine, statement, params = query_source(source, start, end, connection_urls)
        try:
            with engine.connect() as conn:
                return pd.read_sql_query(statement, conn, params=params)
        finally:
            engine.dispose()
    files = source_files(source, start, end)
    return pd.concat([_read_file(f, source.format) for f in files], ignore_index=True)


def in_window(frame: pd.DataFrame, column: str, start: dt.date, end: dt.date, where: str) -> pd.DataFrame:
    """The rows whose timestamp lies in [start, end); an error names the source when the column is absent."""
    if column not in frame.columns:
        raise SourceError(f"{where} has no timestamp column {column!r}")
    stamps = pd.to_datetime(frame[column])
    if getattr(stamps.dt, "tz", None) is not None:
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    frame = frame.assign(**{column: stamps})
    return frame[(stamps >= pd.Timestamp(start)) & (stamps < pd.Timestamp(end))]


def join_source(frame: pd.DataFrame, source: Source, other: pd.DataFrame) -> pd.DataFrame:
    """Join a lookup source on its declared keys, refusing keys that are absent or would duplicate rows."""
    assert source.join is not None
    missing = [k for k in source.join.keys if k not in other.columns or k not in frame.columns]
    if missing:
        raise SourceError(f"source {source.name!r}: join keys {missing} are missing on one side")
    repeated = other[other.duplicated(source.join.keys, keep=False)]
    if len(repeated):
        example = repeated[source.join.keys].head(3).to_dict("records")
        raise SourceError(
            f"source {source.name!r}: join keys {source.join.keys} are not unique (e.g. {example}), "
            "the join would duplicate rows"
        )
    kinds = {k: (str(frame[k].dtype), str(other[k].dtype)) for k in source.join.keys}
    try:
        return frame.merge(other, on=source.join.keys, how=source.join.how, suffixes=("", f"_{source.name}"))
    except ValueError as err:  # keys of different kinds (numbers on one side, text on the other) never match
        raise SourceError(
            f"source {source.name!r}: cannot join on {source.join.keys}, the key types differ "
            f"(rows vs source: {kinds}): {err}"
        ) from err


def missing_partitions(config: PipelineConfig, start: dt.date, end: dt.date) -> dict[str, list[str]]:
    """The days absent from each date-partitioned source in [start, end)."""
    return {
        s.name: gaps
        for s in config.sources
        if s.sql is None and s.layout == "date_partitioned" and (gaps := partitions(s, start, end)[1])
    }


def load_window(
    config: PipelineConfig,
    start: dt.date,
    end: dt.date,
    connection_urls: dict[str, str] | None = None,
) -> pd.DataFrame:
    """The joined dataset for [start, end), sorted by time then id so every run sees one order."""
    base_source, *others = config.sources
    frame = read_source(base_source, start, end, connection_urls)
    frame = in_window(frame, config.timestamp_column, start, end, f"source {base_source.name!r}")
    for source in others:
        frame = join_source(frame, source, read_source(source, start, end, connection_urls))
    return frame.sort_values([config.timestamp_column, config.id_column], kind="stable").reset_index(drop=True)


def snapshot(
    config: PipelineConfig,
    as_of: dt.date,
    window_days: int,
    out_uri: str,
    connection_urls: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Snapshot the training window ending at `as_of` (exclusive); return its URI, hash, rows and schema."""
    start = as_of - dt.timedelta(days=window_days)
    gaps = missing_partitions(config, start, as_of)
    allowed = config.validation.max_missing_partitions
    too_many = {name: missing for name, missing in gaps.items() if len(missing) > allowed}
    if too_many:
        listed = "; ".join(f"source {n!r}: {len(m)} missing ({', '.join(m[:10])})" for n, m in too_many.items())
        raise SourceError(
            f"pipeline {config.name!r}: daily partitions missing between {start} and {as_of}, more than "
            f"validation.max_missing_partitions={allowed}: {listed}"
        )
    frame = load_window(config, start, as_of, connection_urls)
    if frame.empty:
        raise SourceError(f"pipeline {config.name!r}: no rows between {start} and {as_of}")
    meta = storage.write_parquet(out_uri, frame)
    return {**meta, "window_start": start.isoformat(), "window_end": as_of.isoformat(), "missing_partitions": gaps}
