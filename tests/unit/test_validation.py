"""The Great Expectations suite built from the config: good data passes, bad data is described."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lifecycle.ml.validation import DataValidationError, build_suite, validate


@pytest.fixture(scope="module")
def config(make_config):
    return make_config(validation={"min_rows": 100})


@pytest.fixture(scope="module")
def bad_report(config, small_frame):
    frame = small_frame.head(300).drop(columns=["region"]).reset_index(drop=True)
    frame["account_id"] = frame["account_id"].astype("float64")
    frame.loc[[0, 1, 2], "account_id"] = np.nan
    frame.loc[5, "monthly_spend"] = -12.5
    frame.loc[7, "churned"] = 2
    with pytest.raises(DataValidationError) as info:
        validate(frame, config)
    return info.value


def failures_by(report, expectation, column):
    return [f for f in report["failures"] if f["expectation"] == expectation and f["column"] == column]


def test_good_snapshot_passes(config, small_frame):
    report = validate(small_frame, config)
    assert report["success"] is True
    assert report["failed"] == 0 and report["failures"] == []
    assert report["rows"] == len(small_frame)
    assert report["evaluated"] == len(build_suite(config, list(small_frame.columns)).expectations)


def test_missing_column_is_reported(bad_report):
    assert failures_by(bad_report.report, "expect_column_to_exist", "region")


def test_null_ids_are_reported_with_samples(bad_report):
    (failure,) = failures_by(bad_report.report, "expect_column_values_to_not_be_null", "account_id")
    assert failure["observed"].startswith("3 unexpected")
    assert len(failure["sample_values"]) == 3


def test_negative_spend_is_reported_with_the_value(bad_report):
    (failure,) = failures_by(bad_report.report, "expect_column_values_to_be_between", "monthly_spend")
    assert failure["sample_values"] == [-12.5]


def test_bad_target_value_is_reported(bad_report):
    (failure,) = failures_by(bad_report.report, "expect_column_distinct_values_to_equal_set", "churned")
    assert [str(v) for v in failure["sample_values"]] == ["2"]


def test_error_message_summarises_every_failure(bad_report):
    report = bad_report.report
    assert report["success"] is False
    assert report["failed"] == len(report["failures"]) >= 5
    message = str(bad_report)
    assert message.startswith(f"{report['failed']} of {report['evaluated']} expectations failed")
    for column in ("region", "account_id", "monthly_spend", "churned"):
        assert column in message
    assert "-12.5" in message


def test_report_is_strict_json(bad_report):
    json.dumps(bad_report.report, allow_nan=False, default=str)


def test_too_few_rows_fails(config, small_frame):
    with pytest.raises(DataValidationError) as info:
        validate(small_frame.head(50), config)
    assert [f["expectation"] for f in info.value.report["failures"]] == ["expect_table_row_count_to_be_between"]


def test_too_many_nulls_in_a_feature_fails(config, small_frame):
    frame = small_frame.copy()
    frame.loc[frame.index[: len(frame) // 2], "sessions_30d"] = np.nan
    with pytest.raises(DataValidationError) as info:
        validate(frame, config)
    assert failures_by(info.value.report, "expect_column_values_to_not_be_null", "sessions_30d")


def test_yaml_expectations_are_applied(config, small_frame):
    frame = small_frame.copy()
    frame.loc[0, "plan"] = "platinum"
    with pytest.raises(DataValidationError) as info:
        validate(frame, config)
    (failure,) = failures_by(info.value.report, "expect_column_values_to_be_in_set", "plan")
    assert failure["sample_values"] == ["platinum"]


def test_scoring_suite_does_not_need_the_target(config, small_frame):
    report = validate(small_frame.drop(columns=["churned"]), config, with_target=False)
    assert report["success"] is True


def test_unknown_expectation_type_is_named(make_config):
    """Refused when the file is parsed (tests/unit/test_parse_time_checks.py has the rest), before any data."""
    with pytest.raises(ValueError, match="'expect_column_to_be_great' is not a Great Expectations expectation type"):
        make_config(validation={"expectations": [{"type": "expect_column_to_be_great", "kwargs": {}}]})


def test_the_contract_rules_are_judged_beside_the_suite_in_one_report(config, small_frame):
    """One GX run, one report: the suite's failures and the contract's, each naming its column and the window."""
    from lifecycle.ml import contract

    reference = contract.derive(small_frame, config)
    frame = small_frame.copy()
    frame["support_tickets"] = frame["support_tickets"] + 0.5
    frame.loc[0, "monthly_spend"] = -1.0
    with pytest.raises(DataValidationError) as info:
        validate(frame, config, contract=reference, where="training window 2026-01-01..2026-01-13")
    message = str(info.value)
    assert "expect_column_values_to_be_between on monthly_spend" in message
    assert "support_tickets' changed type: integer in the champion's contract, float in training window" in message
    report = info.value.report
    assert report["failed"] == len(report["failures"]) == 1 and not report["contract"]["success"]
    # The suite alone, for a caller that checks the contract over a whole batch itself:
    alone = validate(frame.assign(monthly_spend=1.0), config, contract=reference, contract_rules=False)
    assert alone["success"] and alone["contract"] is None


def test_infinity_in_a_numeric_feature_fails_the_suite(config, small_frame):
    frame = small_frame.copy()
    frame.loc[[0, 1], "avg_session_minutes"] = np.inf
    with pytest.raises(DataValidationError) as info:
        validate(frame, config)
    (failure,) = failures_by(info.value.report, "expect_column_values_to_be_between", "avg_session_minutes")
    assert failure["observed"].startswith("2 unexpected")
