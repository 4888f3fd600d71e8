"""A generator of daily store orders for the segment-models demo: many stores, each with its own behaviour.

Will a customer order again within 30 days? The answer depends on the same features everywhere, but how
much discounts, basket size and the weekday matter differs by store (each store has its own coefficients),
which is what one model per store can learn and one model for all cannot. Store sizes follow a power law,
so a few stores are rare (and one, `popup`, too small to train: its rows show what happens to a segment
without a champion). Orders have weekly seasonality: more on weekends, and weekend orders behave differently.

    python -m lifecycle.devtools.demo_segments "$DATA_ROOT/store_orders" --start 2026-01-01 --end 2026-02-28 --stores 24
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

CHANNELS = ["web", "app", "shop"]
POPUP = "popup"  # a store with a handful of orders a day: below any sensible segments.min_rows


def stores(count: int) -> list[str]:
    return [f"store_{i:03d}" for i in range(1, count + 1)]


def _store_effects(count: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng([seed, count])
    return pd.DataFrame(
        {
            "intercept": rng.normal(-1.2, 0.6, count),
            "discount": rng.normal(0.0, 4.0, count),  # some stores' customers come back for discounts, some do not
            "basket": rng.normal(0.0, 0.02, count),
            "weekend": rng.normal(0.0, 1.0, count),
        },
        index=stores(count),
    )


def orders(day: dt.date, store_count: int = 24, rows: int = 1500, seed: int = 11, skew: float = 0.7) -> pd.DataFrame:
    """One day's orders with the label; deterministic for a given day, store count and seed."""
    rng = np.random.default_rng([seed, day.toordinal()])
    names = stores(store_count)
    weights = 1.0 / np.arange(1, store_count + 1) ** skew  # skew 0: every store the same size
    weekend = day.weekday() >= 5
    rows = int(rows * (1.3 if weekend else 1.0))
    store = rng.choice(names, rows, p=weights / weights.sum()).astype(object)
    popup = rng.random(rows) < 0.002
    store[popup] = POPUP
    effects = _store_effects(store_count, seed).reindex(store).fillna(0.0)
    visits = rng.poisson(3.0, rows).astype("float64")
    basket = rng.gamma(2.0, 25.0, rows)
    discount = rng.uniform(0.0, 0.3, rows).round(3)
    channel = rng.choice(CHANNELS, rows, p=[0.45, 0.35, 0.2])
    logit = (
        effects["intercept"].to_numpy()
        + effects["discount"].to_numpy() * discount
        + effects["basket"].to_numpy() * (basket - 50.0)
        + effects["weekend"].to_numpy() * weekend
        + 0.25 * visits
        + np.where(channel == "app", 0.4, 0.0)
    )
    ordered_again = rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))
    basket[rng.random(rows) < 0.03] = np.nan  # values go missing, as in a real feed
    return pd.DataFrame(
        {
            "order_id": day.toordinal() * 100_000 + np.arange(rows, dtype="int64"),
            "order_time": pd.Timestamp(day) + pd.to_timedelta(rng.integers(0, 86_400, rows), unit="s"),
            "store": store,
            "channel": channel,
            "weekday": day.strftime("%a"),
            "visits_90d": visits,
            "basket_value": basket.round(2),
            "discount": discount,
            "ordered_again": ordered_again.astype("int64"),
        }
    )


def write(
    root: str | Path, start: dt.date, end: dt.date, store_count: int = 24, rows: int = 1500, skew: float = 0.7
) -> Path:
    """Daily Parquet partitions `orders/date=YYYY-MM-DD/part.parquet` under `root`, start to end inclusive."""
    root = Path(root)
    day = start
    while day <= end:
        out = root / "orders" / f"date={day.isoformat()}" / "part.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        orders(day, store_count, rows, skew=skew).to_parquet(out, index=False)
        day += dt.timedelta(days=1)
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("--start", type=dt.date.fromisoformat, required=True)
    parser.add_argument("--end", type=dt.date.fromisoformat, required=True)
    parser.add_argument("--stores", type=int, default=24)
    parser.add_argument("--rows", type=int, default=1500, help="orders per weekday (weekends: 30%% more)")
    parser.add_argument("--skew", type=float, default=0.7, help="store sizes ~ 1/rank**skew (0: all equal)")
    args = parser.parse_args(argv)
    print(write(args.root, args.start, args.end, args.stores, args.rows, args.skew))


if __name__ == "__main__":
    main()
