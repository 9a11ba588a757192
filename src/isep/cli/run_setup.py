"""A run's folder and records: chosen so that nothing on disk is replaced, claimed only when training
starts, and taken back when the run fails before its first update.

A folder holds a run once it has a checkpoint, an evaluation record, a config or an MLflow run id
(`isep.runs.used`): a fresh run never takes such a folder (it opens `<key>.1`, `.2`, …), so a run
killed inside its first epoch keeps its identity, and its MLflow record, RUNNING with nothing
pointing at it, is marked KILLED by the next run of the same settings. While a process trains in
a folder it holds a lock on `.isep.lock` there: a folder being trained is never marked, reused or
resumed by another process.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

from isep.errors import ConfigError
from isep.runs import RUN_ID_FILE, STACK_FILE, choose_run_dir, per_run_configs, run_name, run_seed, trial_key

LOCK_FILE = ".isep.lock"


def is_live(folder: Path) -> bool:
    """Whether another process holds the run folder's lock (trains in it now)."""
    lock = folder / LOCK_FILE
    if not lock.is_file():
        return False
    with open(lock) as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


class RunClaim:
    """The folder this process trains in (`choose_run_dir` under `base`), and what it created there.

    Args:
        base: the run key's folder; `resume`: take the newest folder with a `last.ckpt`;
        tracking: the `mlflow` config section (None: no MLflow), to mark abandoned records KILLED;
        exclusive: the process will train in the folder (fit), not only read a checkpoint there.
    """

    def __init__(self, base: Path, resume: bool, tracking: dict | None, exclusive: bool = True) -> None:
        self.base, self.resume, self.tracking = base, resume, tracking
        self.folder = choose_run_dir(base, resume, live=is_live)
        if exclusive and resume and is_live(self.folder):
            raise ConfigError(f"{self.folder} is being trained by another process now; wait for it, or stop it first")
        self.created = not self.folder.exists()
        self.new_parents = []  # folders above it that this claim makes (`runs/`, `runs/<dataset>/`), innermost first
        for parent in self.folder.parents:
            if parent.exists():
                break
            self.new_parents.append(parent)
        self.mlflow_runs: list[str] = []  # MLflow runs created for this claim (undone on an early failure)
        self._lock = None

    def acquire(self) -> None:
        """Create the folder (proving it writable), lock it, and mark the abandoned runs of the same
        settings that a fresh run skipped."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.folder / LOCK_FILE, "a")  # noqa: SIM115  (held for the process's life)
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            raise ConfigError(f"cannot write to the run folder {self.folder} ({err.strerror or err}); "
                              "choose another --trainer.default_root_dir") from err
        if not self.resume and self.tracking is not None:
            self._mark_abandoned()

    def release(self) -> None:
        """The fit is over: the folder's lock goes (another process may resume the run now)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _mark_abandoned(self) -> None:
        """Folders of these settings with an MLflow run id but no checkpoint, nobody training them:
        runs killed inside their first epoch. Their records say KILLED (they stayed RUNNING)."""
        from isep.callbacks.tracking import mark_killed

        siblings = [self.base] + [self.base.with_name(f"{self.base.name}.{i}") for i in range(1, 1000)]
        for folder in siblings:
            if folder == self.folder:
                break
            id_file = folder / RUN_ID_FILE
            if id_file.is_file() and not (folder / "checkpoints" / "last.ckpt").is_file() and not is_live(folder):
                mark_killed(self.tracking.get("tracking_uri"), id_file.read_text().strip(), folder)

    def undo(self) -> None:
        """The run failed before its first update: its MLflow records are deleted and the folder
        removed, if this process created them (a resumed run's folder is never touched)."""
        from isep.callbacks.tracking import delete_runs

        if self.mlflow_runs and self.tracking is not None:
            delete_runs(self.tracking.get("tracking_uri"), self.mlflow_runs)
        if self.created and self.folder.is_dir() and not used_by_training(self.folder):
            shutil.rmtree(self.folder, ignore_errors=True)
            for parent in self.new_parents:  # and the folders made for it, while empty
                try:
                    parent.rmdir()
                except OSError:
                    break


