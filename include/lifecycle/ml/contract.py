"""Data contracts: what the champion's training split looked like, held against every later window and batch.

`derive` records, from the training split, each column's kind, numeric range and quantiles, category set, the
target's labels, the null share per daily partition and the timestamp rule; `record` stores it with the run
(`runs:/<run>/contract/contract.json` once the evaluation logs it) and `for_champion` / `for_run` load it back.
`check` holds a frame (a training window, a scoring batch) against it: ranges and value sets as Great
Expectations expectations with `mostly`; kinds, per-partition null shares, empty partitions and timestamps in
pandas. The severity of each rule is `validation.contract` in the YAML (fail | warn | ignore).

Kinds are decided in pandas, not with GX's type expectations: GX 1.24 does not recognise pandas 3's `str`,
the nullable `Int64`/`Float64` or tz-aware datetime dtypes. The mapping (`kind_of`): bool dtypes are
`boolean`; datetime64 (any unit or zone) `datetime`; integer dtypes (numpy or nullable) `integer`; float
dtypes `integer` when every finite value is whole (a nullable integer read back as float because of NaN, a
CSV chunk), else `float`; object and string columns by their values (text, or numbers/booleans/dates held
as objects); a column with no values has no kind and matches any.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from lifecycle.config.pipeline import PipelineConfig
from lifecycle.ml.ingestion import RECORD_KEY, parse_stamps, utc_naive, utc_now
from lifecycle.ml.validation import DataValidationError
from lifecycle.persistence import storage

VERSION = 1
ARTIFACT = "contract/contract.json"  # where the evaluation logs it in the model's MLflow run
TIMESTAMP_RULE = (
    "each row's timestamp inside its partition's day (a scoring batch: the batch's day), none in the future"
)
# A contract kind accepts these kinds in later data (integers are valid floats; nothing else converts silently).
ACCEPTS = {
    "integer": {"integer"},
    "float": {"integer", "float"},
    "boolean": {"boolean"},
    "text": {"text"},
    "datetime": {"datetime"},
}
RULES = (
    "type_change",
    "partition_nulls",
    "timestamps",
    "empty_partitions",
    "unseen_categories",
    "out_of_range",
    "unknown_labels",
)
EXAMPLES = 5


# --- kinds -------------------------------------------------------------------------------------------------


def _whole(values: pd.Series) -> bool:
    numbers = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
    finite = numbers[np.isfinite(numbers)]
    return bool(np.all(finite == np.round(finite)))


def kind_of(values: pd.Series) -> str | None:
    """The column's kind: integer, float, boolean, text or datetime; None when it holds no value to tell by."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return "boolean"
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        return "datetime"
    present = values.dropna()
    if present.empty:
        return None
    if pd.api.types.is_integer_dtype(values.dtype):
        return "integer"
    if pd.api.types.is_float_dtype(values.dtype):
        return "integer" if _whole(present) else "float"
    inferred = pd.api.types.infer_dtype(present, skipna=True)
    if inferred == "boolean":
        return "boolean"
    if inferred == "integer":
        return "integer"
    if inferred in ("floating", "mixed-integer-float", "decimal"):
        return "integer" if _whole(present) else "float"
    if inferred in ("datetime64", "datetime", "date"):
        return "datetime"
    return "text"  # strings, and strings mixed with anything else


