"""`isep data list | check | import-d4rl`: the task registry, the local Minari store, what is ready to
run here, and D4RL imports.

Never imports Lightning (≈ 4.5 s).
"""

from __future__ import annotations

import argparse
from typing import Sequence


def data_main(argv: Sequence[str]) -> int:
    """`isep data list | check | import-d4rl`."""
    parser = argparse.ArgumentParser(prog="isep data", description="Datasets: the task registry and the local Minari store.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the paper's tasks and the datasets in the local Minari store")
    check = sub.add_parser("check", help="which of the paper's tasks are ready to train and evaluate here (data, env, "
                           "extra), and the command that makes each ready; exit 1 unless all named tasks are ready; "
                           "no network")
    check.add_argument("tasks", nargs="*", metavar="TASK", help="D4RL task names (default: all 14 of the paper)")
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
    if args.command == "check":
        from isep.data.check import check_main

        return check_main(args.tasks)
    from isep.data.d4rl_import import import_d4rl

    print(import_d4rl(args.file, args.dataset_id, args.task, args.env_id, args.ref_min_score, args.ref_max_score))
    return 0