def run_folder_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint file lives in (`<run>/checkpoints/X.ckpt`), else its own folder."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def used_by_training(folder: Path) -> bool:
    """A checkpoint or an evaluation record: training reached the folder (never removed then)."""
    checkpoints = folder / "checkpoints"
    return (checkpoints.is_dir() and any(checkpoints.iterdir())) or any(folder.rglob("eval_returns.jsonl"))


def log_run_params(logger, params: dict[str, str]) -> None:
    """The run's config as MLflow params. A resumed run continues its MLflow record, whose params
    cannot change: new keys are added, and a value that differs from the first (say a longer
    `trainer.max_epochs`, or `ckpt_path`) is kept as a tag `isep.resumed.<key>`."""
    logged = logger.experiment.get_run(logger.run_id).data.params
    logger.log_hyperparams({k: v for k, v in params.items() if k not in logged})
    for key, value in params.items():
        if key in logged and logged[key] != value:
            logger.experiment.set_tag(logger.run_id, f"isep.resumed.{key}"[:250], value)


def build_routes(claim: RunClaim, plain: dict, subcommand: str, resuming: bool, loggers: bool = True):
    """Each run's folder and loggers (CSV, and MLflow when fitting; none with `loggers` False): a
    stack's runs each get a sub-folder and an MLflow run of their own, as if run alone."""
    from lightning.pytorch.loggers import CSVLogger

    from isep.callbacks.tracking import RunCSVLogger, RunRoutes, git_commit

    configs = per_run_configs(plain)
    stacked, fit = len(configs) > 1, subcommand in ("fit", None)  # None: a caller runs `trainer.fit` itself
    mlflow = loggers and plain["mlflow"]["enabled"] and subcommand == "fit"
    commit = git_commit() if mlflow else None
    folders, per_run = [], []
    for index, config in enumerate(configs):
        folder = claim.folder / f"run{index}-{run_name(config)}" if stacked else claim.folder
        if stacked and fit:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / STACK_FILE).write_text(json.dumps({"checkpoint": "../checkpoints/last.ckpt", "index": index}))
        if loggers:
            run_loggers = [RunCSVLogger(folder, resuming) if fit else CSVLogger(folder, name=subcommand)]
        else:
            run_loggers = []
        if mlflow:
            run_loggers.insert(0, _mlflow_logger(claim, config, folder, index if stacked else None, commit, resuming))
        folders.append(folder)
        per_run.append(run_loggers)
    return RunRoutes(per_run, folders)


def _mlflow_logger(claim: RunClaim, plain: dict, folder: Path, stack_index: int | None, commit: str, resuming: bool):
    from isep.callbacks.tracking import make_mlflow_logger

    model, data = plain["model"], plain["data"]
    dataset = data["dataset"] if isinstance(data["dataset"], str) else "+".join(data["dataset"])
    id_file = folder / RUN_ID_FILE
    run_id = id_file.read_text().strip() if (resuming and id_file.is_file()) else None
    tags = {
        "task": dataset,
        "actor": model["actor"],
        "lam": str(float(model["lam"])),
        "policy_mix": model["policy_mix"],
        "seed": str(run_seed(plain)),
        "git_commit": commit,
        "run_dir": str(folder),
        "isep.trial": trial_key(plain),
    }
    if stack_index is not None:
        tags.update({"isep.stack": str(claim.folder), "isep.stack_index": str(stack_index)})
    if plain["mlflow"].get("parent_run_id"):
        tags["mlflow.parentRunId"] = plain["mlflow"]["parent_run_id"]
    name = folder.name if stack_index is None else f"{claim.folder.name}/{folder.name}"
    logger = make_mlflow_logger(plain["mlflow"]["experiment"] or dataset, name, plain["mlflow"]["tracking_uri"], tags, run_id)
    if run_id is None:
        claim.mlflow_runs.append(logger.run_id)
    id_file.write_text(logger.run_id)
    return logger
