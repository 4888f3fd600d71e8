"""Drift: injected drift is flagged, stationary batches are not, and the retrain policy holds its rules."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from lifecycle import demo_data, drift
from lifecycle.config import load_pipeline

DRIFT_FROM = dt.date(2026, 3, 10)


@pytest.fixture(scope="module")
def config():
    return load_pipeline("include/pipelines/demo_churn.yaml")


def _day(day: dt.date, rows: int = 800) -> pd.DataFrame:
    return demo_data.activity(day, rows, DRIFT_FROM).merge(demo_data.accounts(), on="account_id")


@pytest.fixture(scope="module")
def reference(config):
    train = pd.concat([_day(dt.date(2026, 1, 1) + dt.timedelta(days=i)) for i in range(21)])
    return drift.reference_profile(train, config.features.numeric, config.features.categorical)


def test_psi_is_zero_for_identical_and_large_for_shifted_distributions():
    assert drift.psi([0.25] * 4, [0.25] * 4) == pytest.approx(0.0)
    assert drift.psi([0.25] * 4, [0.7, 0.1, 0.1, 0.1]) > 0.5


def test_false_alarm_rate_over_stationary_batches(config, reference):
    days = [dt.date(2026, 1, 25) + dt.timedelta(days=i) for i in range(40)]
    alarms = [d for d in days if drift.check(reference, _day(d), None, config.drift)["dataset_drift"]]
    feature_alarms = sum(
        len(drift.check(reference, _day(d), None, config.drift)["drifted_features"]) for d in days[:10]
    )
    print(f"\nstationary batches: {len(alarms)} dataset false alarms in {len(days)} ({len(alarms) / len(days):.1%}); "
          f"{feature_alarms} feature alarms in {10 * 12} feature checks")  # fmt: skip
    assert len(alarms) / len(days) <= 0.05


def test_injected_drift_is_flagged_with_the_drifted_features(config, reference):
    for day in (DRIFT_FROM, DRIFT_FROM + dt.timedelta(days=3)):
        result = drift.check(reference, _day(day), None, config.drift)
        assert result["dataset_drift"], result["reason"]
        assert {"days_since_last_login", "device"} <= set(result["drifted_features"])
        # Effect sizes decide; the p-values are context and are tiny for every feature at this size.
        assert result["features"]["days_since_last_login"]["p_value"] < 1e-6


def test_prediction_drift_uses_the_reference_score_bins(config, reference):
    rng = np.random.default_rng(0)
    reference = {**reference, "prediction": drift.numeric_profile(pd.Series(rng.beta(1, 8, 5000)))}
    same = drift.check(reference, _day(dt.date(2026, 2, 1)), rng.beta(1, 8, 800), config.drift)
    shifted = drift.check(reference, _day(dt.date(2026, 2, 1)), rng.beta(3, 5, 800), config.drift)
    assert not same["prediction"]["drifted"]
    assert shifted["prediction"]["drifted"] and shifted["dataset_drift"]


def test_performance_drop_on_labelled_batches_is_dataset_drift(config, reference):
    performance = {"metric": "roc_auc", "holdout": 0.77, "current": 0.65, "drop": 0.12, "threshold": 0.05, "rows": 800}
    result = drift.check(reference, _day(dt.date(2026, 2, 1)), None, config.drift, performance)
    assert result["dataset_drift"] and "roc_auc fell 0.120" in result["reason"]


POLICY = SimpleNamespace(window=3, min_drifted=2, cooldown_days=7)


@pytest.mark.parametrize(
    ("history", "days_since", "fires", "why"),
    [
        ([False, False, True], None, False, "drift in 1 of the last 3"),  # one noisy day does not retrain
        ([False, True, True], None, True, "drift in 2 of the last 3"),
        ([True, False, True], None, True, "drift in 2 of the last 3"),
        ([True, True, False], None, False, "no drift in this batch"),
        ([False, True, True], 3, False, "cool-down"),
        ([False, True, True], 7, True, "drift in 2 of the last 3"),
        ([True, True, True, False, True], None, True, "drift in 2 of the last 3"),
    ],
)
def test_retrain_policy(history, days_since, fires, why):
    fired, reason = drift.should_retrain(history, days_since, POLICY)
    assert fired is fires and why in reason
