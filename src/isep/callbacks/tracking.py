"""Tracking of a run: where each run of a module writes (its loggers and folder), the MLflow
logger and its tags, and the record of why a run failed."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from isep.store_lock import store_lock

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
    does not undo it. A resumed run's record (`continue_record`) reads like an uninterrupted run's:
    no stale failure tag, and no metric point written twice."""

    failed = False
    logged_until: dict[str, int] = {}  # per metric: the last step the record holds (a resumed run)

    def continue_record(self) -> None:
        """Before a resumed run logs: RUNNING again, the interrupt's `failure_reason` gone, and the
        last step of each metric remembered, so that the steps between the checkpoint and the
        interrupt (recorded already; a resume computes them again, bit for bit) are not logged twice."""
        client, run_id = self.experiment, self.run_id
        run = client.get_run(run_id)
        if "failure_reason" in run.data.tags:
            client.delete_tag(run_id, "failure_reason")
        client.update_run(run_id, status="RUNNING")
        self.logged_until = {key: max(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics}

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if self.logged_until and step is not None:
            metrics = {k: v for k, v in metrics.items() if step > self.logged_until.get(k, -1)}
            if not metrics:
                return
        super().log_metrics(metrics, step)

    def fail(self, reason: str) -> None:
        self.experiment.set_tag(self.run_id, "failure_reason", reason[:4000])
        self.experiment.set_terminated(self.run_id, "FAILED")
        self.failed = True

    def finalize(self, status: str = "success") -> None:
        if not self.failed:
            super().finalize(status)


def make_mlflow_logger(experiment: str, run_name: str, uri: str | None, tags: dict[str, str], run_id: str | None) -> RunLogger:
    """A `RunLogger` with an explicit URI (MLFlowLogger's default is read at import and fails);
    with `run_id`, the resumed run's record, continued. Its store, experiment and run exist when
    it returns (made under `store_lock`)."""
    uri = tracking_uri(uri)
    with store_lock(uri):
        logger = RunLogger(
            experiment_name=experiment,
            run_name=run_name,
            tracking_uri=uri,
            tags=tags,
            log_model=False,  # MLflowRunRecord logs the best checkpoint itself
            run_id=run_id,
        )
        if run_id is not None:
            logger.continue_record()
        else:
            logger.run_id  # noqa: B018 - makes the experiment and the run now, under the lock
    return logger


class _ContinuingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing `metrics.csv` is continued under its header
    instead of deleted (Lightning's writer removes it when it is made, i.e. a resumed run's rows)."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as handle:
                self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])


class RunCSVLogger(CSVLogger):
    """The run's CSV metrics, `<folder>/csv/version_0/metrics.csv`, one file for the run's life.

    A resumed run continues the same file: rows after the checkpoint it resumes from (written
    before an interrupt) are dropped when it starts (`truncate_after`), so the file reads like an
    uninterrupted run's. `MLflowRunRecord` flushes it at every checkpoint, so a SIGKILL loses no
    row that a resume will not write again.
    """

    def __init__(self, folder: Path, resuming: bool = False) -> None:
        super().__init__(folder, name="csv", version=0)
        self.resuming = resuming

    @property
    def experiment(self) -> ExperimentWriter:
        """Lightning's writer; a resumed run's continues the file (Lightning's own deletes it)."""
        if self._experiment is None and self.resuming:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuingWriter(log_dir=self.log_dir)
        return CSVLogger.experiment.fget(self)

    def truncate_after(self, step: int) -> None:
        """Keep the rows up to `step` (the checkpoint a resumed run starts from)."""
        path = Path(self.log_dir) / "metrics.csv"
        if not path.is_file():
            return
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields, rows = reader.fieldnames or [], [r for r in reader if int(float(r.get("step") or 0)) <= step]
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)  # (the writer, a `_ContinuingWriter`, appends under this header)


