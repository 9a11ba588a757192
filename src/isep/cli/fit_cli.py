"""`isep fit / validate / test`: LightningCLI over `ISEPModule` and `D4RLDataModule`.

Each run lives in its own folder, `<trainer.default_root_dir>/<dataset>/<actor>-lam<λ>-<mix>-seed<s>-<hash>`
(the hash covers every model and data setting; a repeated run gets `.1`, `.2`, … so nothing is
replaced), holding `config.yaml`, `checkpoints/last.ckpt`, the best checkpoint, CSV metrics and
`eval_returns.jsonl`; `--ckpt_path last` resumes the newest such folder. Every run is also an
MLflow run (experiment = dataset), unless `--mlflow.enabled false`. What can be checked before
training is checked before the run folder or the MLflow run exist (`isep.cli.run_setup`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import MLFlowLogger

from isep.callbacks.evaluation import RolloutEvaluation
from isep.callbacks.tracking import RunCSVLogger, run_routes
from isep.cli.checkpoints import check_resume, read_checkpoint, resume_precision
from isep.cli.extra_loggers import check_logger_packages, check_stackable, extra_loggers, logger_specs
from isep.cli.run_setup import RunClaim, build_routes, log_run_params, run_folder_of
from isep.cli.signals import Stopped, received
from isep.cli.stopped import report_stop
from isep.cli.summary import print_eval_metrics, print_start, print_summary
from isep.data.datamodule import D4RLDataModule
from isep.errors import ConfigError
from isep.module import ISEPModule
from isep.precision import check_device, default_precision, normalize, training_device
from isep.runs import STACK_FIELDS, expand_stack, flat, per_run_configs, run_key, stack_size

TRAINER_DEFAULTS = {
    "default_root_dir": "runs",
    "precision": None,  # resolved before anything runs: the run's own on a resume, else `precision.default_precision`
    # The module logs its own averages every `model.log_every` updates; Lightning must not drop
    # them, so its own cadence is every step.
    "log_every_n_steps": 1,
    "enable_model_summary": False,  # the start line says what trains; `true` shows Lightning's table
}
SUBCOMMANDS = ("fit", "validate", "test")  # `predict` is not offered: the policy is `isep evaluate`


class SaveRunConfig(SaveConfigCallback):
    """Writes the resolved config into the run folder and, with MLflow, as an artifact + params."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        path = Path(trainer.default_root_dir) / "config.yaml"
        self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=False)
        configs = per_run_configs(self.config.as_dict())
        routes = run_routes(pl_module)
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
                elif not isinstance(logger, RunCSVLogger):  # a given logger (TensorBoard, W&B, ...): the same params
                    logger.log_hyperparams(params)


