"""Read a pipeline's sources for a time window, join them, and snapshot the result as Parquet."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd

from lifecycle.config.pipeline import PipelineConfig, Source
from lifecycle.persistence import storage

RECORD_KEY = "lifecycle.ingestion"  # frame.attrs: rows per partition and timestamp violations, kept in Parquet


class SourceError(RuntimeError):
    """A source that is missing, unreadable or cannot be joined; the message names it."""


def _read_file(uri: str, fmt: str) -> pd.DataFrame:
    """One file as a frame; an empty CSV (not even a header) is a frame with no rows, counted by the caller.
    A file that is not what its format says is a SourceError naming it (an unreachable store is not)."""
    import pyarrow as pa

    try:
        if storage.local_path(uri) is None:  # s3:// through the artifact store's client
            import tempfile

            # A local copy under the object's name, as scoring reads it: pandas infers a compression (.csv.gz,
            # .zip, ...) from the name, never from a buffer of bytes.
            with tempfile.TemporaryDirectory() as work:
                return _parse(str(storage.local_copy(uri, work)), fmt)
        return _parse(str(storage.local_path(uri)), fmt)
    except (pa.ArrowInvalid, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise SourceError(f"{uri} cannot be read as {fmt}: {err}") from err


def _parse(path: str, fmt: str) -> pd.DataFrame:
    if fmt == "parquet":
        return pd.read_parquet(path)
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


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


def parse_stamps(values: pd.Series) -> pd.Series:
    """Timestamps as datetime (unparseable: NaT), each in its own zone's wall time; mixed zones become UTC."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return values
    try:
        stamps = pd.to_datetime(values, errors="coerce", format="mixed")
    except (ValueError, TypeError):  # mixed time zones
        stamps = pd.to_datetime(values, errors="coerce", format="mixed", utc=True)
    if not pd.api.types.is_datetime64_any_dtype(stamps.dtype):
        stamps = pd.to_datetime(values, errors="coerce", format="mixed", utc=True)
    return stamps


def utc_naive(stamps: pd.Series) -> pd.Series:
    return stamps.dt.tz_convert("UTC").dt.tz_localize(None) if getattr(stamps.dt, "tz", None) is not None else stamps


def utc_now(now: dt.datetime | None = None) -> pd.Timestamp:
    """`now` (default: the wall clock) as a naive UTC timestamp, what `utc_naive` stamps compare with."""
    when = pd.Timestamp(now or dt.datetime.now(dt.UTC))
    return when.tz_convert("UTC").tz_localize(None) if when.tzinfo is not None else when


def timestamp_violations(
    values: pd.Series, day: dt.date | None, now: dt.datetime | None = None, partition: str | None = None
) -> dict[str, Any]:
    """Rows that break the timestamp rule: after `now` (future), not on `day` (other_day; a tz-aware stamp is
    judged by its own zone's date), or not a timestamp at all (unreadable). Counts add up across partitions."""
    stamps = parse_stamps(values)
    unreadable = stamps.isna() & values.notna()
    future = (utc_naive(stamps) > utc_now(now)).fillna(False).astype(bool)
    other = pd.Series(False, index=values.index)
    if day is not None:
        other = stamps.notna() & ~future & (stamps.dt.date != day)
    bad = unreadable | future | other
    label = partition or (day.isoformat() if day else None)
    return {
        "rows": int(len(values)),
        "future": int(future.sum()),
        "other_day": int(other.sum()),
        "unreadable": int(unreadable.sum()),
        "examples": [{"partition": label, "value": str(v)} for v in values[bad].head(5).tolist()],
        "by_partition": {label: int(bad.sum())} if label and bad.any() else {},
    }


