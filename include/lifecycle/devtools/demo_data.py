"""A generator of realistic daily churn partitions, with a knob for covariate and concept drift.

Two sources, as in a real warehouse: static account attributes (CSV) and one Parquet partition of
daily activity per day. The label is non-linear with noise and about 15% positives; values go missing
at realistic rates. From `drift_from` on, spend, sessions, logins, devices and downgrades shift (covariate drift) and the effect of
support tickets on churn flips sign (concept drift).
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

N_ACCOUNTS = 20_000
REGIONS = ["north", "south", "east", "west", "central"]
PLANS = ["basic", "pro", "enterprise"]
CHANNELS = ["organic", "ads", "partner", "sales"]
DEVICES = ["ios", "android", "web", "desktop"]


def accounts(seed: int = 7) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "account_id": np.arange(1, N_ACCOUNTS + 1, dtype="int64"),
            "region": rng.choice(REGIONS, N_ACCOUNTS, p=[0.25, 0.2, 0.2, 0.2, 0.15]),
            "plan": rng.choice(PLANS, N_ACCOUNTS, p=[0.6, 0.3, 0.1]),
            "signup_channel": rng.choice(CHANNELS, N_ACCOUNTS),
            "tenure_months": rng.gamma(2.0, 10.0, N_ACCOUNTS).round(1),
        }
    )


def activity(day: dt.date, rows: int = 1000, drift_from: dt.date | None = None, seed: int = 7) -> pd.DataFrame:
    """One day's activity rows with the churn label; deterministic for a given day and seed."""
    rng = np.random.default_rng([seed, day.toordinal()])
    drifted = drift_from is not None and day >= drift_from
    ids = rng.choice(N_ACCOUNTS, size=rows, replace=False) + 1
    base = accounts(seed).set_index("account_id").loc[ids]

    spend_scale = 1.35 if drifted else 1.0
    login_gap_scale = 2.0 if drifted else 1.0
    device_p = [0.15, 0.15, 0.2, 0.5] if drifted else [0.3, 0.3, 0.25, 0.15]

    sessions = rng.poisson(8 if drifted else 12, rows).astype("float64")
    minutes = rng.lognormal(2.5, 0.6, rows)
    tickets = rng.poisson(0.6, rows)
    gap = rng.exponential(6.0 * login_gap_scale, rows).round()
    plan_factor = base["plan"].map({"basic": 1.0, "pro": 2.2, "enterprise": 5.0}).to_numpy()
    spend = rng.gamma(4.0, 8.0, rows) * plan_factor * spend_scale
    failures = rng.binomial(3, 0.05, rows)
    device = rng.choice(DEVICES, rows, p=device_p).astype(object)
    change_p = [0.7, 0.05, 0.25] if drifted else [0.85, 0.07, 0.08]
    plan_change = rng.choice(["none", "upgrade", "downgrade"], rows, p=change_p)

    tenure = base["tenure_months"].to_numpy()
    basic = (base["plan"] == "basic").to_numpy()
    east = (base["region"] == "east").to_numpy()
    ticket_effect = -0.8 if drifted else 1.3  # concept drift: tickets stop signalling churn
    logit = (
        -3.0
        + 2.2 * (gap > 14)
        + ticket_effect * (tickets >= 2) * basic
        - 1.6 * (sessions > 14) * (tenure > 12)
        + 0.9 * failures
        + 1.1 * (plan_change == "downgrade")
        - 0.8 * (plan_change == "upgrade")
        + 0.012 * (minutes - 12.0) ** 2 / (1.0 + 0.05 * (minutes - 12.0) ** 2)
        + 1.0 * east * (device == "web")
        + 0.8 * ((spend / plan_factor) > 45) * (sessions < 9)
        + rng.normal(0.0, 0.3, rows)
    )
    churned = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype("int64")

    frame = pd.DataFrame(
        {
            "account_id": ids.astype("int64"),
            "snapshot_date": pd.Timestamp(day),
            "sessions_30d": sessions,
            "avg_session_minutes": minutes.round(2),
            "support_tickets": tickets.astype("int64"),
            "days_since_last_login": gap,
            "monthly_spend": spend.round(2),
            "payment_failures": failures.astype("int64"),
            "device": device,
            "plan_change": plan_change.astype(object),
            "churned": churned,
        }
    )
    for column, rate in (("avg_session_minutes", 0.05), ("monthly_spend", 0.03)):
        frame.loc[rng.random(rows) < rate, column] = np.nan
    frame.loc[rng.random(rows) < 0.02, "device"] = None
    return frame


LABEL_DELAY_DAYS = 4  # the demo's labels land this many days after the activity they label


def labels(activity_frame: pd.DataFrame) -> pd.DataFrame:
    """The outcome of each activity row, as a labels feed delivers it: id, the row's timestamp, the label."""
    return activity_frame[["account_id", "snapshot_date", "churned"]].copy()


def write_labels(root: Path, days: list[dt.date], activity_frames: list[pd.DataFrame], delay_days: int) -> list[Path]:
    """labels/date=<arrival day>/part.parquet: each day's outcomes, landing `delay_days` later."""
    written = []
    for day, frame in zip(days, activity_frames, strict=True):
        arrival = day + dt.timedelta(days=delay_days)
        path = root / "labels" / f"date={arrival.isoformat()}" / "part.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        labels(frame).to_parquet(path, index=False)
        written.append(path)
    return written


def write(
    root: Path,
    start: dt.date,
    end: dt.date,
    rows_per_day: int = 1000,
    drift_from: dt.date | None = None,
    label_delay_days: int | None = LABEL_DELAY_DAYS,
) -> list[Path]:
    """Write accounts.csv and activity/date=YYYY-MM-DD/part.parquet for each day in [start, end], and the
    labels of each day under labels/, partitioned by the day they arrive (None: no labels feed)."""
    root.mkdir(parents=True, exist_ok=True)
    accounts().to_csv(root / "accounts.csv", index=False)
    written, days, frames = [], [], []
    day = start
    while day <= end:
        path = root / "activity" / f"date={day.isoformat()}" / "part.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = activity(day, rows_per_day, drift_from)
        frame.to_parquet(path, index=False)
        written.append(path)
        days.append(day)
        frames.append(frame)
        day += dt.timedelta(days=1)
    if label_delay_days is not None:
        write_labels(root, days, frames, label_delay_days)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--start", type=dt.date.fromisoformat, required=True)
    parser.add_argument("--end", type=dt.date.fromisoformat, required=True)
    parser.add_argument("--rows-per-day", type=int, default=1000)
    parser.add_argument("--drift-from", type=dt.date.fromisoformat)
    args = parser.parse_args()
    paths = write(args.root, args.start, args.end, args.rows_per_day, args.drift_from)
    print(f"wrote {len(paths)} daily partitions under {args.root}")


if __name__ == "__main__":
    main()
