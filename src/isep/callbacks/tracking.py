"""MLflow tracking of a run: the logger, its tags, and the record of why a run failed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import lightning as L

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


def make_mlflow_logger(experiment: str, run_name: str, uri: str | None, tags: dict[str, str], run_id: str | None):
    """Lightning's MLFlowLogger with an explicit URI (its default is read at import and fails)."""
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(
        experiment_name=experiment,
        run_name=run_name,
        tracking_uri=tracking_uri(uri),
        tags=tags,
        log_model=False,  # MLflowRunRecord logs the best checkpoint itself
        run_id=run_id,
    )


def _mlflow_loggers(trainer: L.Trainer) -> list:
    from lightning.pytorch.loggers import MLFlowLogger

    return [lg for lg in trainer.loggers if isinstance(lg, MLFlowLogger)]


class MLflowRunRecord(L.Callback):
    """Adds to the MLflow run what Lightning's logger does not: at the end, the per-episode
    evaluation returns (`eval_returns.jsonl`) and the best checkpoint (`checkpoints/`); on failure,
    the reason (`failure_reason` tag), e.g. the divergence stop's message."""

    def _log_returns(self, trainer: L.Trainer) -> None:
        path = Path(trainer.default_root_dir) / "eval_returns.jsonl"
        for logger in _mlflow_loggers(trainer):
            if path.is_file():
                logger.experiment.log_artifact(logger.run_id, str(path))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from isep.callbacks.checkpoint import BestCheckpoint

        self._log_returns(trainer)
        best = [cb.best_model_path for cb in trainer.callbacks if isinstance(cb, BestCheckpoint) and cb.best_model_path]
        for logger in _mlflow_loggers(trainer):
            for path in best:
                logger.experiment.log_artifact(logger.run_id, path, "checkpoints")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        for logger in _mlflow_loggers(trainer):
            try:
                logger.experiment.set_tag(logger.run_id, "failure_reason", f"{type(exception).__name__}: {exception}"[:4000])
                self._log_returns(trainer)
            except Exception:  # noqa: BLE001  (never hide the original error)
                pass