def add_violations(total: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    if total is None:
        return {**part, "examples": list(part["examples"]), "by_partition": dict(part["by_partition"])}
    for key in ("rows", "future", "other_day", "unreadable"):
        total[key] += part[key]
    total["examples"] = (total["examples"] + part["examples"])[:5]
    total["by_partition"].update(part["by_partition"])
    return total


NO_VIOLATIONS: dict[str, Any] = {"rows": 0, "future": 0, "other_day": 0, "unreadable": 0, "examples": [],
                                 "by_partition": {}}  # fmt: skip


def read_partitions(
    source: Source, start: dt.date, end: dt.date, timestamp_column: str, now: dt.datetime | None = None
) -> tuple[pd.DataFrame, dict[str, int], dict[str, Any]]:
    """A date-partitioned source's rows for [start, end), with each partition's rows (an empty file counts, as
    0) and the rows whose timestamp is not on their partition's day or lies in the future."""
    uri = source.uri or ""
    frames, rows, violations = [], {}, None
    for day in days(start, end):
        part = uri.format(date=day.isoformat())
        if not storage.exists(part):
            continue
        frame = _read_file(part, source.format)
        rows[day.isoformat()] = int(len(frame))
        if len(frame) and timestamp_column not in frame.columns:
            raise SourceError(f"source {source.name!r}: partition {part} has no timestamp column {timestamp_column!r}")
        if timestamp_column in frame.columns:
            violations = add_violations(violations, timestamp_violations(frame[timestamp_column], day, now))
        if len(frame.columns):
            frames.append(frame)
    if not rows:
        raise SourceError(f"source {source.name!r}: no partitions of {uri} between {start} and {end}")
    filled = [f for f in frames if len(f)]
    if not filled:  # every partition is empty: no rows (the snapshot says so), not a missing column
        return pd.DataFrame({timestamp_column: pd.Series([], dtype="datetime64[us]")}), rows, dict(NO_VIOLATIONS)
    return pd.concat(filled, ignore_index=True), rows, violations or dict(NO_VIOLATIONS)


def in_window(frame: pd.DataFrame, column: str, start: dt.date, end: dt.date, where: str) -> pd.DataFrame:
    """The rows whose timestamp lies in [start, end); an error names the source when the column is absent."""
    if column not in frame.columns:
        raise SourceError(f"{where} has no timestamp column {column!r}")
    stamps = parse_stamps(frame[column])
    unreadable = stamps.isna() & frame[column].notna()
    if unreadable.any():
        raise SourceError(
            f"{where}: column {column!r} has {int(unreadable.sum())} values that are not timestamps, "
            f"e.g. {frame.loc[unreadable, column].head(3).tolist()}"
        )
    stamps = utc_naive(stamps)
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
    now: dt.datetime | None = None,
) -> pd.DataFrame:
    """The joined dataset for [start, end), sorted by time then id so every run sees one order.

    `frame.attrs[RECORD_KEY]` is the base source's record: rows per daily partition (None when the source is
    not date-partitioned) and the timestamp violations seen while reading, rows later cut from the window
    included (the data contract's timestamp and empty-partition rules judge them).
    """
    base_source, *others = config.sources
    where = f"source {base_source.name!r}"
    rows: dict[str, int] | None = None
    if base_source.sql is None and base_source.layout == "date_partitioned":
        frame, rows, violations = read_partitions(base_source, start, end, config.timestamp_column, now)
    else:
        frame = read_source(base_source, start, end, connection_urls)
        violations = None
    frame = in_window(frame, config.timestamp_column, start, end, where)
    if violations is None:  # a window cut from a file, glob or query: only the future can be wrong
        violations = timestamp_violations(frame[config.timestamp_column], None, now)
    for source in others:
        frame = join_source(frame, source, read_source(source, start, end, connection_urls))
    frame = frame.sort_values([config.timestamp_column, config.id_column], kind="stable").reset_index(drop=True)
    frame.attrs[RECORD_KEY] = {
        "source": base_source.name,
        "window": [start.isoformat(), end.isoformat()],
        "partitions": rows,
        "timestamp_violations": violations,
    }
    return frame


def mixed_columns(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Object columns whose values are of more than one kind (text beside numbers, booleans beside numbers):
    Parquet cannot store them, and a model would read them wrong."""
    found = {}
    for column in [c for c in frame.columns if pd.api.types.is_object_dtype(frame[c].dtype)]:
        kinds = {"number" if isinstance(v, (int, float)) and not isinstance(v, bool) else type(v).__name__
                 for v in frame[column].dropna().tolist()}  # fmt: skip
        if len(kinds) > 1:
            found[str(column)] = sorted(kinds)
    return found


def snapshot(
    config: PipelineConfig,
    as_of: dt.date,
    window_days: int,
    out_uri: str,
    connection_urls: dict[str, str] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Snapshot the training window ending at `as_of` (exclusive); return its URI, hash, rows and schema, the
    rows of each daily partition and the timestamp violations (also kept in the snapshot: frame.attrs)."""
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
    frame = load_window(config, start, as_of, connection_urls, now)
    if frame.empty:
        raise SourceError(f"pipeline {config.name!r}: no rows between {start} and {as_of}")
    mixed = mixed_columns(frame)
    if mixed:
        listed = "; ".join(f"column {c!r} holds {', '.join(kinds)}" for c, kinds in mixed.items())
        raise SourceError(
            f"pipeline {config.name!r}: the window {start}..{as_of} mixes value types within a column, as when one "
            f"partition or file holds text where the others hold numbers: {listed}"
        )
    meta = storage.write_parquet(out_uri, frame)
    found = frame.attrs[RECORD_KEY]
    return {
        **meta,
        "window_start": start.isoformat(),
        "window_end": as_of.isoformat(),
        "missing_partitions": gaps,
        "source": found["source"],
        "partitions": found["partitions"],
        "timestamp_violations": found["timestamp_violations"],
    }
