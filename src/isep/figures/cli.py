"""`isep figure NAME`: train what a figure needs (an `isep sweep`, resumable), then draw it.

    isep figure fig2                                   # configs/figures/fig2.yaml → outputs/figures/fig2.png
    isep figure fig5 --spec configs/figures/fig5_local.yaml --trainer.max_epochs 20
    isep figure fig7 --no_train                        # draw from the runs already in MLflow

A figure config holds `sweep:` (the options of `isep sweep`: name, config, lam, seeds, ...) and
`figure:` (what to draw). Options after NAME that `isep figure` does not know go to the sweep and
override the config's. The numbers behind each figure go to `<out>/<NAME>.json`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from isep.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
FIGURES = ("fig2", "fig5", "fig6", "fig7")


def find_file(path: str | Path) -> Path:
    """A path as given, else relative to the project root (configs/… from any working directory)."""
    for candidate in (Path(path), REPO / path):
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(f"{path} does not exist (looked in the working directory and in {REPO})")


def sweep_argv(spec: dict, extra: list[str]) -> tuple[list[str], str]:
    """`isep sweep` options from a figure config's `sweep:` section, `extra` overriding; and the sweep's name."""
    options: dict[str, str] = {}
    for key, value in spec.items():
        values = value if isinstance(value, list) else [value]
        if key == "config":
            values = [find_file(v) for v in values]
        options[f"--{key}"] = ",".join(str(v) for v in values)
    flags = sweep_flags()
    tokens = list(extra)
    while tokens:
        key = tokens.pop(0)
        if key in flags:
            options[key] = None
        elif not tokens or not key.startswith("--"):
            raise ConfigError(f"sweep option {key!r} needs a value (options other than {', '.join(sorted(flags))} "
                              f"take one); got {' '.join(extra)!r}")
        else:
            options[key] = tokens.pop(0)
    if "--name" not in options:
        raise ConfigError("a figure config's sweep needs a name (its MLflow experiment)")
    argv = [x for key, value in options.items() for x in ([key] if value is None else [key, value])]
    return argv, options["--name"]


def sweep_flags() -> set[str]:
    """The `isep sweep` options that take no value (`--dry_run`, `--retry_failed`, ...)."""
    from isep.sweeps.runner import build_parser

    return {opt for action in build_parser()._actions if action.nargs == 0 for opt in action.option_strings
            if opt.startswith("--") and opt != "--help"}


def draw(name: str, experiment: str, spec: dict, uri: str, out: Path) -> tuple[Path, dict]:
    """Draw figure `name` from the runs of `experiment` (read and summarised as `isep compare`
    does); returns the PNG and its numbers."""
    from isep.results.cli import load_study

    path = out / f"{name}.png"
    study = load_study([experiment], uri)
    if name == "fig5":
        from isep.figures.scores import figure5

        return path, figure5(study, path)
    if name == "fig7":
        from isep.figures.scores import figure7

        try:
            return path, figure7(study, path)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    from isep.figures.common import load_policy, run_dirs

    folders = run_dirs(study)
    if name == "fig2":
        from isep.figures.danger_zone import draw as draw_fig2, policy_samples

        samples = {key.lam: policy_samples(load_policy(folders[key][0]), spec.get("samples", 2000))
                   for key in folders}
        return path, {f"λ={lam:g}": shares for lam, shares in draw_fig2(samples, path).items()}
    if name == "fig6":
        return path, _draw_fig6(folders, spec, path)
    raise ConfigError(f"unknown figure {name!r}; choose one of {', '.join(FIGURES)}")


def _draw_fig6(folders: dict, spec: dict, path: Path) -> dict:
    import numpy as np

    from isep.data.datamodule import D4RLDataModule
    from isep.figures.common import load_policy
    from isep.figures.tsne import draw as draw_tsne, policy_actions

    tasks = sorted({k.task for k in folders})
    task = spec.get("task") or tasks[0]
    lam = float(spec.get("lam", max(k.lam for k in folders if k.task == task)))
    chosen = {}
    for key in folders:
        if key.task == task and key.policy_mix == "stochastic" and key.lam in (0.0, lam):
            chosen[f"λ = {key.lam:g}" + (" (IQL/CFGRL)" if key.lam == 0 else " (ISEP)")] = load_policy(folders[key][0])
    if len(chosen) < 2:
        raise ConfigError(f"Figure 6 needs a λ = 0 run and a λ = {lam:g} run of {task} in the sweep")
    data = D4RLDataModule(dataset=task).load_transitions()
    rng = np.random.default_rng(spec.get("seed", 0))
    rows = rng.choice(len(data), size=min(int(spec.get("states", 500)), len(data)), replace=False)
    actions = policy_actions(chosen, data.observations[rows])
    return draw_tsne(data.actions[rows], actions, path, f"{task}: actions in {len(rows)} dataset states (t-SNE)")


def figure_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="isep figure", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=FIGURES)
    parser.add_argument("--spec", help="the figure's config (default: configs/figures/<NAME>.yaml)")
    parser.add_argument("--out", default="outputs/figures", help="folder for <NAME>.png and <NAME>.json")
    parser.add_argument("--no_train", action="store_true", help="draw from the runs in MLflow; run no sweep")
    parser.add_argument("--mlflow.tracking_uri", dest="tracking_uri", help="MLflow store (default as `isep fit`)")
    args, extra = parser.parse_known_args(argv)
    import yaml

    from isep.callbacks.tracking import tracking_uri
    from isep.sweeps.records import absolute_uri

    config = yaml.safe_load(find_file(args.spec or f"configs/figures/{args.name}.yaml").read_text()) or {}
    sweep, name = sweep_argv(config.get("sweep") or {}, extra)
    uri = absolute_uri(tracking_uri(args.tracking_uri))
    if not args.no_train:
        from isep.sweeps.runner import sweep_main

        code = sweep_main([*sweep, "--mlflow.tracking_uri", uri])
        if code != 0 or "--dry_run" in sweep:
            return code
    out = Path(args.out)
    path, numbers = draw(args.name, name, config.get("figure") or {}, uri, out)
    (out / f"{args.name}.json").write_text(json.dumps(numbers, indent=2))
    print(json.dumps(numbers, indent=2))
    print(f"wrote {path} and {out / f'{args.name}.json'}")
    return 0
