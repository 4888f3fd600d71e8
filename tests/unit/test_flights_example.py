"""The NYC 2013 flights example: the writer on a slice of the real tables, and the YAML read through ingestion."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pandas as pd
import pytest

from lifecycle.config.pipeline import load_pipeline
from lifecycle.devtools.examples import flights
from lifecycle.ml import ingestion

REPO = Path(__file__).resolve().parents[2]
YAML = REPO / "examples" / "pipelines" / "flights_delay.yaml"
# Three days around the switch to daylight saving time (2013-03-10), where local and UTC hours part.
START, END = dt.date(2013, 3, 9), dt.date(2013, 3, 11)


@pytest.fixture(scope="module")
def raw() -> tuple[pd.DataFrame, pd.DataFrame]:
    every = flights.raw_flights()
    day = pd.to_datetime(every[["year", "month", "day"]]).dt.date
    return every[(day >= START) & (day <= END)].reset_index(drop=True), flights.raw_weather()


@pytest.fixture(scope="module")
def written(raw, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("data")
    return root, flights.write(root, START, END, flights=raw[0], weather=raw[1])


def _digests(root: Path) -> dict[str, str]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_the_package_data_is_found_without_importing_the_package():
    data = flights.package_data()
    assert (data / "flights.csv.zip").is_file() and (data / "weather.csv").is_file()


def test_one_partition_per_local_day_with_unique_ids_and_the_label(raw, written):
    root, summary = written
    days = sorted(p.parent.name for p in (root / "nycflights13" / "flights").glob("date=*/part.parquet"))
    assert days == ["date=2013-03-09", "date=2013-03-10", "date=2013-03-11"]
    arrived = raw[0][raw[0]["arr_delay"].notna()]
    assert summary["rows"] == len(arrived) and summary["days"] == 3
    for day in (START, dt.date(2013, 3, 10), END):
        part = pd.read_parquet(flights.partition_path(root, day))
        assert len(part) == summary["rows_per_day"][day.isoformat()] > 500
        assert (part["sched_dep"].dt.date == day).all(), "partitions are local departure days"
        assert part["flight_id"].is_unique and part["flight_id"].str.startswith(day.isoformat()).all()
        assert part["arr_delay"].notna().all(), "cancelled and diverted flights are dropped"
        assert (part[flights.TARGET] == (part["arr_delay"] > 15).astype(int)).all()
        assert set(part["day_of_week"]) == {flights.WEEKDAYS[day.weekday()]}
        # The join key is the scheduled hour in UTC, also across the switch to daylight saving time.
        local = part["time_hour"].dt.tz_convert("America/New_York")
        assert (local.dt.hour == part["sched_dep_hour"]).all() and (local.dt.date == day).all()
    assert 0.1 < summary["positive_rate"] < 0.5


def test_weather_is_a_lookup_with_unique_keys(written):
    root, summary = written
    weather = pd.read_parquet(root / "nycflights13" / "weather.parquet")
    assert len(weather) == summary["weather_rows"] > 26_000, "the whole year, whatever slice of flights"
    assert not weather.duplicated(["origin", "time_hour"]).any()
    assert set(weather["origin"]) == {"JFK", "LGA", "EWR"}


def test_rewriting_is_idempotent(raw, written):
    root, summary = written
    before = _digests(root)
    again = flights.write(root, START, END, flights=raw[0], weather=raw[1])
    assert again == summary
    assert _digests(root) == before, "same files, same bytes, no temporary files left behind"


def test_the_example_pipeline_reads_and_joins_the_slice(written, monkeypatch):
    root, summary = written
    monkeypatch.setenv("DATA_ROOT", str(root))
    config = load_pipeline(YAML)
    frame = ingestion.load_window(config, START, END + dt.timedelta(days=1))
    assert len(frame) == summary["rows"], "the weather join adds columns, never rows"
    assert set(config.feature_columns) <= set(frame.columns)
    assert frame["temp"].notna().mean() > 0.95, "nearly every flight finds its hour's weather"
    assert frame[[config.id_column, config.timestamp_column]].notna().all().all()
    assert frame[config.feature_columns].isna().mean().max() <= config.validation.max_null_fraction
    # Nothing known only after departure, and every column that moves by design is a feature.
    leaky = set(flights.AFTER_DEPARTURE) | {"arr_delay", config.target}
    assert not leaky & set(config.feature_columns)
    assert not any(column in d.expression for d in config.features.derived for column in leaky)
    assert set(config.drift.expected_to_move) <= set(config.feature_columns)
    assert {"month", "day_of_week"} <= set(config.drift.expected_to_move)
    assert {"carrier", "origin", "dest", "sched_dep_hour", "distance"}.isdisjoint(config.drift.expected_to_move)


def test_the_command_writes_the_days_asked_for(tmp_path, capsys):
    flights.main([str(tmp_path), "--start", "2013-06-01", "--end", "2013-06-01"])
    assert "wrote 1 daily partition (" in capsys.readouterr().out
    assert flights.partition_path(tmp_path, dt.date(2013, 6, 1)).is_file()
    assert (tmp_path / "nycflights13" / "weather.parquet").is_file()
