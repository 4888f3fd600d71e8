"""The data contract: derived from a training split, held against later data, stored with the model's run."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from lifecycle.ml import contract
from lifecycle.ml.features import time_split
from lifecycle.ml.validation import DataValidationError
from lifecycle.persistence import storage


@pytest.fixture(scope="module")
def config(make_config):
    return make_config(validation={"min_rows": 100})


@pytest.fixture(scope="module")
def reference(config, make_frame):
    """The champion's contract, from the training split of 20 days x 80 rows of demo data."""
    frame = make_frame(20, 80)
    return contract.derive(time_split(frame, config)["train"], config)


@pytest.fixture(scope="module")
def later(make_frame):
    """Two later days of the same data, as a batch would hold them."""
    return make_frame(2, 300, dt.date(2026, 1, 25))


def _rules(report, rule):
    return [f for f in report["rules"] if f["rule"] == rule]


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (pd.Series([1, 2, 3]), "integer"),
        (pd.Series([1.0, np.nan, 3.0]), "integer"),  # a nullable integer read back as float because of NaN
        (pd.array([1, None, 3], dtype="Int64"), "integer"),
        (pd.Series([1.5, 2.0]), "float"),
        (pd.array([1.5, None], dtype="Float64"), "float"),
        (pd.Series([True, False]), "boolean"),
        (pd.array([True, None], dtype="boolean"), "boolean"),
        (pd.Series(["a", "b", None]), "text"),
        (pd.Series(["a", 1], dtype=object), "text"),  # text mixed with numbers is text
        (pd.Series([1, 2], dtype=object), "integer"),  # numbers held as objects are numbers
        (pd.Series(pd.to_datetime(["2026-01-01"])), "datetime"),
        (pd.Series(pd.to_datetime(["2026-01-01"]).tz_localize("UTC")), "datetime"),
        (pd.Series([np.nan, np.nan]), None),  # no value: no kind, matches any
        (pd.Series([1e12, 3.0]), "integer"),
    ],
)
def test_kinds_follow_the_values_not_only_the_dtype(values, kind):
    assert contract.kind_of(pd.Series(values)) == kind


def test_the_contract_is_json_and_says_what_the_split_looked_like(reference):
    text = json.dumps(reference, allow_nan=False)  # strict JSON: reviewable, loggable
    assert json.loads(text) == reference
    columns = reference["columns"]
    assert columns["support_tickets"]["kind"] == "integer"
    assert columns["sessions_30d"]["kind"] == "integer"  # float64 of whole numbers
    assert columns["monthly_spend"]["kind"] == "float"
    assert columns["device"]["categories"] == ["android", "desktop", "ios", "web"]
    assert columns["churned"]["labels"] == [0, 1]
    assert columns["account_id"]["role"] == "id" and columns["snapshot_date"]["kind"] == "datetime"
    spend = columns["monthly_spend"]
    assert spend["min"] <= spend["q01"] < spend["q99"] <= spend["max"]
    daily = spend["partition_null_share"]
    assert 0 < daily["mean"] <= daily["max"] < 0.2
    assert reference["timestamps"]["column"] == "snapshot_date" and "future" in reference["timestamps"]["rule"]


def test_high_cardinality_categories_are_kept_whole(make_config, make_frame):
    config = make_config(features={"categorical": ["device", "store"], "numeric": ["monthly_spend"], "derived": []})
    frame = make_frame(3, 400)
    frame["store"] = [f"s{i:04d}" for i in range(len(frame))]
    derived = contract.derive(frame, config)
    assert len(derived["columns"]["store"]["categories"]) == len(frame) == 1200


def test_the_same_later_data_passes_without_warnings_about_types(reference, config, later):
    report = contract.check(later, reference, config, where="scoring batch 2026-01-25")
    assert report["success"] and report["failures"] == []
    assert not _rules(report, "type_change") and not _rules(report, "unseen_categories")
    assert set(report["counts"]) == {"unseen", "out_of_range"}
    assert report["counts"]["unseen"]["device"] == 0


def test_a_type_change_fails_naming_column_kinds_and_where(reference, config, later):
    frame = later.assign(support_tickets=later["support_tickets"] + 0.5)
    with pytest.raises(DataValidationError) as caught:
        contract.check(frame, reference, config, where="scoring batch 2026-03-06")
    assert (
        "column 'support_tickets' changed type: integer in the champion's contract, float in scoring batch 2026-03-06"
    ) in str(caught.value)
    (found,) = _rules(caught.value.report["contract"], "type_change")
    assert found["count"] == len(frame) and found["fails"] and found["severity"] == "fail"


