"""What a fit stopped by SIGTERM or SIGINT leaves and says: its MLflow records marked KILLED with the
reason, and one line naming the checkpoint kept and how to resume (`isep.cli.signals`)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path


def last_checkpoint(trainer) -> tuple[Path | None, int | None]:
    """The run's `last.ckpt` if it exists, and the update it was saved at (None when unknown)."""
    from isep.callbacks.checkpoint import LastCheckpoint

    for callback in trainer.callbacks:
        if isinstance(callback, LastCheckpoint) and callback.dirpath:
            path = Path(callback.dirpath) / "last.ckpt"
            if path.is_file():
                return path, getattr(callback, "_last_global_step_saved", None) or None
    return None, None


def mark_killed(module, reason: str) -> None:
    """Each run's MLflow record KILLED, with `failure_reason` (Lightning's teardown said FAILED)."""
    from isep.callbacks.tracking import RunLogger

    for loggers in (module.routes.loggers if module.routes is not None else []):
        for logger in loggers:
            if isinstance(logger, RunLogger):
                try:
                    logger.experiment.set_tag(logger.run_id, "failure_reason", reason)
                    logger.experiment.set_terminated(logger.run_id, "KILLED")
                except Exception:  # noqa: BLE001 - the store may be gone; the line below still tells the user
                    pass


def report_stop(cli, subcommand: str, signum: int, undone: bool) -> None:
    """Mark the records and print the one line of a command stopped by `signum`."""
    name = signal.Signals(signum).name
    if subcommand != "fit":
        line = f"isep: {subcommand} stopped by {name}; it writes nothing, run it again"
    elif undone:
        line = f"isep: fit stopped by {name} before its first update: nothing kept (no run folder, no MLflow record)"
    else:
        step = cli.trainer.global_step
        mark_killed(cli.model, f"stopped by {name} at update {step}")
        path, saved = last_checkpoint(cli.trainer)
        if path is None:
            line = (f"isep: fit stopped by {name} at update {step:,}, before its first checkpoint (the end of an epoch): "
                    "nothing to resume, run it again; its MLflow run is marked KILLED")
        else:
            at = f" (update {saved:,})" if saved else ""
            line = (f"isep: fit stopped by {name} at update {step:,}; kept {path}{at}; resume with the same command "
                    "and --ckpt_path last; its MLflow run is marked KILLED")
    print(line, file=sys.stderr, flush=True)
