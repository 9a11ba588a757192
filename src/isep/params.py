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


# What isep trains in, whatever else Lightning's Trainer lists (`isep.precision` refuses the rest).
CHOICES = {"trainer.precision": ["32-true", "bf16-mixed"]}


def friendly(message: str) -> str:
    """jsonargparse's message about one key, in one line: a bound violated → "KEY must RULE, got
    VALUE"; a value of the wrong type → "KEY must be a number (RULE), got VALUE"; a value outside a
    set of choices → "KEY must be one of A, B, got VALUE". Other messages as they are."""
    key = re.search(r'Parser key "([^"]+)"', message)
    given = re.search(r"(?:Given|Got) value: (.+)", message) or re.search(r"with base \d+: '(.*)'", message)
    got = given.group(1).strip() if given else ""
    if not key:
        return message
    key = key.group(1)
    broken = re.findall(r"Not of type (\w+): (?:(\S+) )?does not conform to restriction", message)
    if broken:
        return f"{key} must {RULES.get(broken[-1][0], broken[-1][0])}, got {broken[-1][1] or got}"
    not_number = re.search(r"Not of type (\w+): (?:could not convert|invalid literal)", message)
    if not_number:
        return f"{key} must {RULES.get(not_number.group(1), 'be a number')}, got {got!r}"
    choices = CHOICES.get(key) or [c.strip(" '") for group in re.findall(r"typing\.Literal\[([^\]]+)\]", message)
                                   for c in group.split(",")]
    if choices and "Literal" in message:
        return f"{key} must be one of {', '.join(dict.fromkeys(choices))}, got {got}"
    line = " ".join(part.strip() for part in message.splitlines())
    return _class_problem(key, line) or line


def _class_problem(key: str, message: str) -> str | None:
    """A class-typed option (`--trainer.logger`, `--trainer.callbacks`): what is wrong with the class
    given, in one line, or None."""
    given = re.search(r"Problem with given class_path '([\w.]+)': (.+?)(?: - |$)", message)
    if given:
        name, problem = given.group(1).rsplit(".", 1)[-1], given.group(2)
        missing = re.search(r"the following arguments are required: ([\w, ]+)", problem)
        if missing:
            args = [a.strip() for a in missing.group(1).split(",")]
            return f"{key} {name} needs {', '.join(args)}: add " + " ".join(f"--{key}.{a} VALUE" for a in args)
        unknown = re.search(r"Option '(\w+)' is not accepted", problem)
        if unknown:
            return (f"{key} {name} has no option {unknown.group(1)!r}; its options: "
                    f"`isep fit --{key}.help {name}`")
        return f"{key} {name}: {problem}"
    path = re.search(r"Expected a dot import path string: (\S+)", message) or re.search(
        r"Expected a path but (\S+) either not accessible", message)
    if path:
        return (f"{key}: no class {path.group(1)!r}; give a class name Lightning knows (e.g. TensorBoardLogger, "
                "CSVLogger, WandbLogger) or a full import path (package.module.Class)")
    return None
