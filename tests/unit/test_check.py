"""`check_pipeline` on tiny frames in tmp_path: each problem is found before a run, and named."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from lifecycle.config.pipeline import PipelineConfig
from lifecycle.devtools import cli
from lifecycle.devtools.check import check_pipeline, day_ranges, default_as_of, render

START = dt.date(2026, 1, 1)
DAYS, ROWS = 10, 20
AS_OF = START + dt.timedelta(days=DAYS)


def write_data(root, *, skip_days=(), events=None, users=None) -> None:
    """DAYS daily partitions of ROWS events each, and a users.csv to join on `id`; hooks break them."""
    rng = np.random.default_rng(0)
    for i in range(DAYS):
        day = START + dt.timedelta(days=i)
        frame = pd.DataFrame(
            {
                "id": np.arange(ROWS),
                "ts": pd.Timestamp(day) + pd.to_timedelta(np.arange(ROWS), unit="min"),
                "amount": rng.gamma(2.0, 10.0, ROWS),
                "visits": rng.integers(0, 10, ROWS),
                "label": np.tile([0, 1], ROWS // 2),
            }
        )
        if events:
            frame = events(frame, i)
        if i in skip_days:
            continue
        path = root / "events" / f"date={day}" / "part.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
    accounts = pd.DataFrame({"id": np.arange(ROWS), "plan": np.where(np.arange(ROWS) % 3, "basic", "pro")})
    (users or (lambda f: f))(accounts).to_csv(root / "users.csv", index=False)


def pipeline(root, **changes) -> PipelineConfig:
    data = {
        "name": "tiny",
        "task": "binary",
        "target": "label",
        "id_column": "id",
        "timestamp_column": "ts",
        "sources": [
            {"name": "events", "uri": f"{root}/events/date={{date}}/part.parquet", "layout": "date_partitioned"},
            {"name": "users", "uri": f"{root}/users.csv", "format": "csv", "join": {"keys": ["id"]}},
        ],
        "features": {
            "numeric": ["amount", "visits"],
            "categorical": ["plan"],
            "derived": [{"name": "per_visit", "expression": "amount / (visits + 1)"}],
        },
        "training": {"window_days": DAYS, "validation_days": 2, "holdout_days": 2, "grid": {"num_leaves": [7]}},
        "validation": {"min_rows": 50},
    }
    for key, value in changes.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    return PipelineConfig.model_validate(data)


def check(config: PipelineConfig, urls: dict[str, str] | None = None) -> dict:
    return check_pipeline(config, AS_OF, None, urls or {}, path="tiny.yaml")


def problems(report: dict, level: str = "error") -> list[dict]:
    return [p for p in report["problems"] if p["level"] == level]


def test_a_good_pipeline_passes_and_reports_what_it_read(tmp_path):
    write_data(tmp_path)
    config = pipeline(tmp_path)
    report = check(config)
    assert report["ok"] and report["problems"] == [], render(report)
    assert report["rows"] == {"total": 200, "days_with_rows": 10, "per_day": {"min": 20, "median": 20.0, "max": 20}}
    assert report["sources"][0]["partitions"] == {"expected": 10, "present": 10, "missing": []}
    assert report["sources"][1]["join"]["unmatched_rows"] == 0
    assert report["target"]["classes"] == {"0": {"rows": 100, "share": 0.5}, "1": {"rows": 100, "share": 0.5}}
    assert [s["rows"] for s in report["splits"].values()] == [120, 40, 40]
    assert default_as_of(config) == AS_OF, "the day after the newest partition"
    text = render(report)
    assert "OK: 0 error(s), 0 warning(s)" in text and "events: date_partitioned" in text


def test_a_missing_column_is_named_with_a_suggestion(tmp_path):
    write_data(tmp_path, events=lambda f, _: f.rename(columns={"visits": "visit"}))
    report = check(pipeline(tmp_path))
    missing = [p for p in problems(report) if p["column"] == "visits"]
    assert missing and "feature 'visits' is in no source (did you mean ['visit']?)" in missing[0]["message"]
    assert missing[0]["field"] == "features.numeric" and missing[0]["file"] == "tiny.yaml"
    derived = [p for p in problems(report) if p["column"] == "per_visit"]
    assert derived and derived[0]["field"] == "features.derived[0]" and "cannot be evaluated" in derived[0]["message"]
    assert "column 'visits'" in render(report) and render(report).endswith("FAILED: 2 error(s), 0 warning(s)")


def test_a_text_column_declared_numeric_is_an_error_with_examples(tmp_path):
    as_text = lambda f, _: f.assign(amount=f["amount"].round(1).astype(str).str.replace(".", ",", regex=False))  # noqa: E731
    write_data(tmp_path, events=as_text)
    report = check(pipeline(tmp_path, features={"derived": []}))
    (error,) = problems(report)
    assert error["column"] == "amount" and error["field"] == "features.numeric"
    assert "listed as numeric but is " in error["message"] and "," in error["message"]


def test_missing_partitions_are_listed_by_day_and_limited(tmp_path):
    write_data(tmp_path, skip_days=(3, 4, 5, 8))
    report = check(pipeline(tmp_path))
    assert report["sources"][0]["partitions"]["missing"] == ["2026-01-04", "2026-01-05", "2026-01-06", "2026-01-09"]
    (error,) = problems(report)
    assert error["source"] == "events"
    assert "4 of 10 daily partitions are missing, more than validation.max_missing_partitions=0" in error["message"]
    assert "2026-01-04..2026-01-06, 2026-01-09" in error["message"]

    allowed = check(pipeline(tmp_path, validation={"max_missing_partitions": 4}))
    assert allowed["ok"] and [p["source"] for p in problems(allowed, "warning")] == ["events"]


def test_non_unique_join_keys_name_the_source(tmp_path):
    write_data(tmp_path, users=lambda f: pd.concat([f, f.head(2)], ignore_index=True))
    report = check(pipeline(tmp_path))
    (error,) = problems(report)
    assert error["source"] == "users" and error["field"] == "join.keys"
    assert "join keys ['id'] are not unique" in error["message"]


def test_keys_that_never_match_are_an_error(tmp_path):
    write_data(tmp_path, users=lambda f: f.assign(id=f["id"] + 1000))
    report = check(pipeline(tmp_path))
    assert any(p["source"] == "users" and "no row matches on ['id']" in p["message"] for p in problems(report))


def test_a_binary_target_with_three_values_is_an_error(tmp_path):
    write_data(tmp_path, events=lambda f, i: f.assign(label=[0, 1, 2, 1] * (ROWS // 4)) if i == 0 else f)
    report = check(pipeline(tmp_path))
    (error,) = problems(report)
    assert error["column"] == "label" and error["field"] == "target"
    assert "needs exactly two values; 'label' has 3: [0, 1, 2]" in error["message"]


def test_a_rare_multiclass_class_is_a_warning_with_counts(tmp_path):
    rare = lambda f, i: f.assign(label=np.where(np.arange(ROWS) < 2, 2, f["label"])) if i == 0 else f  # noqa: E731
    write_data(tmp_path, events=rare)
    report = check(pipeline(tmp_path, task="multiclass"))
    assert report["ok"], render(report)
    assert report["target"]["classes"]["2"] == {"rows": 2, "share": 0.01}
    (warning,) = problems(report, "warning")
    assert warning["column"] == "label" and "class 2 has 2 rows (1.0%), under 2%" in warning["message"]

    two = check(pipeline(tmp_path.parent / "nowhere", task="multiclass"))  # unreadable: the source is named
    assert problems(two)[0]["source"] == "events" and "no partitions" in problems(two)[0]["message"]


def test_ids_repeated_within_a_day_and_too_few_days_are_errors(tmp_path):
    # validation + holdout + 1 fits the 10-day window (parse time refuses one that cannot), but the data's first
    # day, the only training day left, is missing: only the data can tell.
    write_data(tmp_path, skip_days=(0,), events=lambda f, _: f.assign(id=f["id"] // 2))
    report = check(pipeline(tmp_path, training={"validation_days": 4, "holdout_days": 5}))
    messages = {p["column"] or p["field"]: p["message"] for p in problems(report)}
    assert "ids must be unique per ts day" in messages["id"]
    assert "the train split is empty" in messages["training"]


def test_a_sql_source_reads_through_its_connection_or_names_it(tmp_path):
    write_data(tmp_path)
    database = f"sqlite:///{tmp_path / 'warehouse.db'}"
    engine = sa.create_engine(database)
    pd.read_csv(tmp_path / "users.csv").to_sql("users", engine, index=False)
    engine.dispose()
    sources = [
        {"name": "events", "uri": f"{tmp_path}/events/date={{date}}/part.parquet", "layout": "date_partitioned"},
        {"name": "users", "sql": "select * from users", "conn_id": "warehouse", "join": {"keys": ["id"]}},
    ]
    config = pipeline(tmp_path, sources=sources)
    assert check(config, {"warehouse": database})["ok"]
    (error,) = problems(check(config))
    assert error["source"] == "users" and "connection 'warehouse' is not defined" in error["message"]
    assert "AIRFLOW_CONN_WAREHOUSE" in error["message"]


def test_day_ranges():
    assert day_ranges(["2026-01-05", "2026-01-03", "2026-01-04", "2026-01-09"]) == [
        "2026-01-03..2026-01-05",
        "2026-01-09",
    ]


@pytest.fixture
def cli_env(monkeypatch):
    """The CLI fills in the embedded default: keep what it sets inside this test."""
    from lifecycle.config.settings import embedded_environment

    for key, value in embedded_environment().items():
        monkeypatch.setenv(key, os.environ.get(key, value))


def test_cli_check_exit_codes_and_config_errors(tmp_path, cli_env, capsys):
    write_data(tmp_path)
    good = pipeline(tmp_path).model_dump(exclude_defaults=True)
    (tmp_path / "good.yaml").write_text(json.dumps(good))  # JSON is YAML
    assert cli.main(["check", str(tmp_path / "good.yaml"), "--as-of", AS_OF.isoformat()]) == 0
    assert "OK: 0 error(s)" in capsys.readouterr().out

    bad = {**good, "training": {**good["training"], "search": "fast"}}
    (tmp_path / "bad.yaml").write_text(json.dumps(bad))
    assert cli.main(["check", str(tmp_path / "bad.yaml")]) == 1
    out = capsys.readouterr().out
    assert "bad.yaml: field 'training.search'" in out and "'halving' or 'grid'" in out

    broken = {**good, "features": {**good["features"], "numeric": ["amount", "visits", "spend"]}}
    (tmp_path / "broken.yaml").write_text(json.dumps(broken))
    assert cli.main(["check", str(tmp_path / "broken.yaml")]) == 1, "as-of: the day after the newest partition"
    assert "feature 'spend' is in no source" in capsys.readouterr().out


AIRFLOW_LINES = """\
[info] Created dag run. dagrun=<DagRun tiny__retrain @ 2026-02-10 00:00:00+00:00: manual__2026-12-02T17:34:36+00:00, state:running, queued_at: None. run_type: manual>
Traceback (most recent call last):
airflow.sdk.exceptions.AirflowFailException: SourceError: source 'events': no partitions
[info] DagRun Finished: dag_id=tiny__retrain, logical_date=2026-02-10 00:00:00+00:00, run_id=manual__2026-12-02T17:34:36+00:00, run_start_date=2026-02-10, state=failed, run_type=manual,
"""


def test_run_streams_airflow_and_reads_its_run_id_state_and_error(capsys):
    command = [sys.executable, "-c", f"import sys; sys.stdout.write({AIRFLOW_LINES!r}); sys.exit(1)"]
    returncode, run_id, state, error = cli._stream(command, dict(os.environ))
    assert (returncode, run_id, state) == (1, "manual__2026-12-02T17:34:36+00:00", "failed")
    assert error == "airflow.sdk.exceptions.AirflowFailException: SourceError: source 'events': no partitions"
    assert capsys.readouterr().out == AIRFLOW_LINES, "every line passed through"
