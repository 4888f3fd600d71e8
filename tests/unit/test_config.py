"""Pipeline config: the demo loads, and every kind of mistake names the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from lifecycle.config.pipeline import (
    ConfigError,
    PipelineConfig,
    check_all,
    expand_env,
    load_all,
    load_pipeline,
    load_pipelines,
    with_training_overrides,
)


def write_yaml(directory: Path, data: dict[str, Any], name: str = "pipeline.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load_error(directory: Path, data: dict[str, Any]) -> tuple[Path, str]:
    path = write_yaml(directory, data)
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    return path, str(info.value)


def test_demo_pipeline_loads(demo_yaml, monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    config = load_pipeline(demo_yaml)
    assert config.name == "demo_churn"
    assert config.task == "binary"
    assert config.target == "churned"
    assert [s.name for s in config.sources] == ["activity", "accounts"]
    assert config.sources[0].layout == "date_partitioned"
    assert config.sources[0].uri == f"{tmp_path}/demo_churn/activity/date={{date}}/part.parquet"
    assert config.sources[1].join is not None and config.sources[1].join.keys == ["account_id"]
    assert config.higher_is_better is True
    assert "monthly_spend" in config.feature_columns and "plan" in config.feature_columns
    assert config.gate.floors == {"roc_auc": 0.65, "pr_auc": 0.25}


def test_demo_dict_round_trips(demo_dict):
    # The fixture the other tests mutate is itself valid, so their failures come from the mutation.
    PipelineConfig.model_validate(demo_dict)


def test_unknown_top_level_field_is_named(tmp_path, demo_dict):
    demo_dict["trainig"] = demo_dict.pop("training")
    path, message = load_error(tmp_path, demo_dict)
    assert str(path) in message
    assert "'trainig'" in message
    assert "Extra inputs are not permitted" in message


def test_unknown_key_inside_gate_is_named(tmp_path, demo_dict):
    demo_dict["gate"]["treshold"] = 0.1
    path, message = load_error(tmp_path, demo_dict)
    assert str(path) in message
    assert "gate.treshold" in message


def test_wrong_type_is_named(tmp_path, demo_dict):
    demo_dict["training"]["window_days"] = "abc"
    path, message = load_error(tmp_path, demo_dict)
    assert str(path) in message
    assert "training.window_days" in message
    assert "integer" in message


def test_missing_target_is_named(tmp_path, demo_dict):
    del demo_dict["target"]
    path, message = load_error(tmp_path, demo_dict)
    assert str(path) in message
    assert "field 'target'" in message
    assert "required" in message.lower()


def test_unknown_metric_is_named(tmp_path, demo_dict):
    demo_dict["training"]["primary_metric"] = "auc"
    path, message = load_error(tmp_path, demo_dict)
    assert str(path) in message
    assert "training.primary_metric" in message
    assert "unknown metric 'auc'" in message


def test_metric_for_another_task_is_rejected(tmp_path, demo_dict):
    demo_dict["training"]["primary_metric"] = "rmse"
    path, message = load_error(tmp_path, demo_dict)
    assert str(path) in message
    assert "training.primary_metric" in message
    assert "'rmse' does not apply to task 'binary'" in message


def test_floor_metric_for_another_task_is_rejected(tmp_path, demo_dict):
    demo_dict["gate"]["floors"]["r2"] = 0.1
    path, message = load_error(tmp_path, demo_dict)
    assert str(path) in message
    assert "gate.floors.r2" in message


def test_unknown_lightgbm_grid_key_is_named(tmp_path, demo_dict):
    demo_dict["training"]["grid"]["num_leafs"] = [7, 15]
    path, message = load_error(tmp_path, demo_dict)
    assert str(path) in message
    assert "training.grid" in message
    assert "'num_leafs'" in message


def test_second_source_needs_join(tmp_path, demo_dict):
    del demo_dict["sources"][1]["join"]
    path, message = load_error(tmp_path, demo_dict)
    assert str(path) in message
    assert "source 'accounts' needs 'join'" in message


def test_date_partitioned_uri_needs_date_placeholder(tmp_path, demo_dict):
    demo_dict["sources"][0]["uri"] = "/data/activity/part.parquet"
    path, message = load_error(tmp_path, demo_dict)
    assert str(path) in message
    assert "sources.0" in message
    assert "{date}" in message


def test_top_level_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_pipeline(path)


def test_yaml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: demo\ntraining: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert str(path) in str(info.value)


def test_a_bad_file_is_reported_by_name_and_field_and_the_good_ones_still_load(tmp_path, demo_dict):
    write_yaml(tmp_path, demo_dict, "a_good.yaml")
    bad = dict(demo_dict, name="other_pipeline")
    bad["training"] = dict(bad["training"], window_days="abc")
    bad_path = write_yaml(tmp_path, bad, "b_bad.yaml")
    configs, errors = load_pipelines(tmp_path)
    assert [c.name for c in configs] == ["demo_churn"]
    assert len(errors) == 1 and str(bad_path) in errors[0] and "training.window_days" in errors[0]
    assert [c.name for c in load_all(tmp_path)] == ["demo_churn"]
    with pytest.raises(ConfigError) as info:
        check_all(tmp_path)
    assert str(bad_path) in str(info.value) and "a_good.yaml" not in str(info.value)


def test_load_all_returns_every_good_pipeline(tmp_path, demo_dict):
    write_yaml(tmp_path, demo_dict, "one.yaml")
    write_yaml(tmp_path, dict(demo_dict, name="two"), "two.yml")
    assert sorted(c.name for c in load_all(tmp_path)) == ["demo_churn", "two"]


def test_duplicate_names_leave_both_files_out_and_name_each(tmp_path, demo_dict):
    write_yaml(tmp_path, demo_dict, "one.yaml")
    write_yaml(tmp_path, demo_dict, "two.yaml")
    write_yaml(tmp_path, dict(demo_dict, name="three"), "three.yaml")
    configs, errors = load_pipelines(tmp_path)
    assert [c.name for c in configs] == ["three"]
    assert len(errors) == 2 and all("'demo_churn' is used by more than one file" in e for e in errors)


def test_expand_env_set_variable(monkeypatch):
    monkeypatch.setenv("LIFECYCLE_TEST_BUCKET", "my-bucket")
    assert expand_env("uri: s3://${LIFECYCLE_TEST_BUCKET}/x") == "uri: s3://my-bucket/x"


def test_expand_env_default_used_only_when_unset(monkeypatch):
    monkeypatch.delenv("LIFECYCLE_TEST_UNSET", raising=False)
    assert expand_env("${LIFECYCLE_TEST_UNSET:-s3://fallback/a}") == "s3://fallback/a"
    monkeypatch.setenv("LIFECYCLE_TEST_UNSET", "given")
    assert expand_env("${LIFECYCLE_TEST_UNSET:-s3://fallback/a}") == "given"


def test_expand_env_unset_without_default_is_an_error(monkeypatch):
    monkeypatch.delenv("LIFECYCLE_TEST_UNSET", raising=False)
    with pytest.raises(ConfigError, match="LIFECYCLE_TEST_UNSET is not set"):
        expand_env("uri: ${LIFECYCLE_TEST_UNSET}/x")


def test_expand_env_leaves_plain_dollar_text_alone():
    assert expand_env("cost: $5 and $HOME") == "cost: $5 and $HOME"


def test_expand_env_empty_but_set_variable_is_set(monkeypatch):
    monkeypatch.setenv("LIFECYCLE_TEST_EMPTY", "")
    assert expand_env("prefix=${LIFECYCLE_TEST_EMPTY}") == "prefix="


def test_unset_variable_in_a_file_names_the_file(tmp_path, demo_dict, monkeypatch):
    monkeypatch.delenv("LIFECYCLE_TEST_UNSET", raising=False)
    demo_dict["sources"][1]["uri"] = "${LIFECYCLE_TEST_UNSET}/accounts.csv"
    path, message = load_error(tmp_path, demo_dict)
    assert str(path) in message
    assert "LIFECYCLE_TEST_UNSET" in message


def test_training_overrides_apply(make_config):
    config = make_config()
    changed = with_training_overrides(config, window_days=30, search="grid", holdout_days=None)
    assert changed.training.window_days == 30
    assert changed.training.search == "grid"
    assert changed.training.holdout_days == config.training.holdout_days  # None means "not given"
    assert config.training.window_days == 35  # the original is untouched


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"window_days": 3}, "training.window_days"),
        ({"search": "random"}, "training.search"),
        ({"primary_metric": "rmse"}, "training.primary_metric"),
        ({"windw_days": 30}, "training.windw_days"),
    ],
)
def test_invalid_training_overrides_name_the_field(make_config, overrides, field):
    with pytest.raises(ConfigError) as info:
        with_training_overrides(make_config(), **overrides)
    assert "demo_churn" in str(info.value)
    assert field in str(info.value)


def test_two_pipelines_on_one_registered_model_are_both_refused(tmp_path, demo_dict):
    write_yaml(tmp_path, dict(demo_dict, name="one", model_name="shared"), "one.yaml")
    write_yaml(tmp_path, dict(demo_dict, name="two"), "two.yaml")
    write_yaml(tmp_path, dict(demo_dict, name="shared"), "three.yaml")
    configs, errors = load_pipelines(tmp_path)
    assert [c.name for c in configs] == ["two"]
    assert len(errors) == 2 and all("field 'model_name': registered model 'shared'" in e for e in errors)
