"""A request's rows against the served model's MLflow signature: every problem named by row and field.

The rules follow batch prediction's `scoring.check_signature`, row by row: a column the signature requires
must be present, a numeric column must hold numbers (not numbers as text), and a null is a missing value
the model imputes. Online requests are JSON, so this also checks what a DataFrame would have hidden: whole
numbers for integer columns, text for string columns, true/false for boolean ones. Extra fields are ignored.

A request's rows are checked column by column first (the types each column holds); only a request with a
problem is walked row by row, to name every problem in row order. msgspec decodes request bodies (4-5x faster
than json for 100 rows); what it refuses, json reads, so json's rules and messages hold.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from lifecycle.serving.rollout import entity_key

MAX_ERRORS = 20  # problems listed in one answer; the count says how many there were
_REAL = {"double": np.float64, "float": np.float32}
_WHOLE = {"long": np.int64, "integer": np.int32}
_ABSENT = object()  # a field not in the row: its type, `object`, is no JSON value's
_NONE = type(None)
# The value types that pass `_type_problem` whatever the value, by kind (null is a missing value).
_FITS: dict[str, frozenset[type]] = {
    **dict.fromkeys(_REAL, frozenset({float, int, _NONE})),  # bool is its own type: not a number here
    **dict.fromkeys(_WHOLE, frozenset({int, _NONE})),
    "string": frozenset({str, _NONE}),
    "boolean": frozenset({bool, _NONE}),
}
_KEYS = frozenset({int, str})  # id and sticky values that are entity keys whatever the value
_decode = msgspec.json.Decoder().decode


class RequestError(Exception):
    """A request that cannot be answered: its HTTP status and what to fix."""

    def __init__(self, status: int, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.errors = status, message, errors or []

    def body(self) -> dict[str, Any]:
        return {"detail": self.message, **({"errors": self.errors} if self.errors else {})}


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # MLflow's DataType name: double, float, long, integer, string, boolean, datetime, binary
    required: bool = True


def columns_of(input_schema: Any, where: str) -> tuple[Column, ...]:
    """The named columns of a model's input schema (`get_model_info(uri).signature.inputs`)."""
    if input_schema is None:
        raise ValueError(f"{where} has no signature: online requests could not be checked against it")
    if not input_schema.has_input_names() or input_schema.is_tensor_spec():
        raise ValueError(f"{where} has a tensor or unnamed signature; online serving needs named columns")
    columns = []
    for spec in input_schema.inputs:
        kind = getattr(spec.type, "name", None) or str(spec.type)
        columns.append(Column(spec.name, str(kind).lower(), bool(getattr(spec, "required", True))))
    return tuple(columns)


def parse_rows(body: bytes, max_rows: int) -> tuple[list[dict[str, Any]], bool]:
    """The rows of a request, and whether it was a single row (answered with a single prediction)."""
    try:
        payload = _decode(body)
    except (msgspec.DecodeError, RecursionError):  # NaN, 1e999, UTF-16, lone surrogates, not JSON: json decides
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise RequestError(400, f"the body is not JSON: {err}") from None
    if isinstance(payload, dict) and isinstance(payload.get("rows"), list):
        rows, single = payload["rows"], False
    elif isinstance(payload, dict):
        rows, single = [payload], True
    else:
        raise RequestError(422, 'send one row as a JSON object, or many as {"rows": [{...}, ...]}')
    if not rows:
        raise RequestError(422, "'rows' is empty: nothing to predict")
    if len(rows) > max_rows:
        raise RequestError(413, f"{len(rows)} rows in one request; the limit is {max_rows}")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(422, f"row {index}: expected a JSON object of field values, got {_shown(row)}")
    return rows, single


