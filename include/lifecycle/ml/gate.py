"""The evaluation gate: a pure decision from metrics, thresholds and the bootstrap interval."""

from __future__ import annotations

import math
from typing import Any

from lifecycle.config.pipeline import METRICS


def _at_least(value: float, floor: float, higher_is_better: bool) -> bool:
    if value is None or math.isnan(value):
        return False
    return value >= floor if higher_is_better else value <= floor


def decide(
    *,
    primary: str,
    mode: str,
    floors: dict[str, float],
    min_improvement: float,
    challenger: dict[str, float],
    baseline: dict[str, float],
    champion: dict[str, float] | None,
    comparison: dict[str, float] | None,
    challenger_is_baseline: bool = False,
    secondary: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Return the structured decision: every check, the verdict and the reason in words.

    A challenger is promoted only if it clears every floor, beats the baseline, and (when a champion
    exists) improves on it by at least `min_improvement` with the bootstrap interval's low end above zero,
    so that noise on a small holdout cannot promote a model. When model selection made the baseline
    family itself the challenger, the baseline check is met by construction and says so.

    `secondary` ({metric: tolerance}) guards what the primary metric cannot see: each metric may be worse
    than the champion's by at most its tolerance (absolute), so a model with the champion's ranking but
    destroyed probabilities is refused on log loss although its ROC AUC is as good. With no champion yet,
    the bar is the baseline's value: a first champion must not have worse probabilities than the linear model.
    """
    if champion is not None and comparison is None:
        raise ValueError("a champion was given without its paired comparison: the gate cannot decide")
    higher = METRICS[primary][1]
    checks: list[dict[str, Any]] = []
    for name, floor in sorted(floors.items()):
        value = challenger.get(name, float("nan"))
        ok = _at_least(value, floor, METRICS[name][1])
        relation = ("at or above" if METRICS[name][1] else "at or below") if ok else "misses"
        checks.append(
            {
                "check": f"floor:{name}",
                "passed": ok,
                "detail": f"{name} {value:.4f} {relation} the floor {floor}",
            }
        )

    edge = (challenger[primary] - baseline[primary]) * (1 if higher else -1)
    if challenger_is_baseline:
        checks.append(
            {
                "check": "baseline",
                "passed": True,
                "detail": f"the challenger is the baseline family itself ({primary} {baseline[primary]:.4f})",
            }
        )
    else:
        checks.append(
            {
                "check": "baseline",
                "passed": edge > 0,
                "detail": f"{primary} {challenger[primary]:.4f} {'beats' if edge > 0 else 'does not beat'} "
                f"the baseline's {baseline[primary]:.4f}",
            }
        )
    if champion is not None and comparison is not None:
        improvement, low = comparison["improvement"], comparison["ci_low"]
        enough = improvement >= min_improvement
        significant = low > 0
        checks.append(
            {
                "check": "champion",
                "passed": enough and significant,
                "detail": (
                    f"{primary} {challenger[primary]:.4f} vs champion {champion[primary]:.4f}: "
                    f"improvement {improvement:+.4f} (needs ≥ {min_improvement}), "
                    f"CI [{low:+.4f}, {comparison['ci_high']:+.4f}] "
                    + (
                        "above zero"
                        if significant
                        else "below zero: the challenger is worse"
                        if comparison["ci_high"] < 0
                        else "includes zero: not a significant improvement"
                    )
                ),
            }
        )

    checks += _secondary_checks(secondary or {}, challenger, baseline, champion, challenger_is_baseline)

    failed = [c for c in checks if not c["passed"]]
    passed = not failed
    if mode == "off":
        verdict, reason = "promote", "gate is off: every challenger is promoted"
    elif passed:
        verdict = "promote"
        reason = "no champion yet; floors and baseline passed" if champion is None else "beats the champion"
    else:
        verdict, reason = "reject", "; ".join(c["detail"] for c in failed)
    action = {
        ("promote", "canary"): "start canary" if champion is not None else "promote",
        ("reject", "canary"): "none (champion kept)",
        ("promote", "enforce"): "promote",
        ("promote", "off"): "promote",
        ("promote", "dry_run"): "none (dry run: would promote)",
        ("reject", "enforce"): "none (champion kept)",
        ("promote", "approve"): "await approval",
        ("reject", "approve"): "none (champion kept)",
        ("reject", "dry_run"): "none (dry run: would reject)",
    }[(verdict, mode)]
    return {
        "mode": mode,
        "primary_metric": primary,
        "verdict": verdict,
        "action": action,
        "reason": reason,
        "checks": checks,
        "thresholds": {"floors": floors, "min_improvement": min_improvement}
        | ({"secondary": dict(secondary)} if secondary else {}),
        "margin": comparison,
        "challenger": challenger,
        "baseline": baseline,
        "champion": champion,
    }


def _secondary_checks(
    secondary: dict[str, float],
    challenger: dict[str, float],
    baseline: dict[str, float],
    champion: dict[str, float] | None,
    challenger_is_baseline: bool,
) -> list[dict[str, Any]]:
    """One check per secondary metric: not worse than the champion's (else the baseline's) beyond its tolerance."""
    who, reference = ("the champion's", champion) if champion is not None else ("the baseline's", baseline)
    checks = []
    for name, tolerance in sorted(secondary.items()):
        value, bar = challenger.get(name, float("nan")), reference.get(name, float("nan"))
        if champion is None and challenger_is_baseline:
            passed, detail = True, f"{name} {value:.4f}: the challenger is the baseline family itself"
        elif value is None or math.isnan(value):
            passed, detail = False, f"{name} of the challenger could not be measured (vs {who} {bar:.4f})"
        elif bar is None or math.isnan(bar):
            passed, detail = True, f"{name} {value:.4f}: {who} could not be measured, nothing to compare with"
        else:
            worse = (bar - value) if METRICS[name][1] else (value - bar)
            passed = worse <= tolerance + 1e-12
            change = f"worse by {worse:.4f}" if worse > 0 else f"better by {-worse:.4f}" if worse < 0 else "equal"
            detail = (
                f"{name} {value:.4f} vs {who} {bar:.4f}: {change}, "
                f"{'within' if passed else 'beyond'} the tolerance {tolerance}"
            )
        checks.append({"check": f"secondary:{name}", "passed": passed, "detail": detail})
    return checks
