"""Check a pipeline YAML against its data before anything runs: one report of every problem, not the first.

Reads the training window the retrain DAG would read (`[as_of - window_days, as_of)`) with the ingestion
module's own readers, then checks what the later phases will need: the columns, their types, the derived
expressions, the target's values, the partitions, the row counts and the time split. Each problem names the
file, source or column; errors stop a run, warnings deserve a look. No Airflow here: `python -m lifecycle
check` resolves SQL connections and passes them in.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from pathlib import Path
from typing import Any

from lifecycle.config.pipeline import PipelineConfig, Source

RARE_CLASS_SHARE = 0.02  # a class under this share of the rows gets a warning


class _Report:
    def __init__(self, file: str | None):
        self.file = file
        self.problems: list[dict[str, Any]] = []
        self.unread: list[str] = []  # sources that could not be read or joined

    def add(
        self,
        level: str,
        message: str,
        *,
        source: str | None = None,
        column: str | None = None,
        field: str | None = None,
    ) -> None:
        self.problems.append(
            {"level": level, "file": self.file, "source": source, "column": column, "field": field, "message": message}
        )

    def error(self, message: str, **where: str | None) -> None:
        self.add("error", message, **where)

    def warning(self, message: str, **where: str | None) -> None:
        self.add("warning", message, **where)

    def absent(self, message: str, **where: str | None) -> None:
        """A column not found: only a warning while a source it may come from could not be read."""
        if self.unread:
            self.warning(f"{message}; it may be in {self.unread}, which could not be read or joined", **where)
        else:
            self.error(message, **where)


def default_as_of(config: PipelineConfig, today: dt.date | None = None) -> dt.date:
    """The day after the newest data of the base source, so the check sees the window tomorrow's retrain
    reads; today when that cannot be found cheaply (a SQL base source, no files)."""
    newest = newest_day(config.sources[0], config.timestamp_column)
    return newest + dt.timedelta(days=1) if newest else (today or dt.date.today())


def newest_day(source: Source, timestamp_column: str) -> dt.date | None:
    """The newest day of a file source: its newest partition, or its newest timestamp; None for SQL."""
    from lifecycle.ml.ingestion import read_source
    from lifecycle.persistence import storage

    if source.sql is not None or not source.uri:
        return None
    try:
        if source.layout == "date_partitioned":
            pattern = re.escape(source.uri).replace(re.escape("{date}"), r"(\d{4}-\d{2}-\d{2})")
            found = [re.fullmatch(pattern, f) for f in storage.glob(source.uri.replace("{date}", "*"))]
            days = [dt.date.fromisoformat(m.group(1)) for m in found if m]
            return max(days) if days else None
        frame = read_source(source, dt.date.min, dt.date.max)
        import pandas as pd

        newest = pd.to_datetime(frame[timestamp_column]).max()
        return None if pd.isna(newest) else newest.date()
    except Exception:  # the check itself reports why the source cannot be read
        return None


def check_pipeline(
    config: PipelineConfig,
    as_of: dt.date,
    window_days: int | None,
    connection_urls: dict[str, str] | None,
    *,
    path: str | Path | None = None,
) -> dict[str, Any]:
    """Every problem of the pipeline's training window ending at `as_of` (exclusive), as a JSON-able report."""
    from lifecycle.ml.ingestion import missing_partitions

    days = window_days or config.training.window_days
    start = as_of - dt.timedelta(days=days)
    report = _Report(str(path) if path else None)
    out: dict[str, Any] = {
        "pipeline": config.name,
        "file": report.file,
        "task": config.task,
        "as_of": as_of.isoformat(),
        "window": {"start": start.isoformat(), "end": as_of.isoformat(), "days": days},
        "sources": [],
    }
    gaps = missing_partitions(config, start, as_of)
    allowed = config.validation.max_missing_partitions
    frames = {
        s.name: _read(s, start, as_of, connection_urls, report, out, gaps.get(s.name, []), days) for s in config.sources
    }
    for name, missing in gaps.items():
        listed = ", ".join(day_ranges(missing))
        if len(missing) > allowed:
            report.error(
                f"{len(missing)} of {days} daily partitions are missing, more than "
                f"validation.max_missing_partitions={allowed}: {listed}",
                source=name,
            )
        else:
            report.warning(f"{len(missing)} daily partition(s) missing (allowed: {allowed}): {listed}", source=name)
    frame = _joined(config, frames, start, as_of, report, out)
    if frame is not None:
        _check_frame(config, frame, report, out)
    out["problems"] = report.problems
    out["errors"] = sum(p["level"] == "error" for p in report.problems)
    out["warnings"] = sum(p["level"] == "warning" for p in report.problems)
    out["ok"] = out["errors"] == 0
    return out


