"""What a pipeline file gets wrong that is known without data is refused at parse time, naming the field."""

from __future__ import annotations

import json

import pytest

from lifecycle.config import gx_registry
from lifecycle.config.pipeline import PipelineConfig, expression_columns, load_pipeline

DEMO = "include/pipelines/demo_churn.yaml"


def _with(path: str, value) -> dict:
    data = load_pipeline(DEMO).model_dump()
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    node[last] = value
    return data


def _refused(path: str, value, *words: str) -> None:
    with pytest.raises(ValueError) as caught:
        PipelineConfig.model_validate(_with(path, value))
    message = str(caught.value)
    for word in words:
        assert word in message, message


def test_the_snapshot_is_the_installed_great_expectations_registry():
    assert gx_registry.generate() == gx_registry.registry(), "run python -m lifecycle.config.gx_registry --write"


CASES = [
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "a", "min_value": 0}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"column": "a", "min_valu": 0}},
    {"type": "expect_column_values_to_be_between", "kwargs": {"min_value": 0}},
    {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "a", "value_set": ["x", "y"]}},
    {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "a"}},
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a", "mostly": 0.95}},
    {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "a", "mostly": 2}},
    {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "a", "regex": "^x"}},
    {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "a", "regex": 5}},
    {"type": "expect_table_row_count_to_be_between", "kwargs": {"min_value": 1, "max_value": 10}},
    {"type": "expect_column_pair_values_a_to_be_greater_than_b", "kwargs": {"column_A": "a", "column_B": "b"}},
    {"type": "expect_column_pair_values_a_to_be_greater_than_b", "kwargs": {"column_A": "a"}},
    {"type": "expect_column_mean_to_be_between", "kwargs": {"column": "a", "strict_min": True}},
    {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "a", "catch_exceptions": True}},
    {"type": "expect_column_values_to_be_of_type", "kwargs": {"column": "a", "type_": "int64"}},
    {"type": "expect_column_values_to_be_of_type", "kwargs": {"column": "a"}},
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: json.dumps(c["kwargs"], sort_keys=True)[:60])
def test_the_parse_time_verdict_is_great_expectations_own(case):
    """Every case is built by GX itself too: the snapshot accepts exactly what GX's constructor accepts."""
    import great_expectations.expectations as gxe

    cls = getattr(gxe, "".join(p.capitalize() for p in case["type"].split("_")))
    try:
        cls(**case["kwargs"])
        gx_accepts = True
    except Exception:
        gx_accepts = False
    assert (gx_registry.problems(case) == []) == gx_accepts, gx_registry.problems(case)


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"type": "expect_column_values_to_be_betwen", "kwargs": {"column": "a"}},
         ["'expect_column_values_to_be_betwen' is not a Great Expectations expectation type",
          "did you mean expect_column_values_to_be_between"]),
        ({"type": "expect_column_values_to_be_between", "kwargs": {"colum": "a"}},
         ["unknown argument 'colum' (did you mean 'column'?)", "missing required argument 'column'"]),
        ({"type": "expect_column_values_to_be_between", "kwarg": {}}, ["unknown keys ['kwarg']"]),
        ({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "plan", "value_set": "basic"}},
         ["argument 'value_set' must be"]),
        # Stricter than GX, which turns the list ["^x"] into the dict {"^": "x"} and matches nothing useful.
        ({"type": "expect_column_values_to_match_regex", "kwargs": {"column": "plan", "regex": ["^x"]}},
         ["argument 'regex' must be object or string, got ['^x']"]),
    ],
)  # fmt: skip
def test_expectation_mistakes_name_the_entry_and_the_argument(entry, words):
    _refused("validation.expectations", [entry], "validation.expectations", "[0]", *words)


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("monthly_spend / (sessions_30d + ", ["is not valid"]),
        ("monthly_spend.mean()", ["monthly_spend.mean() is not one of"]),
        ("monthly_spend.values", ["Attribute is not allowed"]),
        ("open('x')", ["open() is not one of"]),
        ("[a for a in b]", ["ListComp is not allowed"]),
        ("3 * 4", ["reads no column"]),
        ("  ", ["the expression is empty"]),
    ],
)
def test_derived_expressions_are_parsed(expression, words):
    _refused("features.derived", [{"name": "x", "expression": expression}], "features.derived.0.expression", *words)


def test_the_columns_an_expression_reads_are_known_before_the_data():
    assert expression_columns("log1p(monthly_spend) / (sessions_30d + 1) > tenure_months") == [
        "monthly_spend",
        "sessions_30d",
        "tenure_months",
    ]


def test_numbers_that_cannot_work_are_refused():
    _refused("training.window_days", 12, "training.window_days (12) leaves no training days", "+ 1")
    _refused("gate.bootstrap.resamples", 0, "gate.bootstrap.resamples")
    _refused("gate.floors", {"roc_auc": float("-inf")}, "gate.floors.roc_auc", "outside the metric's range")
    _refused("gate.floors", {"roc_auc": 1.5}, "gate.floors.roc_auc: 1.5 is outside the metric's range [0.0, 1.0]")
    _refused("gate.min_improvement", float("inf"), "gate.min_improvement")
    _refused("model_name", "churn model/v2", "model_name", "should match pattern")
    _refused("gate.secondary", {"log_loss": -1}, "gate.secondary", "must be a finite number >= 0")
