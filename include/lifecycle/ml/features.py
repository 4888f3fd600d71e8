"""Feature engineering: a time-based split and a scikit-learn ColumnTransformer fit on train only."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

from lifecycle.config.pipeline import PipelineConfig

# Models logged before 2026-12-03 name `lifecycle.features.prepare_raw`: this import keeps them loading.
from lifecycle_runtime.v1 import prepare_raw, prepared_names


def _prepared_names(transformer: FunctionTransformer, input_features: Any) -> list[str]:
    """Models logged before 2026-12-03 name this function (and `prepare_raw` above): keep both importable."""
    return prepared_names(transformer, input_features)


def feature_types(config: PipelineConfig, frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Numeric and categorical columns: as listed, or inferred from the data when `infer` is set."""
    numeric, categorical = list(config.features.numeric), list(config.features.categorical)
    if config.features.infer:
        reserved = {config.target, config.id_column, config.timestamp_column, *numeric, *categorical}
        for column in frame.columns:
            if column in reserved:
                continue
            if pd.api.types.is_bool_dtype(frame[column]) or not pd.api.types.is_numeric_dtype(frame[column]):
                categorical.append(column)
            else:
                numeric.append(column)
    return numeric, categorical


def input_columns(config: PipelineConfig, frame: pd.DataFrame) -> list[str]:
    """The raw columns a model takes: what scoring rows must carry."""
    numeric, categorical = feature_types(config, frame)
    return [*numeric, *categorical]


def build_preprocessor(config: PipelineConfig, frame: pd.DataFrame) -> Pipeline:
    numeric, categorical = feature_types(config, frame)
    derived = {d.name: d.expression for d in config.features.derived}
    columns = ColumnTransformer(
        [
            ("numeric", SimpleImputer(strategy="median", add_indicator=True), [*numeric, *derived]),
            (
                "categorical",
                make_pipeline(
                    SimpleImputer(missing_values=None, strategy="constant", fill_value="missing"),
                    OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20, sparse_output=False),
                ),
                categorical,
            ),
        ],
        remainder="drop",
        verbose_feature_names_out=False,
    )
    prepare = FunctionTransformer(
        prepare_raw,
        kw_args={"categorical": categorical, "derived": derived},
        feature_names_out=prepared_names,
    )
    return Pipeline([("prepare", prepare), ("columns", columns)])


class SplitError(ValueError):
    """The window cannot be split into train, validation and holdout (too few days)."""


def time_split(frame: pd.DataFrame, config: PipelineConfig) -> dict[str, pd.DataFrame]:
    """Train, validation and holdout by time: the holdout is the last days, so nothing leaks backwards."""
    ts = pd.to_datetime(frame[config.timestamp_column])
    end = ts.max().normalize() + pd.Timedelta(days=1)
    holdout_start = end - pd.Timedelta(days=config.training.holdout_days)
    validation_start = holdout_start - pd.Timedelta(days=config.training.validation_days)
    parts = {
        "train": frame[ts < validation_start],
        "validation": frame[(ts >= validation_start) & (ts < holdout_start)],
        "holdout": frame[ts >= holdout_start],
    }
    for name, part in parts.items():
        if part.empty:
            raise SplitError(
                f"the {name} split is empty: the window has {ts.dt.normalize().nunique()} days, "
                f"fewer than validation_days + holdout_days + 1"
            )
    return {name: part.reset_index(drop=True) for name, part in parts.items()}


def xy(frame: pd.DataFrame, config: PipelineConfig, columns: list[str]) -> tuple[pd.DataFrame, pd.Series]:
    return frame[columns], frame[config.target]


def split_bounds(parts: dict[str, pd.DataFrame], config: PipelineConfig) -> dict[str, Any]:
    ts = config.timestamp_column
    return {
        name: {
            "rows": int(len(part)),
            "start": dt.date.isoformat(part[ts].min().date()),
            "end": dt.date.isoformat(part[ts].max().date()),
        }
        for name, part in parts.items()
    }
