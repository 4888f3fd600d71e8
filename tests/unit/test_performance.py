"""The performance policy: which signal it reads per batch, when it fires, and what it says."""

from __future__ import annotations

import datetime as dt

import pytest

from lifecycle.config.pipeline import PipelineConfig, load_pipeline
from lifecycle.ml import performance_tracking

DEMO = "include/pipelines/demo_churn.yaml"


@pytest.fixture
def config() -> PipelineConfig:
    """The demo pipeline, its policy watching the primary metric (ROC AUC)."""
    data = load_pipeline(DEMO).model_dump()
    data["performance"]["policy"]["metric"] = None
    return PipelineConfig.model_validate(data)


def _row(day: int, kind: str, value: float, reference: float = 0.80, metric: str = "roc_auc") -> dict:
    return {"batch_key": dt.date(2026, 3, day), "model_version": "1", "metric": metric, "kind": kind,
            "value": value, "reference": reference, "rows": 1000}  # fmt: skip


def test_the_realised_value_wins_over_the_estimate_when_labels_are_in(config):
    stored = [_row(1, "estimated", 0.70), _row(1, "realised", 0.79), _row(2, "estimated", 0.72)]
    found = performance_tracking.signals(config, stored)
    assert [(s["batch_key"], s["signal"], round(s["drop"], 2)) for s in found] == [
        ("2026-03-01", "realised", 0.01),
        ("2026-03-02", "estimated", 0.08),
    ]


def test_fires_on_estimates_before_any_label_arrives_and_names_the_signal(config):
    stored = [_row(1, "realised", 0.80), _row(2, "estimated", 0.71), _row(3, "estimated", 0.70)]
    decision = performance_tracking.decide_retrain(config, "2026-03-03", stored, days_since_request=None)
    assert decision["retrain"] is True and decision["signal"] == "estimated"
    assert decision["batch_key"] == "2026-03-03"
    assert "estimated performance fell past 0.05 for 2 batches" in decision["reason"]
    assert "2026-03-03 estimated roc_auc 0.7000 vs holdout 0.8000" in decision["reason"]


def test_one_bad_batch_is_not_enough(config):
    stored = [_row(1, "realised", 0.80), _row(2, "estimated", 0.70)]
    decision = performance_tracking.decide_retrain(config, "2026-03-02", stored, days_since_request=None)
    assert decision["retrain"] is False and "not every one of the last 2 batches" in decision["reason"]


def test_the_drift_policys_cool_down_is_shared(config):
    stored = [_row(2, "realised", 0.70), _row(3, "realised", 0.69)]
    decision = performance_tracking.decide_retrain(config, "2026-03-03", stored, days_since_request=2)
    assert decision["retrain"] is False and "inside the 7-day cool-down" in decision["reason"]
    assert (
        performance_tracking.decide_retrain(config, "2026-03-03", stored, days_since_request=8)["signal"] == "realised"
    )


def test_signals_the_yaml_leaves_out_are_ignored(config):
    data = config.model_dump()
    data["performance"]["policy"]["signals"] = ["realised"]
    realised_only = PipelineConfig.model_validate(data)
    stored = [_row(2, "estimated", 0.60), _row(3, "estimated", 0.60)]
    decision = performance_tracking.decide_retrain(realised_only, "2026-03-03", stored, days_since_request=None)
    assert decision["retrain"] is False and "0 batch(es)" in decision["reason"]


def test_errors_in_target_units_drop_relative_to_the_holdout():
    assert performance_tracking._drop("rmse", 12.0, 10.0) == pytest.approx(0.2)
    assert performance_tracking._drop("log_loss", 0.40, 0.30) == pytest.approx(0.10)
    assert performance_tracking._drop("roc_auc", 0.75, 0.80) == pytest.approx(0.05)


def test_batches_after_the_as_of_day_are_not_read(config):
    stored = [_row(2, "estimated", 0.70), _row(3, "estimated", 0.70), _row(4, "estimated", 0.80)]
    assert performance_tracking.decide_retrain(config, "2026-03-03", stored, None)["retrain"] is True
    assert performance_tracking.decide_retrain(config, "2026-03-04", stored, None)["retrain"] is False


def test_the_policy_watches_the_metric_the_yaml_names():
    demo = load_pipeline(DEMO)
    assert performance_tracking.watched_metric(demo) == "accuracy"
    stored = [_row(2, "estimated", 0.70), _row(3, "estimated", 0.70), _row(2, "estimated", 0.89, 0.89, "accuracy"),
              _row(3, "estimated", 0.78, 0.89, "accuracy")]  # fmt: skip
    decision = performance_tracking.decide_retrain(demo, "2026-03-03", stored, None)
    assert decision["retrain"] is False, "ROC AUC fell, but accuracy is what the demo watches: one batch of it fell"
    assert "2026-03-03 estimated accuracy 0.7800" in decision["reason"]
    data = demo.model_dump()
    data["performance"]["policy"]["metric"] = "rmse"
    with pytest.raises(
        ValueError, match="performance.policy.metric: metric 'rmse' does not apply to task 'binary'"
    ):
        PipelineConfig.model_validate(data)
