"""The gate: a pure decision from metrics, floors, the baseline and the champion comparison."""

from __future__ import annotations

import pytest

from lifecycle.ml.gate import decide

FLOORS = {"roc_auc": 0.65, "pr_auc": 0.25}
GOOD = {"roc_auc": 0.80, "pr_auc": 0.40, "log_loss": 0.30}
BASELINE = {"roc_auc": 0.70, "pr_auc": 0.30, "log_loss": 0.35}


def gate(**changes):
    arguments = {
        "primary": "roc_auc",
        "mode": "enforce",
        "floors": FLOORS,
        "min_improvement": 0.002,
        "challenger": GOOD,
        "baseline": BASELINE,
        "champion": None,
        "comparison": None,
    }
    arguments.update(changes)
    return decide(**arguments)


def check(decision, name):
    (found,) = [c for c in decision["checks"] if c["check"] == name]
    return found


def test_first_model_that_clears_floors_and_baseline_is_promoted():
    decision = gate()
    assert decision["verdict"] == "promote"
    assert decision["action"] == "promote"
    assert decision["reason"] == "no champion yet; floors and baseline passed"
    assert all(c["passed"] for c in decision["checks"])
    assert {c["check"] for c in decision["checks"]} == {"floor:roc_auc", "floor:pr_auc", "baseline"}


def test_floor_miss_rejects_naming_the_metric():
    decision = gate(challenger={**GOOD, "pr_auc": 0.20})
    assert decision["verdict"] == "reject"
    assert decision["action"] == "none (champion kept)"
    assert "pr_auc 0.2000 misses the floor 0.25" in decision["reason"]
    assert "roc_auc" not in decision["reason"]  # only the failed check is in the reason
    assert check(decision, "floor:roc_auc")["passed"] is True


def test_missing_or_nan_floor_metric_fails_the_floor():
    assert gate(challenger={"roc_auc": 0.8})["verdict"] == "reject"
    assert gate(challenger={**GOOD, "pr_auc": float("nan")})["verdict"] == "reject"


def test_lower_is_better_floor():
    decision = gate(floors={"log_loss": 0.32})
    assert check(decision, "floor:log_loss")["passed"] is True
    decision = gate(floors={"log_loss": 0.25})
    assert decision["verdict"] == "reject" and "log_loss" in decision["reason"]


@pytest.mark.parametrize("baseline_auc", [0.80, 0.85])
def test_not_beating_the_baseline_rejects(baseline_auc):
    decision = gate(baseline={**BASELINE, "roc_auc": baseline_auc})
    assert decision["verdict"] == "reject"
    assert "does not beat the baseline" in decision["reason"]


def test_champion_with_significant_improvement_is_replaced():
    decision = gate(
        champion={"roc_auc": 0.75, "pr_auc": 0.35},
        comparison={"improvement": 0.05, "ci_low": 0.01, "ci_high": 0.09},
    )
    assert decision["verdict"] == "promote"
    assert decision["reason"] == "beats the champion"
    assert check(decision, "champion")["passed"] is True


def test_improvement_interval_including_zero_rejects():
    decision = gate(
        champion={"roc_auc": 0.79, "pr_auc": 0.39},
        comparison={"improvement": 0.01, "ci_low": -0.005, "ci_high": 0.03},
    )
    assert decision["verdict"] == "reject"
    assert "not a significant improvement" in decision["reason"]
    assert decision["margin"]["ci_low"] == -0.005


def test_improvement_below_min_improvement_rejects():
    decision = gate(
        min_improvement=0.02,
        champion={"roc_auc": 0.79, "pr_auc": 0.39},
        comparison={"improvement": 0.01, "ci_low": 0.004, "ci_high": 0.02},
    )
    assert decision["verdict"] == "reject"
    assert "needs ≥ 0.02" in decision["reason"]
    assert "above zero" in decision["reason"]  # the interval was fine: the size was not


def test_dry_run_records_the_verdict_but_takes_no_action():
    promote = gate(mode="dry_run")
    assert promote["verdict"] == "promote"
    assert promote["action"] == "none (dry run: would promote)"
    reject = gate(mode="dry_run", challenger={**GOOD, "roc_auc": 0.6})
    assert reject["verdict"] == "reject"
    assert reject["action"] == "none (dry run: would reject)"
    assert "roc_auc 0.6000 misses the floor 0.65" in reject["reason"]


def test_off_promotes_even_a_failing_model_but_keeps_the_checks():
    decision = gate(mode="off", challenger={**GOOD, "roc_auc": 0.5})
    assert decision["verdict"] == "promote" and decision["action"] == "promote"
    assert "gate is off" in decision["reason"]
    assert check(decision, "floor:roc_auc")["passed"] is False


RMSE_BASELINE = {"rmse": 12.0, "mae": 9.0, "r2": 0.3}