class ISEPCLI(LightningCLI):
    """LightningCLI with isep's run folders, checks before anything is written, and summaries."""

    def __init__(self, *args, check_only: bool = False, **kwargs) -> None:
        self.check_only, self.claim, self.resuming = check_only, None, False
        super().__init__(*args, **kwargs)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {k: v for k, v in LightningCLI.subcommands().items() if k in SUBCOMMANDS}

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

    def _command(self) -> str | None:
        return self.config.get("subcommand")  # (LightningCLI sets `self.subcommand` only after parsing)

    def _cfg(self):
        command = self._command()
        return self.config[command] if command else self.config

    def _parse_ckpt_path(self) -> None:
        """Instead of LightningCLI's (which lets a checkpoint's settings silently replace the command
        line's): the stack's runs, the run folder, `--ckpt_path last` resolved, and the checkpoint
        checked against this command's settings — all before anything is written."""
        cfg = self._cfg()
        stacked = expand_stack(cfg.get("stack", {}).as_dict() if cfg.get("stack") else None, cfg.model.as_dict())
        for field, values in stacked.items():
            setattr(cfg.model, field, values)
        device = training_device(cfg.trainer.get("accelerator"))
        default, root, ckpt = default_precision(device), Path(cfg.trainer.get("default_root_dir") or "runs"), cfg.get("ckpt_path")
        given = cfg.trainer.get("precision")
        # an explicit checkpoint file is read once, for its precision and for the resume check
        checkpoint = read_checkpoint(ckpt) if ckpt and ckpt != "last" and not self.check_only else None
        resumed = None if given is not None or self.check_only else resume_precision(cfg.as_dict(), root, ckpt, default,
                                                                                      checkpoint)
        if resumed is not None and resumed != default:
            print(f"isep: resuming in {resumed}, the precision the run was trained in (--trainer.precision "
                  f"{default} would start another run)", file=sys.stderr)
        cfg.trainer.precision = normalize(given or resumed or default)
        check_device(cfg.trainer.precision, device)
        plain = cfg.as_dict()
        specs = logger_specs(plain["trainer"].get("logger"))
        check_logger_packages(specs)
        if stack_size(plain) > 1:
            check_stackable(specs)
        if self.check_only:
            return
        command = self._command()  # None: `build_cli(run=False)`, whose caller calls `trainer.fit` itself
        fit = command in ("fit", None)
        if not fit and not ckpt:
            raise ConfigError(f"isep {command} evaluates a trained run: pass --ckpt_path FILE, or --ckpt_path last "
                              "(the newest run of these settings)")
        tracking = plain["mlflow"] if plain["mlflow"]["enabled"] and command == "fit" else None
        self.claim = RunClaim(root / run_key(plain), resume=ckpt == "last" or not fit, tracking=tracking,
                              exclusive=command == "fit")
        if ckpt == "last":
            last = self.claim.folder / "checkpoints" / "last.ckpt"
            if last.is_file():
                cfg.ckpt_path = ckpt = str(last)
            elif not fit:
                raise ConfigError(f"--ckpt_path last: no run of these settings under {root} has a checkpoint; "
                                  "train one first, or pass the checkpoint file")
            else:
                print(f"isep: no checkpoint of these settings under {root}; starting this run from scratch",
                      file=sys.stderr)
                cfg.ckpt_path = ckpt = None
        if ckpt:
            check_resume(plain, checkpoint if checkpoint is not None else read_checkpoint(ckpt), Path(ckpt))
            if not fit:  # validate / test read a checkpoint: their records go beside it
                self.claim.folder = run_folder_of(Path(ckpt))
        self.resuming = bool(ckpt) and fit
        cfg.trainer.default_root_dir = str(self.claim.folder)

    def instantiate_classes(self) -> None:
        if not self.check_only:
            return super().instantiate_classes()
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")

    def instantiate_trainer(self, **kwargs):
        from isep.callbacks.checkpoint import BestCheckpoint, LastCheckpoint
        from isep.callbacks.progress import UpdateProgress
        from isep.callbacks.tracking import MLflowRunRecord, check_tracking_uri

        cfg = self._cfg()
        plain = cfg.as_dict()
        evaluation = self._get(self.config_init, "evaluation")
        if self.subcommand == "fit" and evaluation is not None and evaluation.every > 0:
            evaluation.prepare_for(self.datamodule, self.model.agent.obs_dim, self.model.agent.act_dim)  # fail now
        if plain["mlflow"]["enabled"] and self.subcommand == "fit":
            check_tracking_uri(plain["mlflow"]["tracking_uri"])
        if self.subcommand == "fit":
            self.claim.acquire()
        ckpt_dir = self.claim.folder / "checkpoints"
        callbacks = [LastCheckpoint(ckpt_dir), MLflowRunRecord()]
        if (plain["evaluation"].get("every", 0) or 0) > 0:
            # first: the trainer's `checkpoint_callback`, whose best file MLflow keeps as an artifact
            callbacks.insert(0, BestCheckpoint(ckpt_dir, plain["evaluation"]["every"]))
        if plain["trainer"].get("enable_progress_bar") is not False:
            callbacks.append(UpdateProgress())
        configured = self._get(self.config_init, "trainer", default={}).get("callbacks") or []
        configured = configured if isinstance(configured, list) else [configured]
        kwargs["callbacks"] = callbacks + configured + list(kwargs.get("callbacks") or [])
        logger, routes = plain["trainer"].get("logger"), None
        if logger is not False:  # isep's own records, and any given logger beside them, per run
            routes = build_routes(self.claim, plain, self.subcommand, self.resuming)
            given = self._get(self.config_init, "trainer", default={}).get("logger")
            extra = extra_loggers(logger_specs(logger), given, routes.folders, self.claim.folder.name)
            for own, more in zip(routes.loggers, extra):
                own.extend(more)
            kwargs["logger"] = [lg for loggers in routes.loggers for lg in loggers]
        elif stack_size(plain) > 1:  # each run of a stack keeps its own folder, even without loggers
            routes = build_routes(self.claim, plain, self.subcommand, self.resuming, loggers=False)
        trainer = super().instantiate_trainer(**kwargs)
        self.model.routes = routes
        return trainer

    def _run_subcommand(self, subcommand: str) -> None:
        """Run it, between a start line and a summary; a run that fails before its first update
        leaves no run folder and no MLflow record behind (`RunClaim.undo`)."""
        if subcommand == "fit":
            print_start(self)
        start = time.perf_counter()
        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:
            undone = subcommand == "fit" and not self.resuming and self.trainer.global_step == 0 and self.claim is not None
            if undone:
                self.claim.undo()
            signum = received()
            if signum is not None:  # (Lightning turns the interrupt into its own exit(1))
                report_stop(self, subcommand, signum, undone)
                raise Stopped(signum, reported=True) from err
            raise
        finally:
            if self.claim is not None:
                self.claim.release()
        if subcommand == "fit":
            print_summary(self, time.perf_counter() - start)
        else:
            print_eval_metrics(self.model, subcommand)


def build_cli(args: Sequence[str] | None = None, run: bool = True, check_only: bool = False) -> ISEPCLI:
    """Construct (and by default run) the CLI. `check_only`: parse and validate the config and build
    the model and data module (which check their values and find the dataset), but create no run
    folder, logger or trainer."""
    no_exit = {"exit_on_error": False}  # errors reach `isep.cli.main` as one line, not 95 of usage
    return ISEPCLI(
        ISEPModule,
        D4RLDataModule,
        args=args,
        run=run,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_callback=SaveRunConfig,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        parser_kwargs={"description": "ISEP / ISEP-FM offline RL (PyTorch Lightning).", **no_exit,
                       **{name: dict(no_exit) for name in SUBCOMMANDS}},
        check_only=check_only,
    )


def resolve_fit_config(args: Sequence[str]) -> dict:
    """The resolved config of `isep fit ARGS` as a plain dict, after every check `isep fit` makes
    before training (parser, model and data values, dataset present); errors raise `ConfigError`
    (or the dataset's `DatasetError`), with the parser's message."""
    import argparse

    try:
        cli = build_cli(list(args), run=False, check_only=True)
    except argparse.ArgumentError as err:
        from isep.params import friendly

        command = " ".join(args)
        command = command if len(command) <= 120 else command[:117] + "..."
        raise ConfigError(f"{friendly(str(err))} (in `isep fit {command}`)") from None
    return cli.config.as_dict()
