"""The corruption catalogue, pipeline files: every way a YAML can be wrong, the stage that catches it, the words.

Each case breaks the demo's own pipeline file one way. `parse`: `load_pipeline` refuses it (what the DAG
processor runs: the file's DAGs are left out and the error names the file and the field). `check`: only the data
can tell (a column, a join key, a path, a connection), and the pre-flight check (`make check`, with the
retrain's own readers) names it. Nothing is written either way: no run starts. The totals are printed at the
end of the test session (tests/conftest.py).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
import yaml

from lifecycle.config.pipeline import ConfigError, load_pipeline, load_pipelines
from lifecycle.devtools import demo_data
from lifecycle.devtools.check import check_pipeline

DEMO = Path(__file__).resolve().parents[2] / "include" / "pipelines" / "demo_churn.yaml"
AS_OF = dt.date(2026, 2, 20)


def _demo() -> dict:
    return yaml.safe_load(DEMO.read_text())


def _set(path: str, value):
    """A change to the demo file: set (or, with value DELETE, remove) the dotted path."""

    def change(data: dict) -> dict:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        if value is DELETE:
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
        return data

    return change


DELETE = object()
SQL_SOURCE = {"name": "accounts", "sql": "select * from accounts", "join": {"keys": ["account_id"]}}

# (case id, change to the demo's dict or a text to write instead, the words the error must contain)
PARSE_CASES = [
    ("yaml-syntax", "name: demo_churn\nsources: [\n", ["while parsing"]),
    ("top-level-list", "- name: demo_churn\n", ["expected a mapping at the top level"]),
    ("unknown-top-level-key", _set("trainig", {}), ["field 'trainig'", "Extra inputs are not permitted"]),
    ("missing-name", _set("name", DELETE), ["field 'name'", "Field required"]),
    ("bad-name", _set("name", "Demo Churn"), ["field 'name'", "should match pattern"]),
    ("unknown-task", _set("task", "classification"), ["field 'task'", "'binary', 'multiclass' or 'regression'"]),
    ("missing-target", _set("target", DELETE), ["field 'target'", "Field required"]),
    ("no-sources", _set("sources", []), ["field 'sources'", "at least 1 item"]),
    ("uri-and-sql", _set("sources.0.sql", "select 1"), ["field 'sources.0'", "exactly one of 'uri' or 'sql'"]),
    ("sql-without-conn", _set("sources.1", {k: v for k, v in SQL_SOURCE.items()}), ["needs 'conn_id'"]),
    ("partitions-without-date", _set("sources.0.uri", "/data/activity.parquet"), ["needs a '{date}' placeholder"]),
    ("second-source-without-join", _set("sources.1.join", DELETE), ["source 'accounts' needs 'join'"]),
    ("first-source-with-join", _set("sources.0.join", {"keys": ["account_id"]}), ["the first source is the base"]),
    ("join-without-keys", _set("sources.1.join.keys", []), ["field 'sources.1.join.keys'", "at least 1 item"]),
    ("join-how-outer", _set("sources.1.join.how", "outer"), ["field 'sources.1.join.how'", "'left' or 'inner'"]),
    ("unknown-format", _set("sources.1.format", "excel"), ["field 'sources.1.format'", "'parquet' or 'csv'"]),
    ("no-features", _set("features", {"derived": []}), ["list 'numeric' and/or 'categorical'"]),
    ("numeric-and-categorical", _set("features.categorical", ["device", "plan_change", "region", "plan",
                                                             "signup_channel", "tenure_months"]),
     ["both numeric and categorical", "tenure_months"]),
    ("target-as-feature", _set("features.numeric", ["sessions_30d", "churned"]), ["must not include the target"]),
    ("derived-syntax", _set("features.derived.0.expression", "monthly_spend / (sessions_30d +"),
     ["field 'features.derived.0.expression'", "is not valid"]),
    ("derived-unknown-function", _set("features.derived.0.expression", "mean(monthly_spend)"),
     ["field 'features.derived.0.expression'", "mean() is not one of"]),
    ("derived-method", _set("features.derived.0.expression", "monthly_spend.clip(0)"), ["is not one of"]),
    ("derived-bad-name", _set("features.derived.0.name", "Spend Per Session"),
     ["field 'features.derived.0.name'", "should match pattern"]),
    ("window-below-minimum", _set("training.window_days", 5), ["field 'training.window_days'", "greater than or equal to 7"]),
    ("window-shorter-than-splits", _set("training.window_days", 12), ["training.window_days (12) leaves no"]),
    ("one-cv-fold", _set("training.cv_folds", 1), ["field 'training.cv_folds'", "greater than or equal to 2"]),
    ("unknown-grid-parameter", _set("training.grid.num_leafs", [7]), ["unknown LightGBM parameter 'num_leafs'"]),
    ("empty-grid-values", _set("training.grid.num_leaves", []), ["grid entry 'num_leaves' has no values"]),
    ("empty-grid", _set("training.grid", {}), ["field 'training.grid'", "at least 1 item"]),
    ("unknown-search", _set("training.search", "random"), ["field 'training.search'", "'halving' or 'grid'"]),
    ("unknown-primary-metric", _set("training.primary_metric", "auc"), ["training.primary_metric: unknown metric"]),
    ("metric-of-another-task", _set("training.primary_metric", "rmse"), ["does not apply to task 'binary'"]),
    ("calibration-unknown", _set("training.calibration", "platt"), ["field 'training.calibration'"]),
    ("unknown-gate-mode", _set("gate.mode", "strict"), ["field 'gate.mode'"]),
    ("floor-unknown-metric", _set("gate.floors", {"auc": 0.6}), ["gate.floors.auc: unknown metric 'auc'"]),
    ("floor-minus-infinity", _set("gate.floors", {"roc_auc": float("-inf")}), ["gate.floors.roc_auc", "range"]),
    ("floor-above-one", _set("gate.floors", {"roc_auc": 1.5}), ["gate.floors.roc_auc: 1.5 is outside"]),
    ("zero-resamples", _set("gate.bootstrap.resamples", 0), ["field 'gate.bootstrap.resamples'"]),
    ("confidence-one", _set("gate.bootstrap.confidence", 1.0), ["field 'gate.bootstrap.confidence'"]),
    ("negative-improvement", _set("gate.min_improvement", -0.1), ["field 'gate.min_improvement'"]),
    ("negative-tolerance", _set("gate.secondary", {"log_loss": -0.1}), ["field 'gate.secondary'", "finite number"]),
    ("secondary-unknown-metric", _set("gate.secondary", {"logloss": 0.1}), ["gate.secondary.logloss: unknown metric"]),
    ("canary-without-rollout", _set("gate.mode", "canary"), ["gate.mode 'canary' moves the 'challenger' alias"]),
    ("unknown-expectation", _set("validation.expectations", [{"type": "expect_column_to_be_nice", "kwargs": {}}]),
     ["field 'validation.expectations'", "'expect_column_to_be_nice' is not a Great Expectations expectation type"]),
    ("expectation-bad-kwarg",
     _set("validation.expectations", [{"type": "expect_column_values_to_be_between", "kwargs": {"column": "x",
                                                                                                 "minimum": 0}}]),
     ["unknown argument 'minimum'"]),
    ("expectation-missing-kwarg",
     _set("validation.expectations", [{"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "plan"}}]),
     ["missing required argument 'value_set'"]),
    ("expectation-mostly-above-one",
     _set("validation.expectations", [{"type": "expect_column_values_to_not_be_null",
                                       "kwargs": {"column": "plan", "mostly": 5}}]),
     ["argument 'mostly' must be between 0 and 1"]),
    ("null-fraction-above-one", _set("validation.max_null_fraction", 1.5), ["field 'validation.max_null_fraction'"]),
    ("bad-cron", _set("schedules.retrain", "every day"), ["field 'schedules.retrain'", "not a 5-field cron"]),
    ("threshold-above-one", _set("prediction.threshold", 1.5), ["field 'prediction.threshold'"]),
    ("bad-table-name", _set("prediction.table", "Predictions Table"), ["field 'prediction.table'"]),
    ("js-threshold-above-one", _set("drift.js_threshold", 2), ["field 'drift.js_threshold'"]),
    ("policy-needs-more-than-window", _set("drift.policy", {"window": 2, "min_drifted": 3}),
     ["min_drifted (3) cannot exceed window (2)"]),
    ("model-name-with-slash", _set("model_name", "churn/v2"), ["field 'model_name'", "should match pattern"]),
    ("rollout-without-challenger", _set("serving", {"rollout": {"mode": "canary"}}), ["needs 'challenger'"]),
    ("rollout-sticky-by-target", _set("serving", {"rollout": {"mode": "ab", "challenger": 2, "sticky_by": "churned"}}),
     ["sticky_by: the target is not known"]),
    ("undefined-environment-variable", _set("sources.1.uri", "${LIFECYCLE_NOT_SET_ANYWHERE}/a.csv"),
     ["environment variable LIFECYCLE_NOT_SET_ANYWHERE is not set"]),
    ("labels-uri-and-sql", _set("labels.sql", "select 1"), ["field 'labels'", "exactly one of 'uri' or 'sql'"]),
    ("performance-metric-of-another-task", _set("performance.policy.metric", "mae"),
     ["performance.policy.metric: metric 'mae' does not apply"]),
    ("access-builtin-role", _set("access", {"approvers": ["Admin"]}), ["one of Airflow's built-in roles"]),
]  # fmt: skip


def _write(tmp_path: Path, case) -> Path:
    path = tmp_path / "broken.yaml"
    if isinstance(case, str):
        path.write_text(case)
    else:
        path.write_text(yaml.safe_dump(case(_demo()), sort_keys=False).replace("${DATA_ROOT}", "/data"))
    return path


@pytest.mark.parametrize(("change", "words"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES])
def test_a_broken_file_is_refused_at_parse_time_naming_file_and_field(change, words, tmp_path, record_property):
    path = _write(tmp_path, change)
    with pytest.raises(ConfigError) as caught:
        load_pipeline(path)
    message = str(caught.value)
    assert message.startswith(f"{path}:"), message
    for word in words:
        assert word in message, message
    record_property("catalogue", "pipeline file: parse")


def test_two_files_fighting_over_one_name_or_model_are_both_named(tmp_path, record_property):
    demo = _demo()
    for name in ("a", "b"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(demo).replace("${DATA_ROOT}", "/data"))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**demo, "name": "other", "model_name": "demo_churn"}))
    configs, errors = load_pipelines(tmp_path)
    assert configs == []
    assert any("a.yaml: field 'name': pipeline name 'demo_churn' is used by more than one file" in e for e in errors)
    assert any(
        "c.yaml: field 'model_name': registered model 'demo_churn' is used by more than one" in e for e in errors
    )
    record_property("catalogue", "pipeline file: parse")
    record_property("catalogue_extra", 1)  # two cases in one test: a shared name and a shared model


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("catalogue") / "demo_churn"
    demo_data.write(root, AS_OF - dt.timedelta(days=40), AS_OF, rows_per_day=60, label_delay_days=None)
    return root


def _good(root: Path) -> dict:
    data = _demo()
    data["sources"][0]["uri"] = str(root / "activity" / "date={date}" / "part.parquet")
    data["sources"][1]["uri"] = str(root / "accounts.csv")
    data["labels"]["uri"] = str(root / "labels" / "date={date}" / "part.parquet")
    data["validation"]["min_rows"] = 100
    return data


CHECK_CASES = [
    ("source-path-missing", lambda d, r: _set("sources.1.uri", str(r / "nowhere.csv"))(d),
     ["accounts", "does not exist"]),
    ("partitions-missing-everywhere", lambda d, r: _set("sources.0.uri", str(r / "gone" / "date={date}" / "p.parquet"))(d),
     ["activity", "no partitions"]),
    ("feature-absent", lambda d, r: _set("features.numeric", [*d["features"]["numeric"], "lifetime_value"])(d),
     ["lifetime_value"]),
    ("categorical-absent", lambda d, r: _set("features.categorical", [*d["features"]["categorical"], "country"])(d),
     ["country"]),
    ("join-key-absent", lambda d, r: _set("sources.1.join.keys", ["customer_id"])(d), ["customer_id"]),
    ("derived-unknown-column", lambda d, r: _set("features.derived.0.expression", "revenue / (sessions_30d + 1)")(d),
     ["revenue"]),
    ("target-absent", lambda d, r: _set("target", "cancelled")(d), ["cancelled"]),
    ("timestamp-absent", lambda d, r: _set("timestamp_column", "event_time")(d), ["event_time"]),
    ("id-absent", lambda d, r: _set("id_column", "customer")(d), ["customer"]),
    ("connection-undefined", lambda d, r: _set("sources.1", {**SQL_SOURCE, "conn_id": "warehouse"})(d),
     ["connection 'warehouse' is not defined"]),
    ("numeric-feature-is-text", lambda d, r: _set("features.numeric", [*d["features"]["numeric"], "device"])(d)
     | {"features": {**d["features"], "categorical": [c for c in d["features"]["categorical"] if c != "device"]}},
     ["device"]),
]  # fmt: skip


@pytest.mark.parametrize(("change", "words"), [c[1:] for c in CHECK_CASES], ids=[c[0] for c in CHECK_CASES])
def test_what_only_the_data_can_tell_is_named_by_the_pre_flight_check(change, words, data_root, record_property):
    from lifecycle.config.pipeline import PipelineConfig

    config = PipelineConfig.model_validate(change(_good(data_root), data_root))
    report = check_pipeline(config, AS_OF, None, {}, path="broken.yaml")
    errors = [p for p in report["problems"] if p["level"] == "error"]
    assert errors, report["problems"]
    text = " | ".join(
        f"{p.get('source') or ''} {p.get('column') or ''} {p.get('field') or ''} {p['message']}" for p in errors
    )
    for word in words:
        assert re.search(re.escape(word), text), text
    record_property("catalogue", "pipeline file: check")


def test_the_good_file_passes_both_stages(data_root):
    from lifecycle.config.pipeline import PipelineConfig

    report = check_pipeline(PipelineConfig.model_validate(_good(data_root)), AS_OF, None, {})
    assert report["ok"], report["problems"]