def _read(
    source: Source,
    start: dt.date,
    end: dt.date,
    urls: dict[str, str] | None,
    report: _Report,
    out: dict[str, Any],
    missing: list[str],
    days: int,
) -> Any:
    from lifecycle.ml.ingestion import SourceError, read_source

    info: dict[str, Any] = {
        "name": source.name,
        "kind": "sql" if source.sql else source.layout,
        "location": f"connection {source.conn_id}" if source.sql else source.uri,
    }
    if source.layout == "date_partitioned" and not source.sql:
        info["partitions"] = {"expected": days, "present": days - len(missing), "missing": missing}
    out["sources"].append(info)
    if source.sql and source.conn_id not in (urls or {}):
        report.error(
            f"connection {source.conn_id!r} is not defined: set AIRFLOW_CONN_{source.conn_id.upper()} "
            f"to its URI, or add it with `airflow connections add`",
            source=source.name,
        )
        report.unread.append(source.name)
        return None
    try:
        frame = read_source(source, start, end, urls)
    except Exception as err:  # any failure to read is the finding
        why = str(err).removeprefix(f"source {source.name!r}: ")
        kind = "" if isinstance(err, SourceError) else f"{type(err).__name__}: "
        report.error(f"cannot be read ({info['location']}): {kind}{why}", source=source.name)
        report.unread.append(source.name)
        return None
    info.update(rows=int(len(frame)), columns=[str(c) for c in frame.columns])
    return frame


def _joined(
    config: PipelineConfig, frames: dict[str, Any], start: dt.date, end: dt.date, report: _Report, out: dict[str, Any]
) -> Any:
    """What ingestion.load_window builds, from the frames already read, reporting every join's problem."""
    from lifecycle.ml.ingestion import in_window, join_source

    base_source, *others = config.sources
    frame = frames[base_source.name]
    if frame is None:
        return None
    ts = config.timestamp_column
    if ts not in frame.columns:
        report.error(
            f"the base source has no timestamp column {ts!r}{_near(ts, frame.columns)}",
            source=base_source.name,
            column=ts,
            field="timestamp_column",
        )
        return None
    try:
        frame = in_window(frame, ts, start, end, f"source {base_source.name!r}")
    except Exception as err:
        report.error(f"timestamp column {ts!r} cannot be read as dates: {err}", source=base_source.name, column=ts)
        return None
    if frame.empty:
        report.error(f"no rows with {ts} between {start} and {end}", source=base_source.name, column=ts)
        return None
    for source in others:
        other = frames[source.name]
        if other is None:
            continue
        info = next(s for s in out["sources"] if s["name"] == source.name)
        try:
            joined = join_source(frame, source, other)
        except Exception as err:  # absent or non-unique keys, or keys of clashing types
            report.error(str(err).removeprefix(f"source {source.name!r}: "), source=source.name, field="join.keys")
            report.unread.append(source.name)
            continue
        keys = source.join.keys
        matched = frame[keys].merge(other[keys].drop_duplicates(), on=keys, how="left", indicator=True)
        unmatched = int((matched["_merge"] == "left_only").sum())
        info["join"] = {"keys": keys, "how": source.join.how, "unmatched_rows": unmatched}
        clash = sorted(set(other.columns) & set(frame.columns) - set(keys))
        if clash:
            report.warning(
                f"columns {clash} are also in earlier sources: this source's copies are renamed "
                f"with the suffix _{source.name}",
                source=source.name,
            )
        if unmatched == len(frame):
            report.error(f"no row matches on {keys} (are the key types the same on both sides?)", source=source.name)
        elif unmatched:
            share = unmatched / len(frame)
            effect = "dropped by the inner join" if source.join.how == "inner" else "get nulls from it"
            report.warning(f"{unmatched} rows ({share:.1%}) have no match on {keys} and {effect}", source=source.name)
        frame = joined
    return frame.sort_values([ts, config.id_column] if config.id_column in frame else [ts], kind="stable")


