"""The `isep` command: LightningCLI's fit/validate/test, plus `isep data ...`, `isep compare`, `isep demo`,
`isep sweep`, `isep evaluate`, `isep figure` and `isep bench`.

`isep data` and `isep compare` do not import Lightning (≈ 4.5 s); only training does.

Each run lives in its own folder, `<trainer.default_root_dir>/<dataset>/<actor>-lam<λ>-<mix>-seed<s>-<hash>`
(the hash covers every model and data setting; a repeated run gets `.1`, `.2`, … so nothing is
replaced), holding `config.yaml`, `checkpoints/last.ckpt`, the best checkpoint, CSV metrics and
`eval_returns.jsonl`; `--ckpt_path last` resumes the newest such folder. Every run is also an MLflow run (experiment = dataset), unless `--mlflow.enabled false`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from isep.errors import ConfigError, ISEPError

TRAINER_DEFAULTS = {
    "default_root_dir": "runs",
    # The module logs its own averages every `model.log_every` updates; Lightning must not
    # drop them, so its own cadence is every step.
    "log_every_n_steps": 1,
}
RUN_ID_FILE = "mlflow_run_id"
HASH_EXCLUDE = {"model.log_every", "model.fast", "model.updates_per_call", "data.val_batches", "data.download"}


def _flat(prefix: str, value) -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


def run_seed(config: dict):
    """The run's seed: `model.seed` when set, else `seed_everything` (the module's default)."""
    model = config.get("model") or {}
    return model.get("seed") if model.get("seed") is not None else config.get("seed_everything")


def trial_key(config: dict) -> str:
    """What makes two runs the same experiment: the run key (dataset, model and data settings,
    seed) and the training length. Tagged `isep.trial` on each MLflow run; sweeps find finished
    trials by it."""
    trainer = config.get("trainer") or {}
    return f"{run_key(config)}|epochs={trainer.get('max_epochs')}|steps={trainer.get('max_steps')}"


def run_key(config: dict) -> str:
    """The run's folder name below the root: dataset, then actor, λ, mix, seed and a config hash."""
    model, data = config.get("model") or {}, config.get("data") or {}
    settings = {k: v for k, v in _flat("", {"model": model, "data": data}).items() if k not in HASH_EXCLUDE}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]
    dataset = data.get("dataset", "dataset")
    dataset = "+".join(dataset) if isinstance(dataset, list) else str(dataset)
    slug = re.sub(r"[^\w.+-]+", "_", dataset.replace("/", "__"))
    return (
        f"{slug}/{model.get('actor', 'flow')}-lam{model.get('lam', 0.0)}-{model.get('policy_mix', 'stochastic')}"
        f"-seed{run_seed(config)}-{digest}"
    )


def _used(folder: Path) -> bool:
    """A folder holds a run once it has a checkpoint or an evaluation record."""
    ckpts = folder / "checkpoints"
    return (ckpts.is_dir() and any(ckpts.iterdir())) or (folder / "eval_returns.jsonl").is_file()