def check_tracking_uri(uri: str | None) -> str:
    """The tracking URI, refused at once (before any run exists) when it is malformed, names a
    corrupt sqlite file, or a server that does not answer within seconds (MLflow itself retries
    for minutes)."""
    import socket
    import sqlite3
    from urllib.parse import urlparse

    from isep.errors import ConfigError

    uri = tracking_uri(uri)
    scheme = urlparse(uri).scheme
    if uri.startswith("sqlite:"):
        if not uri.startswith("sqlite:///"):
            raise ConfigError(f"tracking URI {uri!r}: a sqlite store is sqlite:///relative/path.db or sqlite:////absolute/path.db")
        path = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        if path.exists():
            try:
                with sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True) as con:
                    con.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
            except sqlite3.DatabaseError as err:
                raise ConfigError(f"the MLflow store {path} is not a readable sqlite database ({err}); move it away "
                                  "(MLflow then makes a new one), or point --mlflow.tracking_uri elsewhere") from None
        else:  # MLflow will make the file and its folders: the nearest existing folder must allow it
            existing = next(p for p in path.absolute().parents if p.exists())
            if not existing.is_dir():
                raise ConfigError(f"the MLflow store {path} cannot be made: {existing} is a file, not a folder; "
                                  "point --mlflow.tracking_uri at a path under a folder")
            if not os.access(existing, os.W_OK | os.X_OK):
                raise ConfigError(f"the MLflow store {path} cannot be made: {existing} is not writable; "
                                  "point --mlflow.tracking_uri at a folder you can write to")
        return uri
    if scheme in ("http", "https"):
        parsed = urlparse(uri)
        port = parsed.port or (443 if scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname, port), timeout=5).close()
        except OSError as err:
            raise ConfigError(f"the MLflow server {uri} does not answer ({err.strerror or err}): start it "
                              "(`mlflow server --host HOST --port PORT`), or pass --mlflow.tracking_uri sqlite:///mlflow.db "
                              "or --mlflow.enabled false") from None
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # not minutes of retries later in the run
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        return uri
    if scheme in ("postgresql", "mysql", "mssql", "databricks", "file") or (len(scheme) <= 1 and "://" not in uri):
        return uri
    raise ConfigError(f"tracking URI {uri!r} has an unknown scheme {scheme!r}: use sqlite:///mlflow.db, "
                      "http(s)://host:port, or a database URI (postgresql://...)")


def mark_killed(uri: str | None, run_id: str, folder: Path) -> None:
    """A RUNNING record whose process is gone (killed inside its first epoch, no checkpoint): KILLED."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(uri))
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001  (another store, or a deleted run: nothing to mark)
        return
    if run.info.status == "RUNNING":
        client.set_tag(run_id, "failure_reason", f"killed before its first checkpoint (its folder {folder} has none)")
        client.set_terminated(run_id, "KILLED")
        print(f"isep: marked MLflow run {run_id} KILLED: {folder} was abandoned before its first checkpoint",
              file=sys.stderr)


def delete_runs(uri: str | None, run_ids: list[str]) -> None:
    """Delete the MLflow runs this process created for a run that failed before training."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(uri))
    for run_id in run_ids:
        try:
            client.delete_run(run_id)
        except Exception:  # noqa: BLE001  (never hide the error that made the run fail)
            pass


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

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed run continues its CSV file from the checkpoint's step (rows written after it,
        before an interrupt, go: the resume writes them again). (Not `on_fit_start`: Lightning
        restores the step counter after it.)"""
        if trainer.global_step > 0:
            for loggers in run_routes(pl_module).loggers:
                for logger in loggers:
                    if isinstance(logger, RunCSVLogger) and logger.resuming:
                        logger.truncate_after(trainer.global_step)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        """The CSV rows written so far reach the disk with each checkpoint (a SIGKILL loses none of them)."""
        for loggers in run_routes(pl_module).loggers:
            for logger in loggers:
                if isinstance(logger, CSVLogger):
                    logger.save()

    @staticmethod
    def _tag_update_path(pl_module: L.LightningModule, runs: list[tuple[list, Path]]) -> None:
        """`update_path`: the path the update ran on (eager, compile, graph, after any fallback), and
        `update_path_failures`: the paths that failed first, with why (`isep.fast_fallback`), and the
        seconds the check of the path against eager took (`update_path_check_s`)."""
        path, failures, seconds = pl_module.update_path()
        for loggers, _ in runs:
            for logger in loggers:
                logger.experiment.set_tag(logger.run_id, "update_path", path)
                logger.experiment.set_tag(logger.run_id, "update_path_check_s", f"{seconds:.2f}")
                if failures:
                    text = "; ".join(f"{mode}: {why}" for mode, why in failures.items())
                    logger.experiment.set_tag(logger.run_id, "update_path_failures", text[:4000])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from isep.callbacks.checkpoint import BestCheckpoint

        runs = _runs(pl_module)
        self._log_returns(runs)
        self._tag_update_path(pl_module, runs)
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
            self._tag_update_path(pl_module, runs)
        except Exception:  # noqa: BLE001
            pass
