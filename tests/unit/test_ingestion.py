"""Reading a pipeline's sources for a window: partitions, joins, SQL, and errors that name the source."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa

from lifecycle.config.pipeline import PipelineConfig
from lifecycle.devtools import demo_data
from lifecycle.ml import ingestion
from lifecycle.ml.ingestion import SourceError
from lifecycle.persistence import storage

START = dt.date(2026, 1, 1)
ROWS = 50


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_churn")
    demo_data.write(root, START, START + dt.timedelta(days=9), rows_per_day=ROWS)  # 10 days
    return root


def config_for(demo_dict, root, **changes) -> PipelineConfig:
    demo_dict["sources"][0]["uri"] = f"{root}/activity/date={{date}}/part.parquet"
    demo_dict["sources"][1]["uri"] = f"file://{root}/accounts.csv"
    demo_dict.update(changes)
    return PipelineConfig.model_validate(demo_dict)


def test_date_partitions_only_in_window_are_read(demo_dict, data_root, monkeypatch):
    config = config_for(demo_dict, data_root)
    read = []
    real = ingestion._read_file
    monkeypatch.setattr(ingestion, "_read_file", lambda uri, fmt: read.append(uri) or real(uri, fmt))
    frame = ingestion.read_source(config.sources[0], dt.date(2026, 1, 3), dt.date(2026, 1, 6))
    assert [u.split("date=")[1][:10] for u in read] == ["2026-01-03", "2026-01-04", "2026-01-05"]
    assert sorted(frame["snapshot_date"].dt.date.unique()) == [dt.date(2026, 1, d) for d in (3, 4, 5)]
    assert len(frame) == 3 * ROWS


def test_partition_outside_window_is_never_opened(demo_dict, data_root, tmp_path):
    # A copy of the data where the days around the window are corrupt: reading them would fail.
    root = tmp_path / "copy"
    demo_data.write(root, START, START + dt.timedelta(days=4), rows_per_day=ROWS)
    for day in ("2026-01-01", "2026-01-05"):
        (root / "activity" / f"date={day}" / "part.parquet").write_bytes(b"not parquet")
    config = config_for(demo_dict, root)
    frame = ingestion.load_window(config, dt.date(2026, 1, 2), dt.date(2026, 1, 5))
    assert len(frame) == 3 * ROWS


def test_load_window_joins_accounts(demo_dict, data_root):
    config = config_for(demo_dict, data_root)
    frame = ingestion.load_window(config, dt.date(2026, 1, 2), dt.date(2026, 1, 4))
    assert len(frame) == 2 * ROWS  # a left join on unique keys adds no rows
    for column in ("region", "plan", "signup_channel", "tenure_months"):
        assert column in frame.columns and frame[column].notna().all()
    accounts = demo_data.accounts().set_index("account_id")
    row = frame.iloc[7]
    assert row["plan"] == accounts.loc[row["account_id"], "plan"]
    # sorted by time then id, so every run sees one order
    assert frame[["snapshot_date", "account_id"]].equals(
        frame[["snapshot_date", "account_id"]].sort_values(["snapshot_date", "account_id"]).reset_index(drop=True)
    )


def test_duplicate_join_keys_name_the_source(demo_dict, data_root, tmp_path):
    accounts = demo_data.accounts()
    pd.concat([accounts, accounts.head(3)]).to_csv(tmp_path / "accounts.csv", index=False)
    demo_dict["sources"][0]["uri"] = f"{data_root}/activity/date={{date}}/part.parquet"
    demo_dict["sources"][1]["uri"] = str(tmp_path / "accounts.csv")
    config = PipelineConfig.model_validate(demo_dict)
    with pytest.raises(SourceError, match="source 'accounts'.*not unique"):
        ingestion.load_window(config, dt.date(2026, 1, 2), dt.date(2026, 1, 4))


def test_missing_join_key_names_the_source(demo_dict, data_root, tmp_path):
    demo_data.accounts().rename(columns={"account_id": "id"}).to_csv(tmp_path / "accounts.csv", index=False)
    config = config_for(demo_dict, data_root)
    data = config.model_dump()
    data["sources"][1]["uri"] = str(tmp_path / "accounts.csv")
    with pytest.raises(SourceError, match="source 'accounts'.*account_id"):
        ingestion.load_window(PipelineConfig.model_validate(data), dt.date(2026, 1, 2), dt.date(2026, 1, 4))


def test_no_partitions_in_window_names_the_uri(demo_dict, data_root):
    config = config_for(demo_dict, data_root)
    with pytest.raises(SourceError) as info:
        ingestion.load_window(config, dt.date(2026, 3, 1), dt.date(2026, 3, 8))
    message = str(info.value)
    assert "source 'activity'" in message
    assert f"{data_root}/activity/date={{date}}/part.parquet" in message


def test_missing_single_file_names_the_uri(demo_dict, data_root, tmp_path):
    config = config_for(demo_dict, data_root)
    data = config.model_dump()
    data["sources"][1]["uri"] = str(tmp_path / "no_such_accounts.csv")
    with pytest.raises(SourceError, match="source 'accounts'.*no_such_accounts.csv does not exist"):
        ingestion.load_window(PipelineConfig.model_validate(data), dt.date(2026, 1, 2), dt.date(2026, 1, 4))


def test_glob_source(demo_dict, data_root):
    config = config_for(demo_dict, data_root)
    data = config.model_dump()
    data["sources"][0].update(uri=f"{data_root}/activity/date=2026-01-0[12]/*.parquet", layout="glob")
    frame = ingestion.load_window(PipelineConfig.model_validate(data), dt.date(2026, 1, 1), dt.date(2026, 1, 2))
    assert len(frame) == ROWS  # both files read, then cut to the window
    data["sources"][0]["uri"] = f"{data_root}/nothing/*.parquet"
    with pytest.raises(SourceError, match="no files match"):
        ingestion.load_window(PipelineConfig.model_validate(data), dt.date(2026, 1, 1), dt.date(2026, 1, 2))


@pytest.fixture
def sqlite_url(tmp_path):
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    activity = pd.concat([demo_data.activity(START + dt.timedelta(days=i), 20) for i in range(6)], ignore_index=True)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        activity.to_sql("activity", conn, index=False)
    engine.dispose()
    return url


def sql_config(demo_dict, data_root) -> PipelineConfig:
    demo_dict["sources"][0] = {
        "name": "activity",
        "sql": "SELECT * FROM activity WHERE snapshot_date >= :start AND snapshot_date < :end",
        "conn_id": "warehouse",
    }
    demo_dict["sources"][1]["uri"] = str(data_root / "accounts.csv")
    return PipelineConfig.model_validate(demo_dict)


def test_sql_source_binds_the_window(demo_dict, data_root, sqlite_url):
    config = sql_config(demo_dict, data_root)
    raw = ingestion.read_source(
        config.sources[0], dt.date(2026, 1, 2), dt.date(2026, 1, 5), connection_urls={"warehouse": sqlite_url}
    )
    assert len(raw) == 3 * 20  # the query itself was cut to the window by :start/:end
    frame = ingestion.load_window(
        config, dt.date(2026, 1, 2), dt.date(2026, 1, 5), connection_urls={"warehouse": sqlite_url}
    )
    assert len(frame) == 3 * 20
    assert pd.api.types.is_datetime64_any_dtype(frame["snapshot_date"])
    assert sorted(frame["snapshot_date"].dt.date.unique()) == [dt.date(2026, 1, d) for d in (2, 3, 4)]
    assert frame["plan"].notna().all()  # joined with the CSV accounts


def test_sql_source_without_connection_names_it(demo_dict, data_root):
    config = sql_config(demo_dict, data_root)
    with pytest.raises(SourceError, match="source 'activity': connection 'warehouse' is not defined"):
        ingestion.read_source(config.sources[0], dt.date(2026, 1, 2), dt.date(2026, 1, 5), connection_urls={})


def test_snapshot_writes_window_and_metadata(demo_dict, data_root, tmp_path):
    config = config_for(demo_dict, data_root)
    out = f"file://{tmp_path}/snap/snapshot.parquet"
    meta = ingestion.snapshot(config, dt.date(2026, 1, 8), 7, out)
    assert meta["window_start"] == "2026-01-01" and meta["window_end"] == "2026-01-08"
    assert meta["rows"] == 7 * ROWS
    frame = storage.read_parquet(out)
    assert len(frame) == meta["rows"]
    assert frame["snapshot_date"].max() < pd.Timestamp("2026-01-08")  # the as-of day is excluded
