"""The synthetic churn data: deterministic, realistic rates, and drift only where asked."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from lifecycle.devtools import demo_data

DAY = dt.date(2026, 1, 10)


def test_same_day_same_rows():
    pd.testing.assert_frame_equal(demo_data.activity(DAY, 100), demo_data.activity(DAY, 100))


def test_other_day_or_seed_other_rows():
    base = demo_data.activity(DAY, 100)
    assert not base.equals(demo_data.activity(DAY + dt.timedelta(days=1), 100))
    assert not base.equals(demo_data.activity(DAY, 100, seed=8))


def test_shape_and_keys():
    frame = demo_data.activity(DAY, 150)
    assert len(frame) == 150
    assert frame["account_id"].is_unique  # one row per account per day
    assert frame["account_id"].between(1, demo_data.N_ACCOUNTS).all()
    assert (frame["snapshot_date"] == pd.Timestamp(DAY)).all()
    assert set(frame["churned"].unique()) <= {0, 1}


def test_accounts_cover_every_activity_id():
    accounts = demo_data.accounts()
    assert accounts["account_id"].is_unique
    assert set(demo_data.activity(DAY, 200)["account_id"]) <= set(accounts["account_id"])


def test_positive_rate_is_realistic(make_frame):
    frame = make_frame(10, 200)
    assert 0.05 <= frame["churned"].mean() <= 0.25


def test_missing_values_present(make_frame):
    frame = make_frame(10, 200)
    for column in ("avg_session_minutes", "monthly_spend", "device"):
        rate = frame[column].isna().mean()
        assert 0.0 < rate < 0.15, column
    assert frame[["account_id", "snapshot_date", "churned", "sessions_30d"]].notna().all().all()


def test_drift_raises_spend_from_drift_day_on():
    for offset in range(3):
        day = DAY + dt.timedelta(days=offset)
        clean = demo_data.activity(day, 2000)
        drifted = demo_data.activity(day, 2000, drift_from=DAY)
        # Spend is scaled by 1.35; the two frames draw different samples, so allow sampling noise.
        ratio = drifted["monthly_spend"].mean() / clean["monthly_spend"].mean()
        assert ratio == pytest.approx(1.35, rel=0.05)
        assert drifted["days_since_last_login"].mean() > 1.5 * clean["days_since_last_login"].mean()
        # device mix moves towards desktop
        assert (drifted["device"] == "desktop").mean() > (clean["device"] == "desktop").mean() + 0.15


def test_no_drift_before_drift_day():
    for offset in range(1, 4):
        day = DAY - dt.timedelta(days=offset)
        pd.testing.assert_frame_equal(demo_data.activity(day, 100, drift_from=DAY), demo_data.activity(day, 100))


def test_write_lays_out_partitions(tmp_path):
    written = demo_data.write(tmp_path, dt.date(2026, 1, 1), dt.date(2026, 1, 3), rows_per_day=20)
    assert [p.parent.name for p in written] == ["date=2026-01-01", "date=2026-01-02", "date=2026-01-03"]
    assert (tmp_path / "accounts.csv").exists()
    part = pd.read_parquet(written[1])
    # Parquet may store the timestamp at another resolution; the values are what matter.
    pd.testing.assert_frame_equal(part, demo_data.activity(dt.date(2026, 1, 2), 20), check_dtype=False)