def _plain(value: Any) -> Any:
    """A JSON-able scalar (numpy and pandas scalars to Python, NaN to None)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (pd.Timestamp, dt.datetime, dt.date)):
        return value.isoformat()
    return value if isinstance(value, (int, float, str, bool)) else str(value)


# --- deriving and storing ----------------------------------------------------------------------------------


def _roles(config: PipelineConfig, frame: pd.DataFrame) -> dict[str, str]:
    from lifecycle.ml.features import feature_types

    numeric, categorical = feature_types(config, frame)
    roles = {c: "numeric" for c in numeric} | {c: "categorical" for c in categorical}
    roles.update({config.id_column: "id", config.timestamp_column: "timestamp", config.target: "target"})
    return {c: r for c, r in roles.items() if c in frame.columns}


def _days(frame: pd.DataFrame, config: PipelineConfig) -> pd.Series:
    return parse_stamps(frame[config.timestamp_column]).dt.date


def derive(frame: pd.DataFrame, config: PipelineConfig) -> dict[str, Any]:
    """The contract of a training split, JSON-able and reviewable: per column its kind, range, quantiles,
    categories and null share per daily partition; the target's labels; the timestamp rule."""
    if frame.empty:
        raise ValueError("a contract needs the training split's rows; the frame is empty")
    roles = _roles(config, frame)
    days = _days(frame, config) if config.timestamp_column in frame.columns else None
    columns: dict[str, Any] = {}
    for column, role in roles.items():
        values = frame[column]
        entry: dict[str, Any] = {
            "role": role,
            "kind": kind_of(values),
            "dtype": str(values.dtype),
            "null_share": round(float(values.isna().mean()), 6),
        }
        if days is not None and role in ("numeric", "categorical"):
            daily = values.isna().groupby(days.to_numpy()).mean()
            entry["partition_null_share"] = {"max": round(float(daily.max()), 6), "mean": round(float(daily.mean()), 6)}
        numeric_role = role == "numeric" or (role == "target" and config.task == "regression")
        if numeric_role and entry["kind"] in ("integer", "float"):
            numbers = pd.to_numeric(values, errors="coerce").astype("float64")
            numbers = numbers[np.isfinite(numbers)]
            if len(numbers):
                q01, q99 = np.quantile(numbers, [0.01, 0.99])
                entry.update(min=float(numbers.min()), max=float(numbers.max()), q01=float(q01), q99=float(q99))
        if role == "categorical":
            entry["categories"] = sorted({_plain(v) for v in values.dropna().unique()}, key=lambda v: (str(type(v)), v))
        if role == "target" and config.task != "regression":
            entry["labels"] = sorted({_plain(v) for v in values.dropna().unique()}, key=lambda v: (str(type(v)), v))
        columns[column] = entry
    return {
        "version": VERSION,
        "pipeline": config.name,
        "rows": int(len(frame)),
        "days": int(days.nunique()) if days is not None else None,
        "window": [str(days.min()), str(days.max())] if days is not None else None,
        "timestamps": {"column": config.timestamp_column, "rule": TIMESTAMP_RULE},
        "columns": columns,
    }


def record(config: PipelineConfig, run_id: str, train_frame: pd.DataFrame) -> str:
    """Derive the contract from the training split and store it with the run's features; return its URI.

    Deterministic, so a retried task writes the same object. The evaluation logs it to the model's MLflow run
    (`contract/contract.json`), where `for_champion` finds it.
    """
    uri = storage.artifact_uri(config.name, run_id, "features", "contract.json")
    return storage.write_json(uri, derive(train_frame, config))


def for_run(mlflow_run_id: str) -> dict[str, Any] | None:
    """The contract logged with a model's MLflow run; None for a model logged before contracts existed."""
    import mlflow

    from lifecycle.registry.tracking import mlflow_client

    client = mlflow_client()
    folder, name = ARTIFACT.split("/")
    if not any(a.path == ARTIFACT for a in client.list_artifacts(mlflow_run_id, folder)):
        return None
    return mlflow.artifacts.load_dict(f"runs:/{mlflow_run_id}/{ARTIFACT}")


def for_champion(config: PipelineConfig) -> dict[str, Any] | None:
    """The champion's contract; None when there is no champion yet or it was logged before contracts."""
    from lifecycle.registry.tracking import champion

    version = champion(config.registered_model_name)
    if version is None or not version.run_id:
        return None
    return for_run(version.run_id)


# --- the expectations (Great Expectations) -----------------------------------------------------------------


def _severity(config: PipelineConfig, rule: str) -> str:
    return getattr(config.validation.contract, rule)


def _bounds(entry: dict[str, Any], margin: float) -> tuple[float, float] | None:
    """'Far outside': beyond [q01, q99] widened by `margin` times its width, and beyond the reference's own
    min and max (a value the reference held is never far outside it). A constant column widens by its value."""
    if "q01" not in entry:
        return None
    width = entry["q99"] - entry["q01"] or entry["max"] - entry["min"] or max(abs(entry["q99"]), 1.0)
    return min(entry["q01"] - margin * width, entry["min"]), max(entry["q99"] + margin * width, entry["max"])