def choose_run_dir(base: Path, resume: bool) -> Path:
    """The run folder: `base`, or `base.1`, `base.2`, … so that nothing on disk is ever replaced.

    A fresh run takes the first folder without checkpoints; a resumed one (`--ckpt_path last`)
    the newest folder holding a `last.ckpt`.
    """
    folders = [base] + [base.with_name(f"{base.name}.{i}") for i in range(1, 1000)]
    if resume:
        existing = [f for f in folders if (f / "checkpoints" / "last.ckpt").is_file()]
        return existing[-1] if existing else base
    return next(f for f in folders if not _used(f))


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
    from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
    from lightning.pytorch.loggers import CSVLogger

    from isep.callbacks.checkpoint import BestCheckpoint, LastCheckpoint
    from isep.callbacks.evaluation import RolloutEvaluation
    from isep.callbacks.tracking import MLflowRunRecord, git_commit, make_mlflow_logger
    from isep.data.datamodule import D4RLDataModule
    from isep.module import ISEPModule

    class SaveRunConfig(SaveConfigCallback):
        """Writes the resolved config into the run folder and, with MLflow, as an artifact + params."""

        def setup(self, trainer, pl_module, stage: str) -> None:
            if stage != "fit":
                return
            path = Path(trainer.default_root_dir) / "config.yaml"
            self.parser.save(self.config, path, skip_none=False, overwrite=True, multifile=False)
            flat = {k: str(v)[:500] for k, v in _flat("", self.config.as_dict()).items() if k != "config"}
            for logger in trainer.loggers:
                if type(logger).__name__ == "MLFlowLogger":
                    log_run_params(logger, flat)
                    logger.experiment.log_artifact(logger.run_id, str(path))

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

        def before_instantiate_classes(self) -> None:
            if check_only:
                return
            cfg = self.config[self.subcommand] if self.subcommand else self.config
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
            if plain["trainer"].get("logger") in (None, True):
                loggers = [CSVLogger(self.run_dir, name="csv")]
                if plain["mlflow"]["enabled"] and self.subcommand == "fit":
                    loggers.insert(0, self._mlflow_logger(plain))
                kwargs["logger"] = loggers
            return super().instantiate_trainer(**kwargs)

        def _mlflow_logger(self, plain: dict):
            model, data = plain["model"], plain["data"]
            dataset = data["dataset"] if isinstance(data["dataset"], str) else "+".join(data["dataset"])
            id_file = self.run_dir / RUN_ID_FILE
            run_id = id_file.read_text().strip() if (self.resuming and id_file.is_file()) else None
            tags = {
                "task": dataset,
                "actor": model["actor"],
                "lam": str(float(model["lam"])),
                "policy_mix": model["policy_mix"],
                "seed": str(run_seed(plain)),
                "git_commit": git_commit(),
                "run_dir": str(self.run_dir),
                "isep.trial": trial_key(plain),
            }
            if plain["mlflow"].get("parent_run_id"):
                tags["mlflow.parentRunId"] = plain["mlflow"]["parent_run_id"]
            logger = make_mlflow_logger(plain["mlflow"]["experiment"] or dataset, self.run_dir.name,
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


def data_main(argv: Sequence[str]) -> int:
    """`isep data list | import-d4rl`."""
    parser = argparse.ArgumentParser(prog="isep data", description="Datasets: the task registry and the local Minari store.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the paper's tasks and the datasets in the local Minari store")
    imp = sub.add_parser("import-d4rl", help="convert a legacy D4RL .hdf5 file into a local Minari dataset")
    imp.add_argument("file", help="the D4RL .hdf5 file (observations, actions, rewards, terminals, timeouts)")
    imp.add_argument("--id", required=True, dest="dataset_id", help="the Minari id to write, e.g. d4rl/hopper/medium-replay-v2")
    imp.add_argument("--task", help="registry task name: supplies the env id and D4RL reference scores")
    imp.add_argument("--env", dest="env_id", help="Gymnasium env id to record (overrides --task's)")
    imp.add_argument("--ref-min-score", type=float, help="return of a random policy (normalized score 0)")
    imp.add_argument("--ref-max-score", type=float, help="return of an expert policy (normalized score 100)")
    args = parser.parse_args(argv)

    if args.command == "list":
        from isep.data.listing import format_listing

        print(format_listing())
        return 0
    from isep.data.d4rl_import import import_d4rl

    print(import_d4rl(args.file, args.dataset_id, args.task, args.env_id, args.ref_min_score, args.ref_max_score))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `isep` console script."""
    from_sys = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    try:
        if argv and argv[0] == "data":
            return data_main(argv[1:])
        if argv and argv[0] == "compare":
            from isep.compare import compare_main

            return compare_main(argv[1:])
        if argv and argv[0] == "demo":
            from isep.demo import demo_main

            return demo_main(argv[1:])
        if argv and argv[0] == "sweep":
            from isep.sweeps.runner import sweep_main

            return sweep_main(argv[1:])
        if argv and argv[0] == "figure":
            from isep.figures.cli import figure_main

            return figure_main(argv[1:])
        if argv and argv[0] == "evaluate":
            from isep.checkpoint_eval import evaluate_main

            return evaluate_main(argv[1:])
        if argv and argv[0] == "bench":
            from isep.bench.throughput import main as bench_main

            return bench_main(argv[1:])
        build_cli(None if from_sys else argv)
        return 0
    except ISEPError as err:
        print(f"isep: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
