"""The `isep` command: LightningCLI's fit/validate/test, plus `isep data ...` and `isep demo`.

`isep data` and `isep demo --help` do not import Lightning (≈ 4.5 s); only training does.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from isep.errors import ISEPError

TRAINER_DEFAULTS = {
    "default_root_dir": "runs",
    # The module logs its own averages every `model.log_every` updates; Lightning must not
    # drop them, so its own cadence is every step.
    "log_every_n_steps": 1,
}


def build_cli(args: Sequence[str] | None = None, run: bool = True):
    """Construct (and by default run) the LightningCLI over `ISEPModule` and `D4RLDataModule`."""
    from lightning.pytorch.cli import LightningCLI

    from isep.data.datamodule import D4RLDataModule
    from isep.module import ISEPModule

    class ISEPCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:
            # Network sizes follow the data: the DataModule reads them from the dataset's spaces.
            parser.link_arguments("data.obs_dim", "model.obs_dim", apply_on="instantiate")
            parser.link_arguments("data.act_dim", "model.act_dim", apply_on="instantiate")

    return ISEPCLI(
        ISEPModule,
        D4RLDataModule,
        args=args,
        run=run,
        trainer_defaults=TRAINER_DEFAULTS,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        parser_kwargs={"description": "ISEP / ISEP-FM offline RL (PyTorch Lightning)."},
    )


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
    try:
        if argv and argv[0] == "data":
            return data_main(argv[1:])
        if argv and argv[0] == "demo":
            from isep.demo import demo_main

            return demo_main(argv[1:])
        build_cli(None if from_sys else argv)
        return 0
    except ISEPError as err:
        print(f"isep: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