def test_whole_floats_are_still_integers(reference, config, later):
    frame = later.assign(support_tickets=later["support_tickets"].astype("float64"))
    frame.loc[frame.index[:3], "support_tickets"] = np.nan
    assert contract.check(frame, reference, config, where="b")["success"]


def test_unseen_values_warn_with_a_count_and_fail_past_the_share_limit(reference, config, later):
    few = later.copy()
    few.loc[few.index[:4], "device"] = "smart_tv"
    report = contract.check(few, reference, config, where="scoring batch x")
    (found,) = _rules(report, "unseen_categories")
    assert found["count"] == 4 and not found["fails"] and found["severity"] == "warn"
    assert report["counts"]["unseen"]["device"] == 4
    assert any("'device'" in w and "smart_tv" in w for w in report["warnings"])
    many = later.copy()
    many.loc[many.index[: len(many) // 10], "device"] = "smart_tv"
    with pytest.raises(DataValidationError, match=r"column 'device' has 60 values the champion's contract never saw"):
        contract.check(many, reference, config, where="scoring batch x")


def test_severity_fail_and_ignore_are_obeyed(reference, make_config, later):
    frame = later.copy()
    frame.loc[frame.index[:1], "device"] = "smart_tv"
    strict = make_config(validation={"min_rows": 100, "contract": {"unseen_categories": "fail"}})
    with pytest.raises(DataValidationError, match="'device' has 1 values"):
        contract.check(frame, reference, strict, where="b")
    lenient = make_config(validation={"min_rows": 100, "contract": {"unseen_categories": "ignore"}})
    report = contract.check(frame, reference, lenient, where="b")
    assert report["success"] and not _rules(report, "unseen_categories") and report["counts"]["unseen"] == {}


def test_far_outside_is_past_the_widened_quantiles_and_the_reference_extremes(reference, config, later):
    spend = reference["columns"]["monthly_spend"]
    low, high = contract._bounds(spend, config.validation.contract.range_margin)
    width = spend["q99"] - spend["q01"]
    assert high == max(spend["q99"] + width, spend["max"]) and low == min(spend["q01"] - width, spend["min"])
    frame = later.copy()
    frame.loc[frame.index[:2], "monthly_spend"] = spend["max"]  # inside the reference: never counted
    frame.loc[frame.index[2:5], "monthly_spend"] = 1e12
    report = contract.check(frame, reference, config, where="b")
    assert report["counts"]["out_of_range"]["monthly_spend"] == 3


def test_expected_to_move_columns_are_counted_but_never_fail(reference, make_config, later):
    config = make_config(validation={"min_rows": 100}, drift={"expected_to_move": ["monthly_spend"]})
    frame = later.assign(monthly_spend=1e12)
    report = contract.check(frame, reference, config, where="b")
    (found,) = _rules(report, "out_of_range")
    assert found["count"] == frame["monthly_spend"].notna().sum() and not found["fails"] and found["expected_to_move"]


def test_without_a_contract_only_the_reference_free_rules_run(config, later):
    """The first training has no champion: nulls per partition and timestamps are still held."""
    frame = later.copy()
    first_day = frame["snapshot_date"] == frame["snapshot_date"].min()
    frame.loc[first_day, "monthly_spend"] = np.nan  # half the frame: one whole partition
    with pytest.raises(DataValidationError) as caught:
        contract.check(frame, None, config, where="training window 2026-01-25..2026-01-27")
    message = str(caught.value)
    assert "column 'monthly_spend' is null in more than validation.max_null_fraction=0.2" in message
    assert "2026-01-25 100.00%" in message and "training window 2026-01-25..2026-01-27" in message
    report = contract.check(later.assign(support_tickets=1.5), None, config, where="w")  # no reference: no kinds
    assert report["success"] and report["contract"] is False


def test_future_timestamps_fail_even_without_an_ingestion_record(config, later):
    frame = later.copy()
    frame.loc[frame.index[:2], "snapshot_date"] = pd.Timestamp("2026-06-01")
    with pytest.raises(DataValidationError, match=r"column 'snapshot_date': 2 in the future of 600 rows"):
        contract.check(frame, None, config, where="w", now=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
    assert contract.check(frame, None, config, where="w", now=dt.datetime(2026, 7, 1))["success"]


def test_an_ingestion_record_brings_empty_partitions_and_timestamps(config, later):
    record = {
        "source": "activity",
        "partitions": {"2026-01-25": 300, "2026-01-26": 300, "2026-01-27": 0},
        "timestamp_violations": {"rows": 600, "future": 0, "other_day": 7, "unreadable": 0, "examples": []},
    }
    with pytest.raises(DataValidationError) as caught:
        contract.check(later, None, config, where="training window w", partitions=record)
    message = str(caught.value)
    assert "1 daily partition(s) of 3 of source 'activity' exist but hold no rows (2026-01-27)" in message
    assert "7 outside their partition's day of 600 rows" in message


def test_a_batch_read_by_row_groups_is_judged_as_a_whole(reference, config, later, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = later.copy()
    frame.loc[frame.index[[0, 350]], "device"] = "smart_tv"  # one in each row group
    frame.loc[frame.index[:40], "monthly_spend"] = 1e12  # 40 of 600 in the first group: over 1% of the whole
    path = tmp_path / "batch.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path, row_group_size=300)
    batch = {"uri": path.as_uri(), "batch_key": "2026-01-25", "partitions": {"2026-01-25": 600},
             "timestamp_violations": {"rows": 600, "future": 0, "other_day": 0, "unreadable": 0, "examples": []}}  # fmt: skip
    with pytest.raises(DataValidationError) as caught:
        contract.check_batch(config, batch, reference)
    whole = caught.value.report["contract"]
    assert whole["counts"]["unseen"]["device"] == 2
    assert whole["counts"]["out_of_range"]["monthly_spend"] == 40
    assert "in scoring batch 2026-01-25" in str(caught.value)
    with pytest.raises(DataValidationError) as direct:
        contract.check(frame, reference, config, where="scoring batch 2026-01-25", partitions=batch)
    assert direct.value.report["contract"]["counts"] == whole["counts"]


def test_recorded_with_the_run_and_loaded_for_the_champion(mlflow_store, config, reference, make_frame):
    import mlflow

    from lifecycle.registry.tracking import champion

    client, experiment = mlflow_store
    assert contract.for_champion(config) is None  # no champion yet
    train = time_split(make_frame(20, 80), config)["train"]
    uri = contract.record(config, "manual__contract", train)
    assert storage.read_json(uri) == reference
    assert contract.record(config, "manual__contract", train) == uri and storage.read_json(uri) == reference
    old = client.create_run(experiment).info.run_id  # a model logged before contracts existed
    new = client.create_run(experiment).info.run_id
    with mlflow.start_run(run_id=new):
        mlflow.log_dict(storage.read_json(uri), contract.ARTIFACT)
    name = config.registered_model_name
    client.create_registered_model(name)
    for run in (old, new):
        client.create_model_version(name, f"runs:/{run}/model", run_id=run)
    client.set_registered_model_alias(name, "champion", "1")
    assert contract.for_champion(config) is None
    client.set_registered_model_alias(name, "champion", "2")
    assert champion(name).run_id == new
    assert contract.for_champion(config) == reference
    assert contract.for_run(old) is None


def test_nulls_that_cluster_by_day_in_the_reference_are_allowed_up_to_its_worst_day(config, make_frame):
    """Real data (weather stations off for a day) has days with many nulls: the champion's worst day is allowed."""
    frame = make_frame(10, 100)
    first_day = frame["snapshot_date"] == frame["snapshot_date"].min()
    frame.loc[frame.index[first_day][:40], "monthly_spend"] = np.nan  # 40% on one training day
    reference = contract.derive(frame, config)
    assert reference["columns"]["monthly_spend"]["partition_null_share"]["max"] >= 0.4
    later = make_frame(1, 100, dt.date(2026, 2, 1))
    later.loc[later.index[:35], "monthly_spend"] = np.nan
    assert contract.check(later, reference, config, where="b")["success"]
    later.loc[later.index[:60], "monthly_spend"] = np.nan
    with pytest.raises(DataValidationError, match=r"max_null_fraction=0.2 and the champion's worst training day"):
        contract.check(later, reference, config, where="b")