def expectations(frame: pd.DataFrame, contract: dict[str, Any] | None, config: PipelineConfig) -> list[Any]:
    """The contract's rules that are GX expectations: ranges and value sets, with `mostly` from the share
    limits. Each carries meta {contract_rule, column} so one GX run can hold them beside the suite."""
    import great_expectations.expectations as gxe

    if not contract:
        return []
    rules = config.validation.contract
    found = []
    for column, entry in contract.get("columns", {}).items():
        if column not in frame.columns:
            continue  # the suite's expect_column_to_exist names a missing column
        meta = {"column": column}
        kind = kind_of(frame[column])
        if entry.get("categories") is not None and rules.unseen_categories != "ignore":
            found.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=column,
                    value_set=entry["categories"],
                    mostly=1.0 - rules.unseen_share_limit,
                    meta={**meta, "contract_rule": "unseen_categories"},
                )  # fmt: skip
            )
        bounds = _bounds(entry, rules.range_margin)
        if bounds is not None and kind in ("integer", "float") and rules.out_of_range != "ignore":
            found.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=column,
                    min_value=bounds[0],
                    max_value=bounds[1],
                    mostly=1.0 - rules.out_of_range_share_limit,
                    meta={**meta, "contract_rule": "out_of_range"},
                )  # fmt: skip
            )
        if entry.get("labels") is not None and rules.unknown_labels != "ignore":
            found.append(
                gxe.ExpectColumnValuesToBeInSet(
                    column=column, value_set=entry["labels"], meta={**meta, "contract_rule": "unknown_labels"}
                )
            )
    return found


def run_expectations(frame: pd.DataFrame, suite_expectations: list[Any], name: str) -> list[Any]:
    """Run expectations on a frame in an ephemeral GX context; return GX's results."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    if not suite_expectations:
        return []
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    asset = context.data_sources.add_pandas(name=f"{name}_source").add_dataframe_asset(name="frame")
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name=name)
    for expectation in suite_expectations:
        suite.add_expectation(expectation)
    result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": EXAMPLES})
    return list(result.results)


def is_contract_result(result: Any) -> bool:
    return bool((result.expectation_config.meta or {}).get("contract_rule"))


# --- observing (summable, so a batch can be read chunk by chunk) -------------------------------------------


def observe(
    frame: pd.DataFrame,
    contract: dict[str, Any] | None,
    config: PipelineConfig,
    results: Iterable[Any] = (),
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """What the rules need from one frame, as counts that add up over chunks: the GX results of
    `expectations`, kinds, nulls per day, and rows stamped in the future."""
    findings: dict[str, dict[str, Any]] = {}

    def add(rule: str, column: str | None, count: int, of: int, examples: list[Any], **extra: Any) -> None:
        key = f"{rule}|{column}"
        found = findings.setdefault(key, {"rule": rule, "column": column, "count": 0, "of": 0, "examples": []})
        found["count"] += int(count)
        found["of"] += int(of)
        found["examples"] = (found["examples"] + [_plain(v) for v in examples])[:EXAMPLES]
        found.update(extra)

    for result in results:
        meta = result.expectation_config.meta or {}
        rule = meta.get("contract_rule")
        if not rule:
            continue
        details = result.result or {}
        of = int(details.get("element_count", 0)) - int(details.get("missing_count", 0) or 0)
        add(
            rule,
            meta["column"],
            details.get("unexpected_count", 0) or 0,
            of,
            details.get("partial_unexpected_list", []),
        )
    columns = (contract or {}).get("columns", {})
    for column, entry in columns.items():
        if column not in frame.columns or entry.get("role") == "timestamp" or entry.get("kind") is None:
            continue
        values = frame[column]
        kind = kind_of(values)
        if kind is None or kind in ACCEPTS.get(entry["kind"], {entry["kind"]}):
            add("type_change", column, 0, int(values.notna().sum()), [], kinds=[])
            continue
        wrong = _wrong_kind(values, entry["kind"])
        add("type_change", column, int(wrong.sum()), int(values.notna().sum()), values[wrong].head(EXAMPLES).tolist(),
            kinds=[kind])  # fmt: skip
    days: dict[str, dict[str, Any]] = {}
    future, stamped = 0, 0
    if config.timestamp_column in frame.columns and len(frame):
        stamps = parse_stamps(frame[config.timestamp_column])
        day = stamps.dt.date.astype(str).where(stamps.notna(), "unreadable")
        roles = _roles(config, frame)
        features = [c for c, r in roles.items() if r in ("numeric", "categorical")]
        nulls = frame[features].isna().groupby(day.to_numpy()).sum() if features else pd.DataFrame()
        sizes = day.value_counts()
        for name, rows in sizes.items():
            counts = nulls.loc[name].to_dict() if features else {}
            days[str(name)] = {"rows": int(rows), "nulls": {c: int(n) for c, n in counts.items()}}
        late = utc_naive(stamps) > utc_now(now)
        future, stamped = int(late.sum()), int(stamps.notna().sum())
        future_examples = frame.loc[late, config.timestamp_column].head(EXAMPLES).tolist()
    else:
        future_examples = []
    return {
        "rows": int(len(frame)),
        "findings": findings,
        "days": days,
        "future": {"count": future, "of": stamped, "examples": [_plain(v) for v in future_examples]},
    }


def _wrong_kind(values: pd.Series, expected: str) -> pd.Series:
    """Which values break the expected kind (a float column's non-whole values under `integer`, ...)."""
    present = values.notna()
    if expected == "integer" and pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values):
        numbers = values.astype("float64")
        return present & np.isfinite(numbers) & (numbers != np.round(numbers))
    if expected in ("integer", "float"):
        if pd.api.types.is_bool_dtype(values.dtype):
            return present
        return present & pd.to_numeric(values, errors="coerce").isna()
    if expected == "text":
        return present & ~values.map(lambda v: isinstance(v, str))
    if expected == "boolean":
        return present & ~values.map(lambda v: isinstance(v, (bool, np.bool_)))
    return present & pd.to_datetime(values, errors="coerce").isna()


