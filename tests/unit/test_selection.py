"""Model selection: the tuned family must pay for its complexity on validation and on the holdout."""

from __future__ import annotations

import math

from lifecycle.ml.gate import decide
from lifecycle.ml.selection import select_family


def _auc(lightgbm: float, linear: float) -> dict[str, dict[str, float]]:
    return {"lightgbm": {"roc_auc": lightgbm}, "linear": {"roc_auc": linear}}


def test_lightgbm_wins_when_it_leads_on_validation_and_the_holdout():
    chosen = select_family("roc_auc", True, _auc(0.80, 0.75), _auc(0.79, 0.74))
    assert chosen["selected"] == "lightgbm"
    assert math.isclose(chosen["validation_margin"], 0.05) and math.isclose(chosen["holdout_margin"], 0.05)
    assert "beat linear on validation by +0.0500" in chosen["reason"]


def test_linear_wins_on_validation():
    chosen = select_family("roc_auc", True, _auc(0.70, 0.75), _auc(0.79, 0.74))
    assert chosen["selected"] == "linear" and chosen["holdout_margin"] is None


def test_a_complex_winner_that_loses_to_the_simpler_family_on_the_holdout_is_set_aside():
    """As seen on a real 330k-row dataset: tuned LightGBM led on validation, lost on the holdout."""
    chosen = select_family("roc_auc", True, _auc(0.80, 0.78), _auc(0.70, 0.72))
    assert chosen["selected"] == "linear" and chosen["by_validation"] == "lightgbm"
    assert "did not beat linear on the holdout (-0.0200)" in chosen["reason"]


def test_ties_go_to_the_simpler_family_on_validation_and_on_the_holdout():
    assert select_family("roc_auc", True, _auc(0.75, 0.75), _auc(0.8, 0.7))["selected"] == "linear"
    assert select_family("roc_auc", True, _auc(0.80, 0.75), _auc(0.72, 0.72))["selected"] == "linear"


def test_lower_is_better_metrics_and_undefined_values():
    rmse = {"lightgbm": {"rmse": 1.0}, "linear": {"rmse": 2.0}}
    assert select_family("rmse", False, rmse, rmse)["selected"] == "lightgbm"
    undefined = {"lightgbm": {"roc_auc": float("nan")}, "linear": {"roc_auc": 0.6}}
    assert select_family("roc_auc", True, undefined, undefined)["selected"] == "linear"


def test_the_gate_promotes_a_selected_baseline_that_clears_the_floors():
    decision = decide(
        primary="roc_auc", mode="enforce", floors={"roc_auc": 0.6}, min_improvement=0.0,
        challenger={"roc_auc": 0.72}, baseline={"roc_auc": 0.72}, champion=None, comparison=None,
        challenger_is_baseline=True,
    )  # fmt: skip
    assert decision["verdict"] == "promote"
    assert next(c for c in decision["checks"] if c["check"] == "baseline")["detail"].startswith(
        "the challenger is the baseline family itself"
    )
    below = decide(
        primary="roc_auc", mode="enforce", floors={"roc_auc": 0.8}, min_improvement=0.0,
        challenger={"roc_auc": 0.72}, baseline={"roc_auc": 0.72}, champion=None, comparison=None,
        challenger_is_baseline=True,
    )  # fmt: skip
    assert below["verdict"] == "reject" and "misses the floor 0.8" in below["reason"]