def _check_frame(config: PipelineConfig, frame: Any, report: _Report, out: dict[str, Any]) -> None:
    import pandas as pd

    from lifecycle.ml.features import feature_types

    ts, columns = config.timestamp_column, list(frame.columns)
    per_day = frame.groupby(frame[ts].dt.normalize()).size()
    out["rows"] = {
        "total": int(len(frame)),
        "days_with_rows": int(len(per_day)),
        "per_day": {"min": int(per_day.min()), "median": float(per_day.median()), "max": int(per_day.max())},
    }
    if len(frame) < config.validation.min_rows:
        report.error(
            f"{len(frame)} rows in the window, fewer than validation.min_rows={config.validation.min_rows}",
            field="validation.min_rows",
        )
    present = {}
    for role, column in (("id_column", config.id_column), ("target", config.target)):
        present[role] = column in frame.columns
        if not present[role]:
            report.absent(f"{role} {column!r} is in no source{_near(column, columns)}", column=column, field=role)
        elif (nulls := int(frame[column].isna().sum())) > 0:
            report.error(f"{role} {column!r} has {nulls} null values", column=column, field=role)
    if present["id_column"]:
        keys = [frame[config.id_column], frame[ts].dt.date]
        repeated = frame[pd.DataFrame({"id": keys[0], "day": keys[1]}).duplicated(keep=False)]
        if len(repeated):
            example = repeated[[config.id_column, ts]].head(3).astype(str).to_dict("records")
            report.error(
                f"{len(repeated)} rows repeat an {config.id_column} within a day (e.g. {example}): "
                f"ids must be unique per {ts} day",
                column=config.id_column,
            )
    numeric, categorical = feature_types(config, frame)
    out["features"] = {
        "numeric": numeric,
        "categorical": categorical,
        "derived": [d.name for d in config.features.derived],
    }
    for field, names in (("features.numeric", numeric), ("features.categorical", categorical)):
        for column in names:
            if column not in frame.columns:
                report.absent(f"feature {column!r} is in no source{_near(column, columns)}", column=column, field=field)
                continue
            _check_feature(config, frame[column], field == "features.numeric", report)
    _check_derived(config, frame, categorical, report)
    if present["target"]:
        out["target"] = _check_target(config, frame[config.target], report)
    _check_split(config, frame, report, out)


def _check_feature(config: PipelineConfig, values: Any, numeric: bool, report: _Report) -> None:
    import pandas as pd

    column, where = str(values.name), {"column": str(values.name)}
    nulls = float(values.isna().mean())
    if nulls > config.validation.max_null_fraction:
        report.error(
            f"{nulls:.0%} of values are null, more than validation.max_null_fraction="
            f"{config.validation.max_null_fraction}",
            **where,
        )
    if numeric and (pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values)):
        text = values.dropna()
        bad = text[pd.to_numeric(text, errors="coerce").isna()].astype(str).unique()[:3].tolist()
        hint = f", e.g. {bad}" if bad else " (its values parse as numbers: convert the column at the source)"
        report.error(
            f"feature {column!r} is listed as numeric but is {values.dtype}{hint}", field="features.numeric", **where
        )
    if not numeric and values.nunique() > max(100, 0.5 * len(values)):
        report.warning(
            f"categorical feature {column!r} has {values.nunique()} distinct values in {len(values)} rows: "
            "an id or a number?",
            field="features.categorical",
            **where,
        )


def _check_derived(config: PipelineConfig, frame: Any, categorical: list[str], report: _Report) -> None:
    from lifecycle.ml.features import prepare_raw

    for index, derived in enumerate(config.features.derived):
        where = {"column": derived.name, "field": f"features.derived[{index}]"}
        if derived.name in frame.columns:
            report.warning(f"derived feature {derived.name!r} replaces a column of the same name", **where)
        try:
            values = prepare_raw(frame, categorical, {derived.name: derived.expression})[derived.name]
        except Exception as err:  # whatever pandas.eval raises is the finding
            report.error(f"expression {derived.expression!r} cannot be evaluated: {type(err).__name__}: {err}", **where)
            continue
        if values.isna().all():
            report.error(f"expression {derived.expression!r} is null (or not numeric) on every row", **where)


def _check_target(config: PipelineConfig, target: Any, report: _Report) -> dict[str, Any]:
    import pandas as pd

    where = {"column": config.target, "field": "target"}
    counts = target.dropna().value_counts()
    try:
        counts = counts.sort_index()
    except TypeError:  # values of mixed types: keep the order by count
        pass
    info: dict[str, Any] = {"column": config.target, "dtype": str(target.dtype), "distinct": int(len(counts))}
    if config.task == "regression":
        if pd.api.types.is_bool_dtype(target) or not pd.api.types.is_numeric_dtype(target):
            report.error(f"a regression target must be numeric; {config.target!r} is {target.dtype}", **where)
        elif len(counts) <= 10:
            report.warning(
                f"regression target {config.target!r} has only {len(counts)} distinct values: a classification task?",
                **where,
            )
        return info
    total = int(counts.sum())
    info["classes"] = {str(k): {"rows": int(v), "share": round(v / total, 4)} for k, v in counts.items()}
    if config.task == "binary":
        if len(counts) != 2:
            report.error(
                f"a binary target needs exactly two values; {config.target!r} has {len(counts)}: "
                f"{_listed(counts.index)}",
                **where,
            )
        elif set(counts.index) != {0, 1}:
            report.error(
                f"a binary target's values must be 0 and 1 (what validation expects); {config.target!r} "
                f"has {_listed(counts.index)}",
                **where,
            )
    elif len(counts) < 3:
        report.error(
            f"a multiclass target needs at least 3 classes; {config.target!r} has {len(counts)}: "
            f"{_listed(counts.index)} (task: binary?)",
            **where,
        )
    for value, rows in counts.items():
        if rows / total < RARE_CLASS_SHARE:
            report.warning(
                f"class {value!r} has {rows} rows ({rows / total:.1%}), under {RARE_CLASS_SHARE:.0%}: "
                "too few to learn or to measure on the holdout",
                **where,
            )
    return info


