"""The `isep` command: LightningCLI's fit/validate/test, plus `isep data ...`, `isep compare`, `isep demo`,
`isep sweep`, `isep evaluate`, `isep figure` and `isep bench`.

`isep data` (`isep.data.commands`) and `isep compare` do not import Lightning (≈ 4.5 s); only training does.

Each run lives in its own folder, `<trainer.default_root_dir>/<dataset>/<actor>-lam<λ>-<mix>-seed<s>-<hash>`
(the hash covers every model and data setting; a repeated run gets `.1`, `.2`, … so nothing is
replaced), holding `config.yaml`, `checkpoints/last.ckpt`, the best checkpoint, CSV metrics and
`eval_returns.jsonl`; `--ckpt_path last` resumes the newest such folder. Every run is also an MLflow run (experiment = dataset), unless `--mlflow.enabled false`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

from isep.errors import ConfigError, ISEPError
from isep.runs import (
    RUN_ID_FILE,
    STACK_FIELDS,
    STACK_FILE,
    choose_run_dir,
    expand_stack,
    flat,
    per_run_configs,
    run_key,
    run_name,
    run_seed,
    stack_size,
    trial_key,
)

TRAINER_DEFAULTS = {
    "default_root_dir": "runs",
    # The module logs its own averages every `model.log_every` updates; Lightning must not
    # drop them, so its own cadence is every step.
    "log_every_n_steps": 1,
}


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".isep-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"cannot write to the run folder {folder} ({err.strerror or err}); choose another --trainer.default_root_dir"
        ) from err


def log_run_params(logger, params: dict[str, str]) -> None:
    """The run's config as MLflow params. A resumed run continues its MLflow record, whose params
    cannot change: new keys are added, and a value that differs from the first (say a longer
    `trainer.max_epochs`, or `ckpt_path`) is kept as a tag `isep.resumed.<key>`."""
    logged = logger.experiment.get_run(logger.run_id).data.params
    logger.log_hyperparams({k: v for k, v in params.items() if k not in logged})
    for key, value in params.items():
        if key in logged and logged[key] != value:
            logger.experiment.set_tag(logger.run_id, f"isep.resumed.{key}"[:250], value)


def build_cli(args: Sequence[str] | None = None, run: bool = True, check_only: bool = False):
    """Construct (and by default run) the LightningCLI over `ISEPModule` and `D4RLDataModule`.

    `check_only`: parse and validate the config and build the model and data module (which check
    their values and find the dataset), but create no run folder, logger or trainer.
    """
    import yaml
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger

    from isep.callbacks.checkpoint import BestCheckpoint, LastCheckpoint
    from isep.callbacks.evaluation import RolloutEvaluation
    from isep.callbacks.tracking import MLflowRunRecord, git_commit, make_mlflow_logger
    from isep.data.datamodule import D4RLDataModule
    from isep.module import ISEPModule, RunRoutes

    class SaveRunConfig(SaveConfigCallback):
        """Writes the resolved config into the run folder and, with MLflow, as an artifact + params."""

        def setup(self, trainer, pl_module, stage: str) -> None:
            if stage != "fit":
                return
            path = Path(trainer.default_root_dir) / "config.yaml"
            self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=False)
            configs = per_run_configs(self.config.as_dict())
            routes = pl_module.run_routes()
            for config, folder, loggers in zip(configs, routes.folders, routes.loggers):
                run_file = path
                if len(configs) > 1:  # each run's own config: what it would have been alone
                    run_file = folder / "config.yaml"
                    run_file.write_text(yaml.safe_dump(json.loads(json.dumps(config, default=str)), sort_keys=False))
                params = {k: str(v)[:500] for k, v in flat("", config).items() if k != "config"}
                for logger in loggers:
                    if isinstance(logger, MLFlowLogger):
                        log_run_params(logger, params)
                        logger.experiment.log_artifact(logger.run_id, str(run_file))

    class ISEPCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # Network sizes follow the data: the DataModule reads them from the dataset's spaces.
            parser.link_arguments("data.obs_dim", "model.obs_dim", apply_on="instantiate")
            parser.link_arguments("data.act_dim", "model.act_dim", apply_on="instantiate")
            parser.add_lightning_class_args(RolloutEvaluation, "evaluation")
            parser.add_argument("--mlflow.enabled", type=bool, default=True, help="log the run to MLflow")
            parser.add_argument("--mlflow.tracking_uri", type=str | None, default=None,
                                help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here)")
            parser.add_argument("--mlflow.experiment", type=str | None, default=None,
                                help="MLflow experiment (default: the dataset's name)")
            parser.add_argument("--mlflow.parent_run_id", type=str | None, default=None,
                                help="nest this run under an MLflow run (a sweep's parent run)")
            for field in STACK_FIELDS:
                parser.add_argument(f"--stack.{field}", type=str | list | None, default=None,
                                    help=f"train a grid of runs stacked in one model: values of model.{field} "
                                    "(comma-separated; the grid is the product of the --stack.* axes)")

        def before_instantiate_classes(self) -> None:
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            stacked = expand_stack(cfg.get("stack", {}).as_dict() if cfg.get("stack") else None, cfg.model.as_dict())
            for field, values in stacked.items():
                setattr(cfg.model, field, values)
            if check_only:
                return
            plain = cfg.as_dict()
            base = Path(plain["trainer"].get("default_root_dir") or "runs") / run_key(plain)
            self.run_dir = choose_run_dir(base, resume=cfg.get("ckpt_path") == "last" or self.subcommand != "fit")
            cfg.trainer.default_root_dir = str(self.run_dir)
            if self.subcommand == "fit":
                _check_writable(self.run_dir)
            if cfg.get("ckpt_path") == "last":
                last = self.run_dir / "checkpoints" / "last.ckpt"
                if last.is_file():
                    cfg.ckpt_path = str(last)
                else:
                    print(f"isep: no checkpoint at {last}; starting this run from scratch", file=sys.stderr)
                    cfg.ckpt_path = None
            self.resuming = bool(cfg.get("ckpt_path")) and self.subcommand == "fit"

        def instantiate_classes(self) -> None:
            if not check_only:
                return super().instantiate_classes()
            self.config_init = self.parser.instantiate_classes(self.config)
            self.datamodule = self._get(self.config_init, "data")
            self.model = self._get(self.config_init, "model")

        def instantiate_trainer(self, **kwargs):
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            plain = cfg.as_dict()
            ckpt_dir = self.run_dir / "checkpoints"
            callbacks = [LastCheckpoint(ckpt_dir), MLflowRunRecord()]
            every = plain["evaluation"].get("every", 0) or 0
            if every > 0:
                # first: the trainer's `checkpoint_callback`, whose best file MLflow keeps as an artifact
                callbacks.insert(0, BestCheckpoint(ckpt_dir, every))
            configured = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
            configured = configured if isinstance(configured, list) else [configured]
            kwargs["callbacks"] = callbacks + configured + list(kwargs.get("callbacks") or [])
            logger, routes = plain["trainer"].get("logger"), None
            if logger in (None, True):
                routes = self._run_routes(plain)
                kwargs["logger"] = [lg for loggers in routes.loggers for lg in loggers]
            elif stack_size(plain) > 1:  # each run of a stack keeps its own folder, even without loggers
                if logger is not False:
                    raise ConfigError("a stack logs each run to its own CSV and MLflow records: leave --trainer.logger "
                                      "unset (or false), or train the runs apart")
                routes = self._run_routes(plain, loggers=False)
            trainer = super().instantiate_trainer(**kwargs)
            self.model.routes = routes
            return trainer

        def _run_routes(self, plain: dict, loggers: bool = True) -> RunRoutes:
            """Each run's folder and loggers (CSV, and MLflow when fitting; none with `loggers`
            False): a stack's runs each get a sub-folder and an MLflow run of their own, as if they
            had been run alone."""
            configs = per_run_configs(plain)
            stacked = len(configs) > 1
            commit = git_commit() if loggers and plain["mlflow"]["enabled"] and self.subcommand == "fit" else None
            folders, per_run = [], []
            for index, config in enumerate(configs):
                folder = self.run_dir / f"run{index}-{run_name(config)}" if stacked else self.run_dir
                if stacked and self.subcommand == "fit":
                    folder.mkdir(parents=True, exist_ok=True)
                    (folder / STACK_FILE).write_text(json.dumps({"checkpoint": "../checkpoints/last.ckpt", "index": index}))
                run_loggers = [CSVLogger(folder, name="csv")] if loggers else []
                if loggers and plain["mlflow"]["enabled"] and self.subcommand == "fit":
                    run_loggers.insert(0, self._mlflow_logger(config, folder, index if stacked else None, commit))
                folders.append(folder)
                per_run.append(run_loggers)
            return RunRoutes(per_run, folders)

        def _mlflow_logger(self, plain: dict, folder: Path, stack_index: int | None, commit: str):
            model, data = plain["model"], plain["data"]
            dataset = data["dataset"] if isinstance(data["dataset"], str) else "+".join(data["dataset"])
            id_file = folder / RUN_ID_FILE
            run_id = id_file.read_text().strip() if (self.resuming and id_file.is_file()) else None
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
                tags.update({"isep.stack": str(self.run_dir), "isep.stack_index": str(stack_index)})
            if plain["mlflow"].get("parent_run_id"):
                tags["mlflow.parentRunId"] = plain["mlflow"]["parent_run_id"]
            name = folder.name if stack_index is None else f"{self.run_dir.name}/{folder.name}"
            logger = make_mlflow_logger(plain["mlflow"]["experiment"] or dataset, name,
                                        plain["mlflow"]["tracking_uri"], tags, run_id)
            id_file.write_text(logger.run_id)
            return logger

    return ISEPCLI(
        ISEPModule,
        D4RLDataModule,
        args=args,
        run=run,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=SaveRunConfig,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        parser_kwargs={"description": "ISEP / ISEP-FM offline RL (PyTorch Lightning)."},
    )


def resolve_fit_config(args: Sequence[str]) -> dict:
    """The resolved config of `isep fit ARGS` as a plain dict, after every check `isep fit` makes
    before training (parser, model and data values, dataset present); errors raise `ConfigError`
    (or the dataset's `DatasetError`), with the parser's message."""
    import contextlib
    import io

    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            cli = build_cli(list(args), run=False, check_only=True)
    except SystemExit as err:
        message = [line for line in stderr.getvalue().strip().splitlines() if line.strip()]
        raise ConfigError(f"`isep fit {' '.join(args)}` is not a valid run: {message[-1] if message else err}") from None
    return cli.config.as_dict()


# `isep <command>` beside LightningCLI's fit/validate/test: module:function, imported on use (most
# of them never import Lightning, ≈ 4.5 s).
COMMANDS = {
    "data": "isep.data.commands:data_main",
    "compare": "isep.results.cli:compare_main",
    "demo": "isep.demo:demo_main",
    "sweep": "isep.sweeps.runner:sweep_main",
    "figure": "isep.figures.cli:figure_main",
    "evaluate": "isep.checkpoint_eval:evaluate_main",
    "bench": "isep.bench.throughput:main",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `isep` console script."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    try:
        if argv and argv[0] in COMMANDS:
            import importlib

            module, function = COMMANDS[argv[0]].split(":")
            return getattr(importlib.import_module(module), function)(argv[1:])
        build_cli(None if from_sys else argv)
        return 0
    except ISEPError as err:
        print(f"isep: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