def combine(observations: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Observations of chunks, added up into the observation of the whole."""
    total: dict[str, Any] = {"rows": 0, "findings": {}, "days": {}, "future": {"count": 0, "of": 0, "examples": []}}
    for part in observations:
        total["rows"] += part["rows"]
        for key, found in part["findings"].items():
            into = total["findings"].setdefault(key, {**found, "count": 0, "of": 0, "examples": [], "kinds": []})
            into["count"] += found["count"]
            into["of"] += found["of"]
            into["examples"] = (into["examples"] + found["examples"])[:EXAMPLES]
            into["kinds"] = sorted({*into.get("kinds", []), *found.get("kinds", [])})
        for day, seen in part["days"].items():
            into = total["days"].setdefault(day, {"rows": 0, "nulls": {}})
            into["rows"] += seen["rows"]
            for column, nulls in seen["nulls"].items():
                into["nulls"][column] = into["nulls"].get(column, 0) + nulls
        total["future"]["count"] += part["future"]["count"]
        total["future"]["of"] += part["future"]["of"]
        total["future"]["examples"] = (total["future"]["examples"] + part["future"]["examples"])[:EXAMPLES]
    return total


# --- judging -----------------------------------------------------------------------------------------------


def _share(count: int, of: int) -> float:
    return round(count / of, 6) if of else 0.0


def _pct(share: float) -> str:
    return f"{share:.2%}" if share >= 0.0001 or share == 0 else f"{share:.4%}"


def judge(
    observed: dict[str, Any],
    contract: dict[str, Any] | None,
    config: PipelineConfig,
    *,
    where: str,
    partitions: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The report of the rules on what was observed: per rule its severity, column, count, share, examples and
    whether it fails. Nothing is raised here (see `check`)."""
    rules_config = config.validation.contract
    out: list[dict[str, Any]] = []
    evaluated = 0
    counts: dict[str, dict[str, int]] = {"unseen": {}, "out_of_range": {}}
    moving = set(config.drift.expected_to_move)

    def finding(rule: str, column: str | None, count: int, share: float, examples: list[Any], message: str,
                limit: float | None = None, exempt: bool = False) -> None:  # fmt: skip
        severity = _severity(config, rule)
        fails = severity == "fail" or (severity == "warn" and limit is not None and share > limit and not exempt)
        out.append({
            "rule": rule, "severity": severity, "column": column, "count": int(count), "share": share,
            "examples": examples, "fails": bool(fails), "message": message,
            **({"share_limit": limit} if limit is not None else {}),
            **({"expected_to_move": True} if exempt else {}),
        })  # fmt: skip

    columns = (contract or {}).get("columns", {})
    # Rules against the reference: kinds, value sets, ranges, labels.
    for found in sorted(observed["findings"].values(), key=lambda f: (RULES.index(f["rule"]), str(f["column"]))):
        rule, column, count, of = found["rule"], found["column"], found["count"], found["of"]
        if _severity(config, rule) == "ignore":
            continue
        evaluated += 1
        share = _share(count, of)
        entry = columns.get(column, {})
        if rule == "type_change" and count:
            now_kind = "/".join(found.get("kinds") or ["other"])
            finding(rule, column, count, share, found["examples"],
                    f"column {column!r} changed type: {entry.get('kind')} in the champion's contract, {now_kind} in "
                    f"{where} ({count} of {of} values, e.g. {found['examples'][:3]})")  # fmt: skip
        elif rule == "unseen_categories":
            counts["unseen"][column] = int(count)
            if count:
                finding(rule, column, count, share, found["examples"],
                        f"column {column!r} has {count} values the champion's contract never saw ({_pct(share)} of "
                        f"{of}, limit {_pct(rules_config.unseen_share_limit)}) in {where}, e.g. {found['examples'][:3]}",
                        rules_config.unseen_share_limit, column in moving)  # fmt: skip
        elif rule == "out_of_range":
            counts["out_of_range"][column] = int(count)
            if count:
                low, high = _bounds(entry, rules_config.range_margin) or (None, None)
                finding(rule, column, count, share, found["examples"],
                        f"column {column!r} has {count} values far outside the champion's range [{entry.get('min')}, "
                        f"{entry.get('max')}] (beyond [{low:.6g}, {high:.6g}]; {_pct(share)} of {of}, limit "
                        f"{_pct(rules_config.out_of_range_share_limit)}) in {where}, e.g. {found['examples'][:3]}",
                        rules_config.out_of_range_share_limit, column in moving)  # fmt: skip
        elif rule == "unknown_labels" and count:
            finding(rule, column, count, share, found["examples"],
                    f"target column {column!r} holds {count} labels the champion's contract does not know "
                    f"(known: {entry.get('labels')}) in {where}, e.g. {found['examples'][:3]}")  # fmt: skip
    # Rules that need no reference: per-partition nulls, empty partitions, timestamps.
    if _severity(config, "partition_nulls") != "ignore":
        evaluated += 1
        limit = config.validation.max_null_fraction

        def allowed(column: str) -> float:
            """The limit, or the champion's own worst training day when that was worse: nulls that cluster by day
            in the reference (a weather station off for a day) are the data's, not a corruption."""
            worst_day = columns.get(column, {}).get("partition_null_share", {}).get("max", 0.0)
            return max(limit, worst_day)

        over: dict[str, list[tuple[str, float, int]]] = {}
        for day, seen in sorted(observed["days"].items()):
            for column, nulls in seen["nulls"].items():
                share = _share(nulls, seen["rows"])
                if share > allowed(column):
                    over.setdefault(column, []).append((day, share, nulls))
        for column, days in over.items():
            worst = max(days, key=lambda d: d[1])
            listed = ", ".join(f"{d} {_pct(s)}" for d, s, _ in days[:5])
            beyond = (
                f" and the champion's worst training day ({_pct(allowed(column))})" if allowed(column) > limit else ""
            )
            finding("partition_nulls", column, len(days), worst[1], [{"day": d, "null_share": s} for d, s, _ in days[:5]],
                    f"column {column!r} is null in more than validation.max_null_fraction={limit}{beyond} of the rows "
                    f"of {len(days)} daily partition(s) of {len(observed['days'])} ({listed}) in {where}")  # fmt: skip
    days_read = (partitions or {}).get("partitions")
    if _severity(config, "empty_partitions") != "ignore" and days_read is not None:
        evaluated += 1
        empty = sorted(d for d, rows in days_read.items() if not rows)
        if empty:
            source = (partitions or {}).get("source")
            finding("empty_partitions", None, len(empty), _share(len(empty), len(days_read)), empty[:EXAMPLES],
                    f"{len(empty)} daily partition(s) of {len(days_read)}" + (f" of source {source!r}" if source else "")
                    + f" exist but hold no rows ({', '.join(empty[:10])}) in {where}")  # fmt: skip
    if _severity(config, "timestamps") != "ignore":
        evaluated += 1
        column = config.timestamp_column
        violations = (partitions or {}).get("timestamp_violations")
        if violations is None:  # no ingestion record: what the frame itself shows
            violations = {"future": observed["future"]["count"], "other_day": 0, "unreadable": 0,
                          "rows": observed["future"]["of"], "examples": observed["future"]["examples"]}  # fmt: skip
        bad = sum(int(violations.get(k, 0)) for k in ("future", "other_day", "unreadable"))
        if bad:
            parts = [f"{violations[k]} {label}" for k, label in (
                ("other_day", "outside their partition's day"), ("future", "in the future"),
                ("unreadable", "unreadable")) if violations.get(k)]  # fmt: skip
            of = int(violations.get("rows") or observed["rows"])
            finding("timestamps", column, bad, _share(bad, of), violations.get("examples", [])[:EXAMPLES],
                    f"column {column!r}: {' and '.join(parts)} of {of} rows ({TIMESTAMP_RULE}) in {where}, e.g. "
                    f"{violations.get('examples', [])[:3]}")  # fmt: skip
    failures = [f["message"] for f in out if f["fails"]]
    return {
        "where": where,
        "contract": bool(contract),
        "rows": observed["rows"],
        "evaluated": evaluated,
        "success": not failures,
        "rules": out,
        "failures": failures,
        "warnings": [f["message"] for f in out if not f["fails"]],
        "counts": counts,
    }


def raise_on_failure(report: dict[str, Any]) -> dict[str, Any]:
    if report["failures"]:
        raise DataValidationError(
            f"data contract broken in {report['where']}: " + "; ".join(report["failures"]), {"contract": report}
        )
    return report


def check(
    frame: pd.DataFrame,
    contract: dict[str, Any] | None,
    config: PipelineConfig,
    *,
    where: str,
    partitions: dict[str, Any] | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Hold a frame against the contract (None: only the rules that need no reference); return the report,
    warnings included, or raise DataValidationError naming each failed rule, column, count and `where`.

    `partitions` is the ingestion's record (ingestion.snapshot's or scoring.stage_batch's result, or the
    `lifecycle.ml.ingestion` entry a snapshot carries in frame.attrs): rows per partition day and timestamp
    violations counted while reading.
    """
    if partitions is None:
        partitions = frame.attrs.get(RECORD_KEY)
    results = run_expectations(frame, expectations(frame, contract, config), f"{config.name}__contract")
    observed = observe(frame, contract, config, results, now)
    return raise_on_failure(judge(observed, contract, config, where=where, partitions=partitions))


def check_batch(
    config: PipelineConfig,
    batch: dict[str, Any],
    contract: dict[str, Any] | None,
    *,
    where: str | None = None,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """`check` for a staged scoring batch (scoring.stage_batch's result), read row group by row group so memory
    follows the chunk size; the shares are the whole batch's."""
    import tempfile

    import pyarrow.parquet as pq

    where = where or f"scoring batch {batch['batch_key']}"
    parts = []
    with tempfile.TemporaryDirectory() as work:
        parquet = pq.ParquetFile(storage.local_copy(batch["uri"], work))
        for group in range(parquet.num_row_groups):
            chunk = parquet.read_row_group(group).to_pandas()
            results = run_expectations(chunk, expectations(chunk, contract, config), f"{config.name}__contract")
            parts.append(observe(chunk, contract, config, results, now))
    return raise_on_failure(judge(combine(parts), contract, config, where=where, partitions=batch))