def check_rows(
    rows: list[dict[str, Any]],
    columns: tuple[Column, ...],
    keys: dict[str, str],
    indices: list[int] | None = None,
) -> list[dict[str, Any]]:
    """Every problem of the rows (at `indices`, default all), as {"row", "field", "message"}.

    `keys` are fields that are not model inputs but must be present and be a string or number in every row
    (the id column, the sticky column), by name with what they are for.
    """
    if _fits(rows if indices is None else [rows[i] for i in indices], columns, keys):
        return []
    problems: list[dict[str, Any]] = []
    for index in range(len(rows)) if indices is None else indices:
        row = rows[index]
        for name, role in keys.items():
            if row.get(name) is None:
                problems.append(_problem(index, name, f"is missing ({role}: a string or number in every row)"))
                continue
            try:
                entity_key(row[name])
            except TypeError as err:
                problems.append(_problem(index, name, f"({role}): {err}"))
        for column in columns:
            if column.name not in row:
                if column.required:
                    problems.append(_problem(index, column.name, f"is missing (the model needs it: {column.kind})"))
                continue
            value = row[column.name]
            if value is not None and (wrong := _type_problem(value, column.kind)):
                problems.append(_problem(index, column.name, wrong))
    return problems


def _fits(rows: list[dict[str, Any]], columns: tuple[Column, ...], keys: dict[str, str]) -> bool:
    """True when `check_rows` would find no problem, decided column by column from the types of its values.

    A column whose value types pass whatever the value (ints and floats in a double column) costs one set of
    types; one with other types (whole floats in an integer column, datetimes) has each value checked. The first
    problem returns False, and `check_rows` then walks the rows to name them all in order.
    """
    for name in keys:
        values = [row.get(name) for row in rows]
        if not set(map(type, values)) <= _KEYS:
            for value in values:
                try:
                    entity_key(value)  # None too: a missing key
                except TypeError:
                    return False
    for column in columns:
        values = [row.get(column.name, _ABSENT) for row in rows]
        types = set(map(type, values))
        if object in types:
            if column.required:
                return False
            types.discard(object)
            values = [v for v in values if v is not _ABSENT]
        if types <= _FITS.get(column.kind, frozenset({_NONE})):
            continue
        if any(v is not None and _type_problem(v, column.kind) for v in values):
            return False
    return True


def raise_for(problems: list[dict[str, Any]]) -> None:
    if not problems:
        return
    shown = "; ".join(p["message"] for p in problems[:3])
    more = f" (and {len(problems) - 3} more problems)" if len(problems) > 3 else ""
    raise RequestError(422, f"the request does not match the model's signature: {shown}{more}", problems[:MAX_ERRORS])


def to_frame(rows: list[dict[str, Any]], columns: tuple[Column, ...]) -> pd.DataFrame:
    """The checked rows as the DataFrame batch prediction would read: the signature's columns, in its order,
    with its dtypes (NaN for a missing number, None for missing text)."""
    data: dict[str, Any] = {}
    for column in columns:
        values = [row.get(column.name) for row in rows]
        if column.kind in _REAL:
            data[column.name] = np.array(values, dtype=_REAL[column.kind])  # numpy reads None as NaN
        elif column.kind in _WHOLE:
            missing = None in values
            data[column.name] = np.array(values, dtype=np.float64 if missing else _WHOLE[column.kind])
        elif column.kind == "datetime":
            data[column.name] = pd.to_datetime(values)
        else:
            data[column.name] = pd.Series(values, dtype=object)
    return pd.DataFrame(data)


def _type_problem(value: Any, kind: str) -> str | None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind in _REAL:
        return None if number else f"must be a number ({kind}), got {_shown(value)}"
    if kind in _WHOLE:
        if number and (isinstance(value, int) or (math.isfinite(value) and value.is_integer())):
            return None
        return f"must be a whole number ({kind}), got {_shown(value)}"
    if kind == "string":
        return None if isinstance(value, str) else f"must be text (string), got {_shown(value)}"
    if kind == "boolean":
        return None if isinstance(value, bool) else f"must be true or false (boolean), got {_shown(value)}"
    if kind == "datetime":
        if isinstance(value, str):
            try:
                pd.Timestamp(value)
                return None
            except ValueError:
                pass
        return f"must be an ISO date or timestamp (datetime), got {_shown(value)}"
    return None  # binary, arrays, objects: passed to the model as given


def _problem(index: int, field: str, what: str) -> dict[str, Any]:
    return {"row": index, "field": field, "message": f"row {index}: field {field!r} {what}"}


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    if isinstance(value, dict | list):
        return f"a JSON {'object' if isinstance(value, dict) else 'array'}"
    return f"{json.dumps(value)}"