def _check_split(config: PipelineConfig, frame: Any, report: _Report, out: dict[str, Any]) -> None:
    """The split training will make, so a window too short for validation_days + holdout_days fails here."""
    from lifecycle.ml.features import split_bounds, time_split

    training = config.training
    try:
        out["splits"] = split_bounds(time_split(frame, config), config)
    except ValueError as err:
        report.error(
            f"{err} (training.validation_days={training.validation_days}, holdout_days={training.holdout_days})",
            field="training",
        )
        return
    if out["splits"]["train"]["rows"] < training.cv_folds * 10:
        report.warning(
            f"only {out['splits']['train']['rows']} training rows for {training.cv_folds} CV folds",
            field="training.cv_folds",
        )


def _near(name: str, columns: Any) -> str:
    close = difflib.get_close_matches(name, [str(c) for c in columns], n=3)
    return f" (did you mean {close}?)" if close else f"; columns: {sorted(map(str, columns))[:30]}"


def _listed(values: Any, limit: int = 10) -> str:
    shown = [v.item() if hasattr(v, "item") else v for v in list(values)[:limit]]
    return f"{shown}{' ...' if len(values) > limit else ''}"


def day_ranges(days: list[str]) -> list[str]:
    """ISO days as runs: ['2026-01-03..2026-01-05', '2026-01-09']."""
    runs: list[list[dt.date]] = []
    for day in sorted(dt.date.fromisoformat(d) for d in days):
        if runs and day - runs[-1][-1] == dt.timedelta(days=1):
            runs[-1].append(day)
        else:
            runs.append([day])
    return [f"{r[0]}..{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs]


def render(report: dict[str, Any]) -> str:
    """The report for a terminal: what was read, then each problem with where it is, then the verdict."""
    window = report["window"]
    lines = [
        f"pipeline {report['pipeline']} ({report['task']}){' from ' + report['file'] if report['file'] else ''}",
        f"window   {window['start']} .. {dt.date.fromisoformat(window['end']) - dt.timedelta(days=1)} "
        f"({window['days']} days before the as-of date {report['as_of']})",
    ]
    for source in report["sources"]:
        parts = [f"{source['kind']}", source["location"]]
        if "partitions" in source:
            parts.append(f"{source['partitions']['present']}/{source['partitions']['expected']} partitions")
        if "rows" in source:
            parts.append(f"{source['rows']} rows, {len(source['columns'])} columns")
        if "join" in source:
            join = source["join"]
            parts.append(f"{join['how']} join on {join['keys']}, {join['unmatched_rows']} rows unmatched")
        lines.append(f"source   {source['name']}: " + "; ".join(parts))
    if "rows" in report:
        rows = report["rows"]
        per_day = rows["per_day"]
        lines.append(
            f"rows     {rows['total']} in the window over {rows['days_with_rows']} days; per day "
            f"{per_day['min']}..{per_day['max']} (median {per_day['median']:g})"
        )
    if "features" in report:
        features = report["features"]
        lines.append(
            f"features {len(features['numeric'])} numeric, {len(features['categorical'])} categorical, "
            f"{len(features['derived'])} derived"
        )
    if "target" in report:
        target = report["target"]
        classes = target.get("classes")
        shown = (
            ", ".join(f"{k}: {v['rows']} ({v['share']:.1%})" for k, v in list(classes.items())[:12]) if classes else ""
        )
        lines.append(
            f"target   {target['column']} ({target['dtype']}, {target['distinct']} values){': ' + shown if shown else ''}"
        )
    if "splits" in report:
        lines.append(
            "splits   "
            + "; ".join(f"{n} {s['rows']} rows {s['start']}..{s['end']}" for n, s in report["splits"].items())
        )
    for problem in report["problems"]:
        where = [
            f"source {problem['source']!r}" if problem["source"] else "",
            f"column {problem['column']!r}" if problem["column"] else "",
            f"field {problem['field']!r}" if problem["field"] else "",
        ]
        prefix = ", ".join(w for w in where if w)
        file = f"{problem['file']}: " if problem["file"] else ""
        lines.append(f"{problem['level'].upper():7s}  {file}{prefix + ': ' if prefix else ''}{problem['message']}")
    verdict = "FAILED" if report["errors"] else "OK"
    lines.append(f"{verdict}: {report['errors']} error(s), {report['warnings']} warning(s)")
    return "\n".join(lines)
