"""The `isep` command: LightningCLI's fit/validate/test for training, and the other commands.

    isep fit --config configs/walker_med.yaml            # train (every field: --model.*, --data.*, ...)
    isep --help                                          # every command, one line each

Commands other than fit/validate/test never import Lightning (≈ 4.5 s) unless they train. Every
error a user can cause ends in one line `isep: error: …` that says what to do (exit 2), never a
traceback, and leaves the disk as it was.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Sequence

from isep.errors import ISEPError

# `isep <command>`: (module:function, one line of help); fit/validate/test are LightningCLI's.
TRAINING = {
    "fit": "train a run (or a stack of runs) on a dataset: isep fit --config configs/<task>.yaml",
    "validate": "the losses of a trained run on fixed validation batches (--ckpt_path FILE | last)",
    "test": "the same on fixed test batches (--ckpt_path FILE | last)",
}
COMMANDS = {
    "evaluate": ("isep.checkpoint_eval:evaluate_main", "roll out a checkpoint's policy, at several guidance weights"),
    "compare": ("isep.results.cli:compare_main", "the runs in MLflow as tables and figures (the paper's layout)"),
    "sweep": ("isep.sweeps.runner:sweep_main", "a grid of runs (λ, seeds, tasks, ...) on Ray Tune, resumable"),
    "figure": ("isep.figures.cli:figure_main", "the paper's Figures 2, 5, 6 and 7 from their sweeps"),
    "data": ("isep.data.commands:data_main", "the 14 tasks, the local Minari store, D4RL imports"),
    "bench": ("isep.bench.throughput:main", "updates/s against a CORL-style step, with and without Lightning"),
    "demo": ("isep.demo:demo_main", "Figure 1's toy bandit: Gaussian, CFGRL and ISEP-FM (no download)"),
}


def overview() -> str:
    """`isep --help`: every command with one line."""
    lines = ["usage: isep COMMAND [options]   (isep COMMAND --help for a command's options)", "",
             "ISEP / ISEP-FM offline RL (PyTorch Lightning).", "", "commands:"]
    rows = list(TRAINING.items()) + [(name, text) for name, (_, text) in COMMANDS.items()]
    lines += [f"  {name:<10} {text}" for name, text in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `isep` console script."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if not argv or argv[0] in ("-h", "--help"):
        print(overview())
        return 0
    command = argv[0]
    if command not in TRAINING and command not in COMMANDS:
        known = list(TRAINING) + list(COMMANDS)
        from isep.data.registry import suggest

        print(f"isep: error: unknown command {command!r}.{suggest(command, known)} `isep --help` lists them.",
              file=sys.stderr)
        return 2
    from isep.cli.quiet import quiet
    from isep.cli.signals import as_stopped, stop_on_signals

    quiet()
    try:
        with stop_on_signals():
            return _run(command, argv, from_sys)
    except KeyboardInterrupt as stop:  # SIGTERM / SIGINT: exit as a process killed by it would (143 / 130)
        stop = as_stopped(stop)
        if not stop.reported:
            print(f"isep: {command} stopped by {stop.name}", file=sys.stderr, flush=True)
        return stop.exit_code
    except ISEPError as err:
        print(f"isep: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `isep fit --help | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except argparse.ArgumentError as err:  # the config parser's own (exit_on_error=False)
        from isep.params import friendly

        print(f"isep: error: {friendly(str(err))}; see `isep {command} --help`", file=sys.stderr)
        return 2


def _run(command: str, argv: list[str], from_sys: bool) -> int:
    """Run one command (its exit code); errors propagate to `main`."""
    if command in COMMANDS:
        module, function = COMMANDS[command][0].split(":")
        return getattr(importlib.import_module(module), function)(argv[1:])
    from isep.cli.fit_help import short_help

    if argv[1:] in (["--help"], ["-h"]):
        print(short_help(command))
        return 0
    if argv[1:] == ["--help=full"]:  # LightningCLI's own help: every option, the Trainer's included
        argv, from_sys = [command, "--help"], False
    from isep.cli.fit_cli import build_cli

    build_cli(None if from_sys else argv)
    return 0


def __getattr__(name: str):
    """`isep.cli.build_cli` / `resolve_fit_config` on first use (they import Lightning)."""
    if name in ("build_cli", "resolve_fit_config"):
        from isep.cli import fit_cli

        return getattr(fit_cli, name)
    raise AttributeError(name)


if __name__ == "__main__":
    sys.exit(main())