def test_lower_is_better_primary_metric():
    better = gate(primary="rmse", floors={"rmse": 11.0}, challenger={"rmse": 10.0}, baseline=RMSE_BASELINE)
    assert better["verdict"] == "promote"
    worse = gate(primary="rmse", floors={}, challenger={"rmse": 13.0}, baseline=RMSE_BASELINE)
    assert worse["verdict"] == "reject"
    assert "does not beat the baseline" in worse["reason"]
    floor_miss = gate(primary="rmse", floors={"rmse": 9.0}, challenger={"rmse": 10.0}, baseline=RMSE_BASELINE)
    assert floor_miss["verdict"] == "reject" and "rmse 10.0000 misses the floor 9.0" in floor_miss["reason"]


def test_lower_is_better_champion_comparison():
    # bootstrap_difference signs the improvement so that > 0 is better whatever the direction
    decision = gate(
        primary="rmse",
        floors={},
        challenger={"rmse": 10.0},
        baseline=RMSE_BASELINE,
        champion={"rmse": 11.0},
        comparison={"improvement": 1.0, "ci_low": 0.4, "ci_high": 1.6},
    )
    assert decision["verdict"] == "promote"


def test_decision_records_inputs():
    decision = gate()
    assert decision["primary_metric"] == "roc_auc" and decision["mode"] == "enforce"
    assert decision["thresholds"] == {"floors": FLOORS, "min_improvement": 0.002}
    assert decision["challenger"] == GOOD and decision["baseline"] == BASELINE


def test_champion_without_comparison_never_promotes():
    try:
        decision = gate(champion={"roc_auc": 0.95, "pr_auc": 0.6}, comparison=None)
    except ValueError:
        return
    assert decision["verdict"] == "reject"


def test_approve_mode_waits_for_a_person_only_when_the_checks_pass():
    from lifecycle.ml.gate import decide

    common = {"primary": "roc_auc", "floors": {"roc_auc": 0.6}, "min_improvement": 0.0, "champion": None,
              "comparison": None, "baseline": {"roc_auc": 0.7}}  # fmt: skip
    assert decide(mode="approve", challenger={"roc_auc": 0.8}, **common)["action"] == "await approval"
    assert decide(mode="approve", challenger={"roc_auc": 0.65}, **common)["action"] == "none (champion kept)"


@pytest.mark.parametrize(
    ("answer", "state", "who"),
    [
        ({"chosen_options": ["Approve"], "responded_by_user": {"id": "1", "name": "ana"}}, "approved", "ana"),
        ({"chosen_options": ["Reject"], "responded_by_user": {"id": "2", "name": "bo"}}, "rejected by a person", "bo"),
        ({"chosen_options": ["Reject"], "timedout": True}, "timed out", ""),
        # What Airflow's HITLOperator really returns at the timeout: the default option, no responder.
        (
            {
                "chosen_options": ["Reject"],
                "params_input": {},
                "responded_at": "2026-01-01T00:00:00+00:00",
                "responded_by_user": None,
            },
            "timed out",
            "",
        ),  # fmt: skip
        (None, "not answered", ""),
    ],
)
def test_the_answer_and_who_gave_it_become_tags(answer, state, who):
    from lifecycle.tasks.retraining import approval_outcome

    tags = approval_outcome(answer)
    assert tags["gate.approval"].startswith(state) and tags["gate.approved_by"] == who


def test_canary_mode_starts_a_canary_when_there_is_a_champion_to_compare_online():
    better = {
        "champion": {**GOOD, "roc_auc": 0.75},
        "comparison": {"improvement": 0.05, "ci_low": 0.01, "ci_high": 0.09},
    }
    assert gate(mode="canary", **better)["action"] == "start canary"
    assert gate(mode="canary")["action"] == "promote"  # no champion yet: nothing to compare against live
    worse = {**better, "comparison": {"improvement": -0.01, "ci_low": -0.02, "ci_high": 0.0}}
    assert gate(mode="canary", **worse)["action"] == "none (champion kept)"


def test_canary_mode_needs_a_rollout_on_the_challenger_alias(make_config):
    from pydantic import ValidationError

    from lifecycle.config.pipeline import ConfigError  # noqa: F401  (the loader wraps this ValidationError per file)

    with pytest.raises(ValidationError, match="gate.mode 'canary' moves the 'challenger' alias"):
        make_config(gate={"mode": "canary"})
    with pytest.raises(ValidationError, match="serving.rollout.challenger: challenger"):
        make_config(gate={"mode": "canary"}, serving={"rollout": {"mode": "canary", "challenger": 3}})
    config = make_config(gate={"mode": "canary"}, serving={"rollout": {"mode": "canary", "challenger": "challenger"}})
    assert config.serving.rollout.challenger_share == 0.1


# --- secondary metrics -------------------------------------------------------------------------------------

CHAMPION = {"roc_auc": 0.78, "pr_auc": 0.38, "log_loss": 0.25}
BETTER = {"comparison": {"improvement": 0.02, "ci_low": 0.005, "ci_high": 0.04}, "champion": CHAMPION}


