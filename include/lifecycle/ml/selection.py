"""Model selection: the tuned LightGBM and the simple linear family compete, and complexity must pay.

The family with the better primary metric on the validation split is chosen; the simpler one wins ties.
A more complex winner that then fails to beat the simpler family on the holdout is set aside for it,
so the gate never judges (or promotes) a model that loses to the simpler one on data it never saw.
"""

from __future__ import annotations

import math
from typing import Any

# Simplest last: ties and holdout reversals go to the later family.
FAMILIES = ("lightgbm", "linear")
SIMPLEST = FAMILIES[-1]


def _value(metrics: dict[str, float], primary: str, sign: float) -> float:
    value = metrics.get(primary, float("nan"))
    return -math.inf if value is None or math.isnan(value) else sign * value


def select_family(
    primary: str,
    higher_is_better: bool,
    validation: dict[str, dict[str, float]],
    holdout: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """Which family becomes the challenger, why, and by how much (signed so that > 0 favours the choice)."""
    sign = 1.0 if higher_is_better else -1.0
    families = [f for f in FAMILIES if f in validation]
    ranked = sorted(families, key=lambda f: (_value(validation[f], primary, sign), FAMILIES.index(f)), reverse=True)
    by_validation = ranked[0]
    runner_up = ranked[1] if len(ranked) > 1 else None
    validation_margin = (
        _value(validation[by_validation], primary, sign) - _value(validation[runner_up], primary, sign)
        if runner_up
        else None
    )
    selected, holdout_margin = by_validation, None
    if by_validation != SIMPLEST and SIMPLEST in holdout:
        holdout_margin = _value(holdout[by_validation], primary, sign) - _value(holdout[SIMPLEST], primary, sign)
        if not holdout_margin > 0:
            selected = SIMPLEST
    if selected != by_validation:
        reason = (
            f"{by_validation} led on validation by {validation_margin:+.4f} {primary} but did not beat "
            f"{SIMPLEST} on the holdout ({holdout_margin:+.4f}): the simpler {SIMPLEST} model is the challenger"
        )
    elif runner_up is None:
        reason = f"{selected} is the only family"
    else:
        reason = f"{selected} beat {runner_up} on validation by {validation_margin:+.4f} {primary}"
        if holdout_margin is not None:
            reason += f" and {SIMPLEST} on the holdout by {holdout_margin:+.4f}"
        elif validation_margin == 0:
            reason = f"{selected} tied {runner_up} on validation {primary}: the simpler family wins ties"
    return {
        "selected": selected,
        "by_validation": by_validation,
        "validation_margin": validation_margin,
        "holdout_margin": holdout_margin,
        "reason": reason,
        "families": {
            f: {"validation": validation.get(f, {}).get(primary), "holdout": holdout.get(f, {}).get(primary)}
            for f in families
        },
    }
