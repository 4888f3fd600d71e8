"""Data validation with a Great Expectations suite built from the pipeline config."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from lifecycle.config.pipeline import PipelineConfig


class DataValidationError(ValueError):
    """The data broke expectations; `report` holds each failed expectation with sample values."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


def build_suite(config: PipelineConfig, columns: list[str], with_target: bool = True) -> Any:
    """The suite for this pipeline: schema, keys, null rates, target values and the YAML's extras."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=f"{config.name}{'' if with_target else '__scoring'}")
    min_rows = config.validation.min_rows if with_target else 1  # a scoring batch may be small
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=min_rows))
    required = [config.id_column, config.timestamp_column, *config.feature_columns]
    if with_target:
        required.append(config.target)
    for column in required:
        suite.add_expectation(gxe.ExpectColumnToExist(column=column))
    for column in [config.id_column, config.timestamp_column] + ([config.target] if with_target else []):
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column))
    suite.add_expectation(gxe.ExpectCompoundColumnsToBeUnique(column_list=[config.id_column, config.timestamp_column]))
    mostly = 1.0 - config.validation.max_null_fraction
    for column in config.feature_columns:
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column, mostly=mostly))
    numeric_types = ["int", "int32", "int64", "Int64", "float", "float32", "float64", "Float64"]
    finite = float(np.finfo("float64").max)
    for column in config.features.numeric:
        suite.add_expectation(gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=numeric_types))
        # Infinity is no number a model can take (the imputer refuses it at scoring): never only a warning.
        suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column=column, min_value=-finite, max_value=finite))
    if with_target and config.task == "binary":
        suite.add_expectation(gxe.ExpectColumnDistinctValuesToEqualSet(column=config.target, value_set=[0, 1]))
    if with_target and config.task == "regression":
        suite.add_expectation(gxe.ExpectColumnValuesToBeInTypeList(column=config.target, type_list=numeric_types))
    for extra in config.validation.expectations:
        kwargs = extra.get("kwargs", {})
        if not with_target and kwargs.get("column") == config.target:
            continue
        suite.add_expectation(_expectation_from_yaml(extra))
    return suite


def _expectation_from_yaml(extra: dict[str, Any]) -> Any:
    import great_expectations.expectations as gxe

    name = extra.get("type", "")
    class_name = "".join(part.capitalize() for part in name.split("_"))
    cls = getattr(gxe, class_name, None)
    if cls is None:
        raise ValueError(f"validation.expectations: unknown Great Expectations expectation {name!r}")
    return cls(**extra.get("kwargs", {}))


def validate(
    frame: pd.DataFrame,
    config: PipelineConfig,
    with_target: bool = True,
    contract: dict[str, Any] | None = None,
    where: str = "the data",
    partitions: dict[str, Any] | None = None,
    now: Any = None,
    contract_rules: bool = True,
) -> dict[str, Any]:
    """Run the suite and the data contract's check (lifecycle.ml.contract) in one GX run; return one JSON-able
    report, the contract's warnings included (`report["contract"]`). Raise DataValidationError when anything
    failed, naming each failed expectation and each broken contract rule with its column and `where`.

    `contract` is the champion's (None: only the rules that need no reference run, as on a first training);
    `partitions` is the ingestion's record (rows per partition, timestamp violations), by default the one a
    snapshot carries in frame.attrs. `contract_rules=False` runs the suite alone, for a caller that holds a whole
    batch to the contract itself (contract.check_batch) while it validates chunk by chunk.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    from lifecycle.ml import contract as contracts

    if partitions is None:
        partitions = frame.attrs.get(contracts.RECORD_KEY)
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas(name=f"{config.name}_source")
    asset = source.add_dataframe_asset(name="snapshot")
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": frame})
    suite = build_suite(config, list(frame.columns), with_target)
    suite_size = len(suite.expectations)
    for expectation in contracts.expectations(frame, contract, config) if contract_rules else []:
        suite.add_expectation(expectation)
    result = batch.validate(suite, result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5})
    own = [r for r in result.results if not contracts.is_contract_result(r)]
    checked = None
    if contract_rules:
        observed = contracts.observe(frame, contract, config, result.results, now)
        checked = contracts.judge(observed, contract, config, where=where, partitions=partitions)
    failures = [_describe(r) for r in own if not r.success]
    report = {
        "suite": suite.name,
        "success": not failures and (checked is None or checked["success"]),
        "evaluated": suite_size,
        "failed": len(failures),
        "rows": int(len(frame)),
        "failures": failures,
        "contract": checked,
    }
    problems = []
    if failures:
        problems.append(
            f"{len(failures)} of {suite_size} expectations failed: "
            + "; ".join(
                f"{f['expectation']} on {f['column'] or 'table'}: {f['observed']}"
                + (f" e.g. {f['sample_values']}" if f["sample_values"] else "")
                for f in failures
            )
        )
    if checked and checked["failures"]:
        problems.append(f"data contract broken in {where}: " + "; ".join(checked["failures"]))
    if problems:
        raise DataValidationError(" | ".join(problems), report)
    return report


def _describe(result: Any) -> dict[str, Any]:
    config = result.expectation_config
    kwargs = {k: v for k, v in (config.kwargs or {}).items() if k not in ("batch_id",)}
    details = result.result or {}
    info = result.exception_info or {}
    raised = info.get("raised_exception") or any(
        isinstance(v, dict) and v.get("raised_exception") for v in info.values()
    )
    exception = "could not be evaluated (is the column missing?)" if raised else None
    observed = details.get("observed_value")
    if observed is None and "unexpected_count" in details:
        observed = f"{details.get('unexpected_count')} unexpected ({details.get('unexpected_percent', 0):.2f}%)"
    return {
        "expectation": config.type,
        "column": kwargs.get("column") or kwargs.get("column_list"),
        "kwargs": kwargs,
        "observed": exception or observed,
        "sample_values": [_plain(v) for v in details.get("partial_unexpected_list", [])][:5],
    }


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN: a missing value is null
    return value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
