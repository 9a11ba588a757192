"""What one Ray Tune trial runs: an ordinary `isep fit`, plus the callback that reports to Tune."""

from __future__ import annotations

import json
import shlex


class TrialError(RuntimeError):
    """The trial's `isep fit` stopped with an error (its MLflow run says why, e.g. a divergence)."""


def run_trial(config: dict, trials: dict[str, list[str]]) -> None:
    """Tune's function trainable: `config["trial"]` names the trial, `trials` maps names to their
    `isep fit` arguments (exactly as logged, tag `isep.command`). A restart by Tune (its checkpoint
    names the run folder) resumes from the run's `last.ckpt`."""
    import torch
    from ray import tune

    from isep.cli import build_cli
    from isep.errors import ISEPError

    torch.set_num_threads(config["threads"])
    fit_args = trials[config["trial"]]
    args = ["fit", *fit_args]
    if tune.get_checkpoint() is not None and "--ckpt_path" not in args:
        args += ["--ckpt_path", "last"]
    command = "isep " + shlex.join(["fit", *fit_args])
    reporter = {"class_path": "isep.callbacks.tune_report.TuneReport", "init_args": {"command": command}}
    args += ["--trainer.callbacks+", json.dumps(reporter)]
    try:
        build_cli(args)
    except ISEPError as err:
        raise TrialError(str(err)) from None
