"""The grid of a sweep: command-line axes → one `isep fit` argument list per trial.

    isep sweep --config configs/walker_med.yaml,configs/hopper_med.yaml --lam 0,0.1,0.3 --seeds 0-4 \\
               --policy_mix stochastic,deterministic --model.guidance 1,2 --trainer.max_epochs 100

Every `--<section>.<field> V` of `isep fit` (section model, data, trainer, evaluation) is an axis
when V holds commas outside brackets (`1,2`), else a fixed override (`[256, 256]` is one value).
Shorthands: `--lam` = `--model.lam`, `--policy_mix` = `--model.policy_mix`, `--tasks` =
`--data.dataset`, `--seeds` = `--seed_everything` (ranges allowed: `0-4`, `0-2,7`), and
`--config` takes several files (one per task, each with its own Appendix C values).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

from isep.errors import ConfigError

SECTIONS = ("model", "data", "trainer", "evaluation")
SHORTHANDS = {"--lam": "model.lam", "--policy_mix": "model.policy_mix", "--tasks": "data.dataset",
              "--seeds": "seed_everything", "--seed": "seed_everything"}


def split_top_level(text: str) -> list[str]:
    """`a,b,[1, 2]` → ['a', 'b', '[1, 2]']: commas inside brackets or quotes do not split."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p != ""]


def parse_seeds(text: str) -> list[str]:
    """`0-4` → 0..4; `0-2,7` → 0, 1, 2, 7."""
    seeds: list[str] = []
    for part in split_top_level(text):
        if "-" in part.lstrip("-"):
            lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
            try:
                lo_i, hi_i = int(lo), int(hi)
            except ValueError as err:
                raise ConfigError(f"--seeds takes integers and ranges like 0-4, got {part!r}") from err
            if hi_i < lo_i:
                raise ConfigError(f"--seeds range {part!r} is empty")
            seeds += [str(s) for s in range(lo_i, hi_i + 1)]
        else:
            try:
                seeds.append(str(int(part)))
            except ValueError as err:
                raise ConfigError(f"--seeds takes integers and ranges like 0-4, got {part!r}") from err
    return seeds


@dataclass
class Grid:
    """Axes (each a list of values) and fixed overrides, as `isep fit` option names."""

    configs: list[str]
    axes: dict[str, list[str]] = field(default_factory=dict)
    fixed: dict[str, str] = field(default_factory=dict)

    def points(self) -> list[dict[str, str]]:
        """Every combination, configs outermost and seeds innermost (a task's runs together)."""
        names = sorted(self.axes, key=lambda n: (n == "seed_everything", n))
        combos = itertools.product(self.configs, *(self.axes[n] for n in names))
        return [{"config": c, **dict(zip(names, values))} for c, *values in combos]

    def fit_args(self, point: dict[str, str]) -> list[str]:
        """The `isep fit` arguments of one grid point (without the sweep's own bookkeeping)."""
        args = ["--config", point["config"]]
        for name, value in {**self.fixed, **{k: v for k, v in point.items() if k != "config"}}.items():
            args += [f"--{name}", value]
        return args


def parse_grid(options: list[str]) -> Grid:
    """Axes and overrides from the sweep's unparsed `--name value` pairs."""
    if len(options) % 2:
        raise ConfigError(f"every sweep option takes a value; got {' '.join(options)!r}")
    configs: list[str] = []
    axes: dict[str, list[str]] = {}
    fixed: dict[str, str] = {}
    for flag, value in zip(options[0::2], options[1::2]):
        if not flag.startswith("--"):
            raise ConfigError(f"expected an option such as --lam or --model.guidance, got {flag!r}")
        if flag == "--config":
            configs += split_top_level(value)
            continue
        name = SHORTHANDS.get(flag, flag[2:])
        if name != "seed_everything" and name.split(".")[0] not in SECTIONS:
            raise ConfigError(
                f"unknown sweep option {flag!r}: an axis is a config field (--model.*, --data.*, --trainer.*, "
                "--evaluation.*) or one of --lam, --seeds, --policy_mix, --tasks, --config"
            )
        values = parse_seeds(value) if name == "seed_everything" else split_top_level(value)
        if name in axes or name in fixed:
            raise ConfigError(f"{flag} is given twice")
        if len(values) > 1:
            axes[name] = values
        elif values:
            fixed[name] = values[0]
    if not configs:
        raise ConfigError("a sweep needs --config (one YAML file per task, e.g. configs/walker_med.yaml)")
    for config in configs:
        if not Path(config).is_file():
            raise ConfigError(f"config file {config} does not exist")
    return Grid([str(Path(c).resolve()) for c in configs], axes, fixed)
