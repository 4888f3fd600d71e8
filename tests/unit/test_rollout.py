"""Rollout: which arm an entity gets (a stable hash, the configured share) and the YAML's `serving.rollout`."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import yaml

from lifecycle.config.pipeline import ConfigError, PipelineConfig, Rollout, load_pipeline
from lifecycle.serving.rollout import (
    CHALLENGER,
    CHAMPION,
    assign_arm,
    assign_arms,
    bucket,
    entity_key,
    sticky_column,
)

IDS = [f"account-{i}" for i in range(10_000)]


def challenger_share(mode: str, share: float, ids: list[Any] = IDS, pipeline: str = "demo_churn") -> float:
    return sum(assign_arm(pipeline, i, mode, share) == CHALLENGER for i in ids) / len(ids)


@pytest.mark.parametrize("mode", ["canary", "ab"])
def test_share_zero_routes_nobody_and_share_one_everybody(mode):
    assert challenger_share(mode, 0.0) == 0.0
    assert challenger_share(mode, 1.0) == 1.0


@pytest.mark.parametrize("share", [0.1, 0.3, 0.5])
def test_the_challenger_gets_its_share_of_10000_entities_within_one_and_a_half_points(share):
    assert abs(challenger_share("canary", share) - share) <= 0.015
    numbers = list(range(10_000))  # whole-number ids (like account_id) spread as well
    assert abs(challenger_share("ab", share, numbers) - share) <= 0.015


def test_shadow_and_none_always_answer_with_the_champion():
    assert challenger_share("shadow", 1.0) == 0.0
    assert challenger_share("none", 1.0) == 0.0


def test_an_entity_always_gets_the_same_arm():
    first = [assign_arm("demo_churn", i, "canary", 0.1) for i in IDS]
    assert first == [assign_arm("demo_churn", i, "canary", 0.1) for i in IDS]
    # The hash is sha256 of "<pipeline>:<value>": the same in every process, not Python's salted hash().
    digest = hashlib.sha256(b"demo_churn:account-1").digest()
    assert bucket("demo_churn", "account-1") == int.from_bytes(digest[:8], "big") / 2**64
    assert 0.0 <= min(bucket("p", i) for i in IDS) and max(bucket("p", i) for i in IDS) < 1.0


def test_the_same_id_as_a_number_or_text_is_one_entity():
    assert entity_key(42) == entity_key(42.0) == entity_key("42") == "42"
    assert bucket("p", 42) == bucket("p", "42") == bucket("p", 42.0)
    assert entity_key(4.5) == "4.5"
    for bad in (None, True, [1], {"a": 1}, float("nan")):
        with pytest.raises(TypeError):
            entity_key(bad)


def test_raising_the_share_only_moves_entities_to_the_challenger():
    at_10 = {i for i in IDS if assign_arm("p", i, "canary", 0.1) == CHALLENGER}
    at_30 = {i for i in IDS if assign_arm("p", i, "canary", 0.3) == CHALLENGER}
    assert at_10 < at_30


def test_pipelines_split_independently():
    mine = [assign_arm("churn_a", i, "ab", 0.5) for i in IDS]
    theirs = [assign_arm("churn_b", i, "ab", 0.5) for i in IDS]
    agreement = sum(a == b for a, b in zip(mine, theirs, strict=True)) / len(IDS)
    assert 0.47 < agreement < 0.53  # independent halves agree about half the time


def test_assign_arms_sends_everything_to_the_champion_while_no_challenger_is_loaded():
    rollout = Rollout(mode="ab", challenger=2)
    arms = assign_arms("p", IDS[:1000], rollout)
    assert set(arms) == {CHAMPION, CHALLENGER}
    assert set(assign_arms("p", IDS[:1000], rollout, challenger_ready=False)) == {CHAMPION}


# --- serving.rollout in the YAML ---------------------------------------------------------------------------


def rollout_error(tmp_path, demo_dict, rollout: dict[str, Any]) -> str:
    demo_dict["serving"] = {"rollout": rollout}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(demo_dict))
    with pytest.raises(ConfigError) as info:
        load_pipeline(path)
    assert str(path) in str(info.value)
    return str(info.value)


def test_no_serving_section_means_no_rollout(make_config):
    config = make_config()
    assert config.serving.rollout.mode == "none" and config.serving.rollout.challenger_share == 0.0
    assert sticky_column(config) == config.id_column


def test_canary_and_ab_differ_in_their_default_share(make_config):
    canary = make_config(serving={"rollout": {"mode": "canary", "challenger": 3}})
    ab = make_config(serving={"rollout": {"mode": "ab", "challenger": "candidate"}})
    assert canary.serving.rollout.challenger_share == 0.1
    assert ab.serving.rollout.challenger_share == 0.5
    given = make_config(serving={"rollout": {"mode": "canary", "challenger": 3, "share": 0.25, "sticky_by": "region"}})
    assert given.serving.rollout.challenger_share == 0.25 and sticky_column(given) == "region"


def test_a_challenger_is_a_version_number_or_an_alias(make_config):
    assert make_config(serving={"rollout": {"mode": "shadow", "challenger": 7}}).serving.rollout.challenger == 7
    assert make_config(serving={"rollout": {"mode": "shadow", "challenger": "7"}}).serving.rollout.challenger == 7
    named = make_config(serving={"rollout": {"mode": "shadow", "challenger": "next-best"}})
    assert named.serving.rollout.challenger == "next-best"


@pytest.mark.parametrize(
    ("rollout", "field", "message"),
    [
        ({"mode": "blue_green", "challenger": 2}, "serving.rollout.mode", "Input should be"),
        ({"mode": "canary"}, "serving.rollout", "needs 'challenger'"),
        ({"mode": "canary", "challenger": 2, "share": 1.5}, "serving.rollout.share", "less than or equal to 1"),
        ({"mode": "ab", "challenger": 2, "share": -0.1}, "serving.rollout.share", "greater than or equal to 0"),
        ({"mode": "shadow", "challenger": 2, "share": 0.2}, "serving.rollout", "'share' applies to canary and ab"),
        ({"mode": "canary", "challenger": 0}, "serving.rollout.challenger", "version numbers start at 1"),
        ({"mode": "canary", "challenger": True}, "serving.rollout.challenger", "version number or an alias"),
        ({"mode": "canary", "challenger": "champion"}, "serving.rollout.challenger", "cannot be the champion"),
        ({"mode": "canary", "challenger": "has space"}, "serving.rollout.challenger", "neither a version number"),
        ({"mode": "canary", "challenger": 2, "sticky_by": " "}, "serving.rollout", "'sticky_by' must name a column"),
        ({"mode": "canary", "challenger": 2, "percent": 5}, "serving.rollout.percent", "Extra inputs"),
    ],
)
def test_a_bad_rollout_names_the_field(tmp_path, demo_dict, rollout, field, message):
    error = rollout_error(tmp_path, demo_dict, rollout)
    assert f"field '{field}'" in error and message in error, error


def test_the_target_cannot_be_the_sticky_column(tmp_path, demo_dict):
    error = rollout_error(tmp_path, demo_dict, {"mode": "ab", "challenger": 2, "sticky_by": "churned"})
    assert "serving.rollout.sticky_by" in error and "target" in error


def test_the_demo_pipeline_has_no_rollout(demo_yaml, monkeypatch, tmp_path):
    monkeypatch.setenv("DATA_ROOT", str(tmp_path))
    assert load_pipeline(demo_yaml).serving == PipelineConfig.model_fields["serving"].default
