"""Which arm answers for an entity: pure functions of the pipeline, the sticky value and the rollout.

An entity's bucket is sha256("<pipeline>:<value>") read as a number in [0, 1); it goes to the challenger
when its bucket is below the share. So the same entity always gets the same arm (in every process and
after every restart), and raising the share only moves more entities to the challenger: nobody who
already had it goes back.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

from lifecycle.config.pipeline import PipelineConfig, Rollout

CHAMPION = "champion"
CHALLENGER = "challenger"
SPLITTING = frozenset({"canary", "ab"})  # modes that route entities; shadow scores every row with both


def entity_key(value: Any) -> str:
    """The text an id or sticky value is hashed and logged as: 42, 42.0 and "42" are one entity."""
    if isinstance(value, bool) or value is None:
        raise TypeError(f"an entity value must be a string or a number, got {value!r}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"an entity value must be finite, got {value!r}")
        if value.is_integer():
            return str(int(value))
    if isinstance(value, int | float | str):
        return str(value)
    raise TypeError(f"an entity value must be a string or a number, got {type(value).__name__}")


def bucket(pipeline: str, value: Any) -> float:
    """The entity's place in [0, 1), uniform over entities and stable forever."""
    digest = hashlib.sha256(f"{pipeline}:{entity_key(value)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_arm(pipeline: str, value: Any, mode: str, share: float) -> str:
    if mode not in SPLITTING or share <= 0:
        return CHAMPION
    return CHALLENGER if bucket(pipeline, value) < share else CHAMPION


def assign_arms(pipeline: str, values: Iterable[Any], rollout: Rollout, challenger_ready: bool = True) -> list[str]:
    """The arm of each row; everything goes to the champion while no challenger is loaded."""
    share = rollout.challenger_share if challenger_ready else 0.0
    return [assign_arm(pipeline, value, rollout.mode, share) for value in values]


def sticky_column(config: PipelineConfig) -> str:
    return config.serving.rollout.sticky_by or config.id_column
