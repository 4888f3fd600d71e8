"""The first step of every model logged since 2026-12-03: category dtypes, then derived columns."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def prepare_raw(frame: pd.DataFrame, categorical: list[str], derived: dict[str, str]) -> pd.DataFrame:
    """One dtype for category values, then the configured derived columns.

    Category values arrive as pandas strings, objects, NaN or None depending on the source; casting them
    here means a logged model scores raw rows from any reader the same way.
    """
    frame = frame.copy()
    for column in categorical:
        if column in frame:
            values = frame[column].astype(object)
            frame[column] = values.where(values.notna(), None)
    for name, expression in derived.items():
        frame[name] = pd.to_numeric(frame.eval(expression), errors="coerce").replace([np.inf, -np.inf], np.nan)
    return frame


def prepared_names(transformer: Any, input_features: Any) -> list[str]:
    """The columns `prepare_raw` returns: the inputs, then the derived ones (`get_feature_names_out`)."""
    return [*input_features, *transformer.kw_args["derived"]]
