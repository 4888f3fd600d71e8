"""Time split, category normalisation, derived features and the preprocessor fit on train only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lifecycle.ml import features


@pytest.fixture(scope="module")
def config(make_config):
    return make_config(training={"validation_days": 2, "holdout_days": 3})


@pytest.fixture(scope="module")
def parts(config, small_frame):
    return features.time_split(small_frame, config)


def dates(frame):
    return set(frame["snapshot_date"].dt.date)


def test_time_split_sizes(parts, small_frame):
    assert len(dates(parts["train"])) == 7
    assert len(dates(parts["validation"])) == 2
    assert len(dates(parts["holdout"])) == 3
    assert sum(len(p) for p in parts.values()) == len(small_frame)


def test_time_split_no_overlap_and_ordered(parts, small_frame):
    train, validation, holdout = parts["train"], parts["validation"], parts["holdout"]
    assert not dates(train) & dates(validation)
    assert not dates(validation) & dates(holdout)
    assert train["snapshot_date"].max() < validation["snapshot_date"].min()
    assert validation["snapshot_date"].max() < holdout["snapshot_date"].min()
    assert max(dates(holdout)) == max(dates(small_frame))  # the holdout is the last days


def test_time_split_ignores_row_order(config, small_frame, parts):
    shuffled = small_frame.sample(frac=1.0, random_state=0)
    again = features.time_split(shuffled, config)
    for name in parts:
        assert dates(again[name]) == dates(parts[name])
        assert len(again[name]) == len(parts[name])


def test_time_split_too_few_days_names_the_empty_split(config, small_frame):
    four_days = small_frame[small_frame["snapshot_date"] < "2026-01-05"]
    with pytest.raises(ValueError, match="the train split is empty: the window has 4 days"):
        features.time_split(four_days, config)


def test_split_bounds(config, parts):
    bounds = features.split_bounds(parts, config)
    assert bounds["train"] == {"rows": len(parts["train"]), "start": "2026-01-01", "end": "2026-01-07"}
    assert bounds["holdout"]["start"] == "2026-01-10" and bounds["holdout"]["end"] == "2026-01-12"


def test_derived_feature_is_computed():
    frame = pd.DataFrame({"monthly_spend": [10.0, 30.0, np.nan, 5.0], "sessions_30d": [4.0, 0.0, 1.0, -1.0]})
    out = features.prepare_raw(frame, [], {"spend_per_session": "monthly_spend / (sessions_30d + 1)"})
    expected = [2.0, 30.0, np.nan, np.nan]  # missing input and division by zero both become NaN, never inf
    np.testing.assert_allclose(out["spend_per_session"], expected)
    assert "spend_per_session" not in frame.columns  # the input frame is not modified


def test_prepare_raw_treats_string_object_and_missing_categories_alike():
    values = ["a", None, "b", np.nan]
    as_object = pd.DataFrame({"c": pd.Series(values, dtype=object)})
    as_string = pd.DataFrame({"c": pd.Series(["a", pd.NA, "b", pd.NA], dtype="string")})
    as_nan = pd.DataFrame({"c": pd.Series(["a", np.nan, "b", np.nan], dtype=object)})
    outs = [features.prepare_raw(f, ["c"], {})["c"] for f in (as_object, as_string, as_nan)]
    for out in outs:
        assert out.dtype == object
        assert out.tolist() == ["a", None, "b", None]


def test_preprocessor_same_output_for_any_category_dtype(config, parts):
    train = parts["train"]
    columns = features.input_columns(config, train)
    pre = features.build_preprocessor(config, train).fit(train[columns])
    rows = parts["holdout"][columns].head(20).copy()
    rows.loc[rows.index[:3], "device"] = None
    as_string = rows.copy()
    for column in config.features.categorical:
        as_string[column] = as_string[column].astype("string")
    as_nan = rows.copy()
    as_nan["device"] = as_nan["device"].where(as_nan["device"].notna(), np.nan)
    expected = pre.transform(rows)
    np.testing.assert_array_equal(pre.transform(as_string), expected)
    np.testing.assert_array_equal(pre.transform(as_nan), expected)


def test_preprocessor_handles_unseen_categories_and_missing_values(config, parts):
    train = parts["train"]
    columns = features.input_columns(config, train)
    pre = features.build_preprocessor(config, train).fit(train[columns])
    names = list(pre.get_feature_names_out())
    assert "spend_per_session" in names
    rows = parts["holdout"][columns].head(4).copy()
    rows["region"] = ["mars", "north", None, "north"]
    rows["device"] = ["ios", "hologram", np.nan, "ios"]
    rows["monthly_spend"] = [np.nan, 10.0, np.nan, 10.0]
    rows["sessions_30d"] = [np.nan, 4.0, 4.0, 4.0]
    out = pd.DataFrame(pre.transform(rows), columns=names)
    assert np.isfinite(out.to_numpy()).all()
    # Numeric gaps get the training median and a missing indicator.
    assert out.loc[0, "monthly_spend"] == pytest.approx(train["monthly_spend"].median())
    assert out.loc[0, "missingindicator_monthly_spend"] == 1.0
    assert out.loc[1, "missingindicator_monthly_spend"] == 0.0
    assert out.loc[1, "spend_per_session"] == pytest.approx(2.0)
    # An unseen category sets no known column; a seen one sets exactly its own.
    region = [n for n in names if n.startswith("region_")]
    assert out.loc[0, region].sum() == 0.0
    assert out.loc[1, "region_north"] == 1.0 and out.loc[1, region].sum() == 1.0
    # Here the few missing devices in train made an "infrequent" bucket, which also takes unseen values.
    known_devices = [n for n in names if n.startswith("device_") and "infrequent" not in n]
    assert out.loc[1, known_devices].sum() == 0.0
    assert out.loc[3, "device_ios"] == 1.0


def test_preprocessor_is_fit_on_train_only(config, parts):
    train = parts["train"]
    columns = features.input_columns(config, train)
    pre = features.build_preprocessor(config, train).fit(train[columns])
    median = pre.named_steps["columns"].named_transformers_["numeric"].statistics_
    numeric = [*config.features.numeric, "spend_per_session"]
    prepared = features.prepare_raw(train[columns], [], {"spend_per_session": "monthly_spend / (sessions_30d + 1)"})
    np.testing.assert_allclose(median, prepared[numeric].median().to_numpy())


def test_input_columns_listed_and_inferred(make_config, small_frame):
    config = make_config()
    assert features.input_columns(config, small_frame) == config.feature_columns
    inferred = make_config(features={"numeric": ["sessions_30d"], "categorical": [], "derived": [], "infer": True})
    numeric, categorical = features.feature_types(inferred, small_frame)
    assert {"churned", "account_id", "snapshot_date"}.isdisjoint(numeric + categorical)
    assert numeric[0] == "sessions_30d" and "monthly_spend" in numeric and "tenure_months" in numeric
    assert set(categorical) == {"device", "plan_change", "region", "plan", "signup_channel"}
