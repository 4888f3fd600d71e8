"""The labels source: partitions by arrival day, files, SQL; one frame shape; errors that name the column."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest
import sqlalchemy as sa

from lifecycle.config.pipeline import PipelineConfig, load_pipeline
from lifecycle.devtools import demo_data
from lifecycle.ml import labels
from lifecycle.ml.ingestion import SourceError

DEMO = "include/pipelines/demo_churn.yaml"


def _config(**labels_section) -> PipelineConfig:
    data = load_pipeline(DEMO).model_dump()
    data["labels"] = labels_section
    return PipelineConfig.model_validate(data)


@pytest.fixture
def arrived(tmp_path):
    """Four days of demo activity whose labels land four days later, partitioned by arrival."""
    days = [dt.date(2026, 2, 1) + dt.timedelta(days=i) for i in range(4)]
    frames = [demo_data.activity(day, rows=50) for day in days]
    demo_data.write_labels(tmp_path, days, frames, delay_days=4)
    return tmp_path, days, frames


def test_only_the_partitions_that_have_arrived_are_read(arrived):
    root, days, frames = arrived
    config = _config(uri=str(root / "labels" / "date={date}" / "part.parquet"), layout="date_partitioned")
    found = labels.read_labels(config, days[0], days[-1] + dt.timedelta(days=1), arrived_by=dt.date(2026, 2, 6))
    assert list(found.columns) == labels.COLUMNS
    assert sorted(set(found["batch_key"])) == days[:2], "labels of Feb 3-4 land on Feb 7-8: not arrived yet"
    assert len(found) == 100
    first = frames[0].assign(entity_id=frames[0]["account_id"].astype(str))
    merged = found[found["batch_key"] == days[0]].merge(first, on="entity_id")
    assert (merged["label"] == merged["churned"]).all()
    later = labels.read_labels(config, days[0], days[-1] + dt.timedelta(days=1), arrived_by=dt.date(2026, 2, 10))
    assert len(later) == 200


def test_nothing_arrived_is_an_empty_frame_not_an_error(arrived):
    root, days, _ = arrived
    config = _config(uri=str(root / "labels" / "date={date}" / "part.parquet"), layout="date_partitioned")
    found = labels.read_labels(config, days[0], days[0] + dt.timedelta(days=1), arrived_by=days[0])
    assert found.empty and list(found.columns) == labels.COLUMNS
    missing_file = _config(uri=str(root / "nowhere.parquet"))
    assert labels.read_labels(missing_file, days[0], days[-1], arrived_by=days[-1]).empty


def test_a_corrected_label_counts_once_the_newest_wins(tmp_path):
    rows = pd.DataFrame(
        {"account_id": [7, 7, 8], "snapshot_date": pd.to_datetime(["2026-02-01"] * 3), "churned": [0, 1, 0]}
    )
    rows.to_csv(tmp_path / "labels.csv", index=False)
    config = _config(uri=str(tmp_path / "labels.csv"), format="csv")
    found = labels.read_labels(config, dt.date(2026, 2, 1), dt.date(2026, 2, 2), arrived_by=dt.date(2026, 2, 9))
    assert found.set_index("entity_id")["label"].to_dict() == {"7": 1, "8": 0}


def test_a_sql_labels_source_gets_the_window(tmp_path):
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    engine = sa.create_engine(url)
    table = pd.DataFrame(
        {"customer": [1.0, 2.0, 3.0], "scored_for": ["2026-02-01 10:00", "2026-02-02 09:00", "2026-02-05 00:00"],
         "outcome": [1, 0, 1]}
    )  # fmt: skip
    table.to_sql("outcomes", engine, index=False)
    config = _config(
        sql="SELECT * FROM outcomes WHERE scored_for >= :start AND scored_for < :end",
        conn_id="warehouse", id_column="customer", timestamp_column="scored_for", label_column="outcome",
    )  # fmt: skip
    found = labels.read_labels(
        config, dt.date(2026, 2, 1), dt.date(2026, 2, 3), dt.date(2026, 2, 9), {"warehouse": url}
    )
    assert found["entity_id"].tolist() == ["1", "2"], "float ids that are whole numbers read as the integers"
    assert found["batch_key"].tolist() == [dt.date(2026, 2, 1), dt.date(2026, 2, 2)]


def test_missing_columns_are_named_with_the_fields_to_set(tmp_path):
    pd.DataFrame({"id": [1], "when": ["2026-02-01"], "y": [1]}).to_csv(tmp_path / "l.csv", index=False)
    config = _config(uri=str(tmp_path / "l.csv"), format="csv")
    with pytest.raises(
        SourceError, match=r"columns \['account_id', 'snapshot_date', 'churned'\] are missing.*labels.id_column"
    ):
        labels.read_labels(config, dt.date(2026, 2, 1), dt.date(2026, 2, 2), dt.date(2026, 2, 2))


def test_batch_predictions_join_the_label_of_the_same_entity_and_day():
    predictions = pd.DataFrame(
        {"entity_id": ["1", "1", "2"], "batch_key": [dt.date(2026, 2, 1), dt.date(2026, 2, 2), dt.date(2026, 2, 1)],
         "score": [0.9, 0.1, 0.5]}
    )  # fmt: skip
    arrived = pd.DataFrame(
        {"entity_id": ["1", "1"], "labelled_at": pd.to_datetime(["2026-02-01 08:00", "2026-02-01 09:00"]),
         "batch_key": [dt.date(2026, 2, 1)] * 2, "label": [0, 1]}
    )  # fmt: skip
    joined = labels.join_batch(predictions, arrived)
    assert joined["actual"].tolist()[0] == 1, "two labels on one day: the later timestamp's"
    assert joined["actual"].isna().tolist() == [False, True, True]


def test_a_labels_section_is_validated_like_a_source():
    with pytest.raises(ValueError, match="give exactly one of 'uri' or 'sql'"):
        _config(uri="a.parquet", sql="SELECT 1")
    with pytest.raises(ValueError, match="needs a '\\{date\\}' placeholder"):
        _config(uri="labels.parquet", layout="date_partitioned")