def test_a_better_ranking_with_destroyed_probabilities_is_refused_on_log_loss():
    """The issue's case: ranking as good or better, log loss 2.7, everyone above the threshold."""
    destroyed = {**GOOD, "log_loss": 2.7}
    decision = gate(challenger=destroyed, secondary={"log_loss": 0.01}, **BETTER)
    assert decision["verdict"] == "reject" and decision["action"] == "none (champion kept)"
    assert check(decision, "champion")["passed"] is True  # the primary metric alone would have promoted it
    detail = "log_loss 2.7000 vs the champion's 0.2500: worse by 2.4500, beyond the tolerance 0.01"
    assert check(decision, "secondary:log_loss") == {"check": "secondary:log_loss", "passed": False, "detail": detail}
    assert decision["reason"] == detail
    assert decision["thresholds"]["secondary"] == {"log_loss": 0.01}
    # without the secondary check the same challenger is promoted: it is what refuses it
    assert gate(challenger=destroyed, **BETTER)["verdict"] == "promote"


@pytest.mark.parametrize(
    ("log_loss", "passed", "words"),
    [(0.2599, True, "worse by 0.0099, within"), (0.26, True, "worse by 0.0100, within"),
     (0.2602, False, "worse by 0.0102, beyond"), (0.20, True, "better by 0.0500, within")],
)  # fmt: skip
def test_the_tolerance_is_absolute_and_inclusive(log_loss, passed, words):
    decision = gate(challenger={**GOOD, "log_loss": log_loss}, secondary={"log_loss": 0.01}, **BETTER)
    assert check(decision, "secondary:log_loss")["passed"] is passed
    assert words in check(decision, "secondary:log_loss")["detail"]
    assert decision["verdict"] == ("promote" if passed else "reject")


def test_a_higher_is_better_secondary_metric_must_not_drop_past_its_tolerance():
    decision = gate(challenger={**GOOD, "pr_auc": 0.35}, secondary={"pr_auc": 0.02}, **BETTER)
    assert decision["verdict"] == "reject"
    assert "pr_auc 0.3500 vs the champion's 0.3800: worse by 0.0300, beyond the tolerance 0.02" in decision["reason"]
    assert gate(challenger={**GOOD, "pr_auc": 0.37}, secondary={"pr_auc": 0.02}, **BETTER)["verdict"] == "promote"


def test_without_a_champion_the_secondary_bar_is_the_baseline():
    ok = gate(secondary={"log_loss": 0.01})  # 0.30 vs the baseline's 0.35
    assert ok["verdict"] == "promote"
    assert check(ok, "secondary:log_loss")["detail"].startswith("log_loss 0.3000 vs the baseline's 0.3500: better")
    worse = gate(challenger={**GOOD, "log_loss": 0.5}, secondary={"log_loss": 0.01})
    assert worse["verdict"] == "reject" and "vs the baseline's 0.3500: worse by 0.1500" in worse["reason"]
    itself = gate(challenger=BASELINE, challenger_is_baseline=True, floors={}, secondary={"log_loss": 0.01})
    assert check(itself, "secondary:log_loss")["passed"] is True
    assert "the challenger is the baseline family itself" in check(itself, "secondary:log_loss")["detail"]


def test_an_unmeasured_secondary_metric_fails_for_the_challenger_and_is_skipped_for_the_reference():
    missing = gate(challenger={"roc_auc": 0.8, "pr_auc": 0.4}, secondary={"log_loss": 0.01}, **BETTER)
    assert missing["verdict"] == "reject" and "log_loss of the challenger could not be measured" in missing["reason"]
    champion_nan = gate(secondary={"log_loss": 0.01}, **{**BETTER, "champion": {**CHAMPION, "log_loss": float("nan")}})
    assert champion_nan["verdict"] == "promote"
    assert "could not be measured, nothing to compare with" in check(champion_nan, "secondary:log_loss")["detail"]


def test_gate_off_keeps_the_failed_secondary_check_but_promotes():
    decision = gate(mode="off", challenger={**GOOD, "log_loss": 2.7}, secondary={"log_loss": 0.01}, **BETTER)
    assert decision["verdict"] == "promote" and check(decision, "secondary:log_loss")["passed"] is False


def test_an_ece_floor_is_a_calibration_ceiling():
    calibrated = {**GOOD, "ece": 0.02, "brier": 0.08}
    assert gate(challenger=calibrated, floors={"ece": 0.05})["verdict"] == "promote"
    decision = gate(challenger={**calibrated, "ece": 0.08}, floors={"ece": 0.05})
    assert decision["verdict"] == "reject" and decision["reason"] == "ece 0.0800 misses the floor 0.05"
    assert check(gate(challenger=calibrated, floors={"ece": 0.05}), "floor:ece")["detail"] == (
        "ece 0.0200 at or below the floor 0.05"
    )
