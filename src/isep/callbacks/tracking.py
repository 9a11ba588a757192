"""Tracking of a run: where each run of a module writes (its loggers and folder), the MLflow
logger and its tags, and the record of why a run failed."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import MLFlowLogger

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri(uri: str | None = None) -> str:
    """The config's URI, else `MLFLOW_TRACKING_URI`, else a local sqlite store in the working dir."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def git_commit() -> str:
    """The commit of the code that runs (with `-dirty` when it has uncommitted changes), or `unknown`."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class RunLogger(MLFlowLogger):
    """One run's MLflow record (Lightning's MLFlowLogger). `fail(reason)` ends it as FAILED at
    once (a run of a stack that diverged while the others go on), and Lightning's final status
    does not undo it."""

    failed = False

    def fail(self, reason: str) -> None:
        self.experiment.set_tag(self.run_id, "failure_reason", reason[:4000])
        self.experiment.set_terminated(self.run_id, "FAILED")
        self.failed = True

    def finalize(self, status: str = "success") -> None:
        if not self.failed:
            super().finalize(status)


def make_mlflow_logger(experiment: str, run_name: str, uri: str | None, tags: dict[str, str], run_id: str | None) -> RunLogger:
    """A `RunLogger` with an explicit URI (MLFlowLogger's default is read at import and fails)."""
    return RunLogger(
        experiment_name=experiment,
        run_name=run_name,
        tracking_uri=tracking_uri(uri),
        tags=tags,
        log_model=False,  # MLflowRunRecord logs the best checkpoint itself
        run_id=run_id,
    )


@dataclass
class RunRoutes:
    """Where each run of a module writes: its loggers and its folder (one run: the Trainer's)."""

    loggers: list[list]
    folders: list[Path]


def run_routes(pl_module: L.LightningModule) -> RunRoutes:
    """Each run's loggers and folder (evaluation returns, CSV, config): those the CLI set (a stack's
    runs each have a sub-folder and loggers of their own), else, for one run, the Trainer's."""
    if pl_module.routes is not None:
        return pl_module.routes
    if pl_module.runs > 1:
        raise RuntimeError(f"a stack of {pl_module.runs} runs writes each run to its own folder and loggers: train it "
                           "with `isep fit`, or set `module.routes` (a RunRoutes) before fitting")
    return RunRoutes([list(pl_module.loggers)], [Path(pl_module.trainer.default_root_dir)])


def log_runs(pl_module: L.LightningModule, per_run: list[dict[str, float]], step: int | None = None) -> None:
    """Send each run's metrics to its loggers (one run: every logger), at step = updates done; a
    frozen run of a stack logs nothing more. Straight to the loggers: `self.log` would re-log stale
    step values on every later step and costs ~0.8 ms a call."""
    step = pl_module.global_step if step is None else step
    routes = run_routes(pl_module)
    for r, metrics in enumerate(per_run):
        if r in pl_module.agent.failures and pl_module.runs > 1:
            continue
        for logger in routes.loggers[r]:
            logger.log_metrics(metrics, step=step)


def record_failures(pl_module: L.LightningModule) -> None:
    """Mark the frozen runs' MLflow records FAILED with their reasons (`RunLogger.fail`)."""
    if pl_module.routes is None:  # no records of their own (only a stack has frozen runs)
        return
    for run, reason in pl_module.agent.failures.items():
        for logger in pl_module.routes.loggers[run]:
            if isinstance(logger, RunLogger) and not logger.failed:
                logger.fail(reason)


def _runs(pl_module: L.LightningModule) -> list[tuple[list, Path]]:
    """(MLflow loggers, folder) of each run."""
    routes = run_routes(pl_module)
    return [([lg for lg in loggers if isinstance(lg, MLFlowLogger)], folder)
            for loggers, folder in zip(routes.loggers, routes.folders)]


class MLflowRunRecord(L.Callback):
    """Adds to each MLflow run what Lightning's logger does not: at the end, the per-episode
    evaluation returns (`eval_returns.jsonl`) and the best checkpoint (`checkpoints/`, a single
    run's; a stack's checkpoint stays in its folder, named by each run's `run_dir`); on failure,
    the reason (`failure_reason` tag), e.g. the divergence stop's message."""

    @staticmethod
    def _log_returns(runs: list[tuple[list, Path]]) -> None:
        for loggers, folder in runs:
            path = folder / "eval_returns.jsonl"
            for logger in loggers:
                if path.is_file():
                    logger.experiment.log_artifact(logger.run_id, str(path))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from isep.callbacks.checkpoint import BestCheckpoint

        runs = _runs(pl_module)
        self._log_returns(runs)
        if pl_module.runs > 1:
            return
        best = [cb.best_model_path for cb in trainer.callbacks if isinstance(cb, BestCheckpoint) and cb.best_model_path]
        for loggers, _ in runs:
            for logger in loggers:
                for path in best:
                    logger.experiment.log_artifact(logger.run_id, path, "checkpoints")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        try:  # never hide the original error
            runs = _runs(pl_module)
        except Exception:  # noqa: BLE001
            return
        for loggers, _ in runs:
            for logger in loggers:
                if isinstance(logger, RunLogger) and logger.failed:
                    continue
                try:
                    logger.experiment.set_tag(logger.run_id, "failure_reason", f"{type(exception).__name__}: {exception}"[:4000])
                except Exception:  # noqa: BLE001
                    pass
        try:
            self._log_returns(runs)
        except Exception:  # noqa: BLE001
            pass
