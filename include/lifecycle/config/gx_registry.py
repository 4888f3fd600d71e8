"""Great Expectations' expectation registry, known at parse time without importing Great Expectations.

Importing GX takes seconds; the DAG processor parses every pipeline file far more often than that allows. So the
registry (each expectation type, its fields, which are required and the JSON kinds each accepts) is snapshotted
from the installed GX into `gx_expectations.json`, and a test regenerates it and compares, so the snapshot always
matches the pinned GX: `python -m lifecycle.config.gx_registry --write` after upgrading it. GX itself still builds and
validates every expectation when a run starts (and `make check` does before one).
"""

from __future__ import annotations

import argparse
import datetime as dt
import decimal
import enum
import functools
import json
import typing
from pathlib import Path
from typing import Any

SNAPSHOT = Path(__file__).with_name("gx_expectations.json")
ANY = "any"  # a field whose accepted values this snapshot does not type (GX checks them at run time)


def _kinds(annotation: Any) -> set[str]:
    """The JSON kinds (string, number, boolean, array, object, null) a Python annotation accepts."""
    origin = typing.get_origin(annotation)
    if annotation is typing.Any:
        return {ANY}
    if origin is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return set().union(*(_kinds(a) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return {"string" if isinstance(a, str) else "number" for a in typing.get_args(annotation)}
    import collections.abc

    if origin in (list, set, tuple, frozenset, collections.abc.Sequence, collections.abc.Set):
        return {"array"}
    if origin in (dict, collections.abc.Mapping):
        return {"object"}
    if annotation is type(None):
        return {"null"}
    if isinstance(annotation, type):
        for base, kind in (
            (bool, "boolean"), (enum.Enum, "string"), (str, "string"), (int, "number"), (float, "number"),
            (decimal.Decimal, "number"), (dt.date, "string"), (dict, "object"), (list, "array"), (tuple, "array"),
            (set, "array"),
        ):  # fmt: skip
            if issubclass(annotation, base):
                return {kind}
    return {ANY}  # GX's own classes (row conditions, quantile ranges): left to GX


def generate() -> dict[str, dict[str, dict[str, Any]]]:
    """The registry from the installed Great Expectations (slow: imports it)."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.expectation import Expectation

    registry: dict[str, dict[str, dict[str, Any]]] = {}
    for name in sorted(dir(gxe)):
        cls = getattr(gxe, name)
        if not (name.startswith("Expect") and isinstance(cls, type) and issubclass(cls, Expectation)):
            continue
        fields = {
            field: {"required": bool(info.required), "kinds": sorted(_kinds(info.annotation))}
            for field, info in sorted(cls.__fields__.items())
        }
        registry[_snake(name)] = fields
    return registry


def _snake(class_name: str) -> str:
    """ExpectColumnValuesToBeBetween -> expect_column_values_to_be_between (how the YAML names them)."""
    out = []
    for i, char in enumerate(class_name):
        if char.isupper() and i:
            out.append("_")
        out.append(char.lower())
    return "".join(out)


@functools.cache
def registry() -> dict[str, dict[str, dict[str, Any]]]:
    return json.loads(SNAPSHOT.read_text())


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str | dt.date):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def problems(expectation: Any) -> list[str]:
    """What is wrong with one `validation.expectations` entry ({type, kwargs}), in words; [] when nothing is."""
    import difflib

    if not isinstance(expectation, dict):
        return [f"each entry must be a mapping with 'type' and 'kwargs', got {expectation!r}"]
    unknown_keys = sorted(set(expectation) - {"type", "kwargs"})
    if unknown_keys:
        return [f"unknown keys {unknown_keys}: an entry has 'type' and 'kwargs'"]
    name, kwargs = expectation.get("type"), expectation.get("kwargs", {})
    known = registry()
    if name not in known:
        close = difflib.get_close_matches(str(name), known, n=3)
        hint = f"; did you mean {' or '.join(close)}?" if close else f" ({len(known)} are known)"
        return [f"{name!r} is not a Great Expectations expectation type{hint}"]
    if not isinstance(kwargs, dict):
        return [f"{name}: 'kwargs' must be a mapping, got {kwargs!r}"]
    fields = known[name]
    found = []
    for key in sorted(set(kwargs) - set(fields)):
        close = difflib.get_close_matches(key, fields, n=1)
        found.append(f"{name}: unknown argument {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    for key in sorted(k for k, f in fields.items() if f["required"] and k not in kwargs):
        found.append(f"{name}: missing required argument {key!r}")
    for key, value in sorted(kwargs.items()):
        kinds = fields.get(key, {}).get("kinds", [ANY])
        if ANY not in kinds and _kind(value) not in kinds and not (_kind(value) == "number" and "string" in kinds):
            found.append(f"{name}: argument {key!r} must be {' or '.join(kinds)}, got {value!r}")
    if "mostly" in kwargs and isinstance(kwargs["mostly"], int | float) and not 0 <= kwargs["mostly"] <= 1:
        found.append(f"{name}: argument 'mostly' must be between 0 and 1, got {kwargs['mostly']!r}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Snapshot Great Expectations' expectation registry")
    parser.add_argument("--write", action="store_true", help=f"write {SNAPSHOT.name} (else: check it is current)")
    args = parser.parse_args(argv)
    current = generate()
    if args.write:
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(current)} expectation types to {SNAPSHOT}")
        return 0
    stale = current != registry()
    print(f"{SNAPSHOT.name} is {'STALE: run with --write' if stale else 'current'} ({len(current)} types)")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
