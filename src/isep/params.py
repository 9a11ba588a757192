"""Bounded number types for the options of `isep fit`: jsonargparse checks them when it parses, so a
value out of range stops before anything runs (`--data.batch_size 0`, `--evaluation.episodes 0`),
and `friendly` turns its message into one line: "data.batch_size must be ≥ 1, got 0"."""

from __future__ import annotations

import re

from jsonargparse.typing import (
    ClosedUnitInterval,
    NonNegativeFloat,
    NonNegativeInt,
    OpenUnitInterval,
    PositiveFloat,
    PositiveInt,
    restricted_number_type,
)

HalfOpenUnitInterval = restricted_number_type("HalfOpenUnitInterval", float, [(">=", 0), ("<", 1)])  # λ, dropouts
RateInterval = restricted_number_type("RateInterval", float, [(">", 0), ("<=", 1)])  # the target EMA rate
RULES = {
    "PositiveInt": "be an integer ≥ 1", "NonNegativeInt": "be an integer ≥ 0", "PositiveFloat": "be > 0",
    "NonNegativeFloat": "be ≥ 0", "OpenUnitInterval": "lie in (0, 1)", "ClosedUnitInterval": "lie in [0, 1]",
    "HalfOpenUnitInterval": "lie in [0, 1)", "RateInterval": "lie in (0, 1]",
}
__all__ = ["ClosedUnitInterval", "HalfOpenUnitInterval", "NonNegativeFloat", "NonNegativeInt", "OpenUnitInterval",
           "PositiveFloat", "PositiveInt", "RateInterval", "friendly"]


def friendly(message: str) -> str:
    """A bound violated in jsonargparse's words → "KEY must RULE, got VALUE"; other messages as they are."""
    key = re.search(r'Parser key "([^"]+)"', message)
    broken = re.findall(r"Not of type (\w+): (?:(\S+) )?does not conform to restriction", message)
    if not key or not broken:
        return message
    rule, value = RULES.get(broken[-1][0], broken[-1][0]), broken[-1][1]
    given = re.search(r"Given value: (.+)", message)
    got = value or (given.group(1).strip() if given else "")
    return f"{key.group(1)} must {rule}, got {got}"
