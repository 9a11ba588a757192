"""`isep sweep`: a grid of `isep fit` runs on Ray Tune — one laptop or every GPU of a cluster.

    isep sweep --config configs/walker_med.yaml --lam 0,0.1,0.2,0.3,0.5,0.7 --seeds 0-4
    isep sweep --config configs/walker_med.yaml --lam 0,0.3 --seeds 0-4 --gpus_per_run 0.25
    isep sweep ... --address auto            # join a running Ray cluster instead of starting one

Each trial is an ordinary `isep fit` (its own config, run folder, checkpoints and MLflow run,
tagged with the exact command). Before anything starts, every trial's config is checked as
`isep fit` would check it. All runs go to one MLflow experiment (the sweep's name), nested under
a parent run named for the sweep. Running the same command again skips finished trials (found in
MLflow by `isep.trial`: dataset, settings, seed, length), resumes interrupted ones from their
`last.ckpt`, and re-runs failed ones (a divergence, an error) only with `--retry_failed`. When the
grid is done, the sweep prints the `isep compare` table and writes Figure 5 (score against λ).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from isep.cli.signals import Stopped, as_stopped, reclaim, received
from isep.errors import ConfigError, ISEPError
from isep.runs import STACK_FIELDS, run_checkpoint, run_seed
from isep.sweeps.cluster import check_address, start_ray
from isep.sweeps.grid import Grid, parse_grid
from isep.sweeps.records import EARLY_STOP_TAG, SweepRecords, TrialRecord, absolute_uri

ENV_FORWARD = ("MINARI_DATASETS_PATH", "MUJOCO_GL", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION")


# Grid axes a stack can hold (one value per run of the model), as `isep fit` options → model fields.
STACKABLE = {("seed_everything" if f == "seed" else f"model.{f}"): f for f in STACK_FIELDS}


@dataclass
class Trial:
    """One `isep fit` of the grid and what the sweep will do with it. A stacked trial trains
    several grid points (`members`) as one model (`--stack N`)."""

    point: dict[str, str]
    args: list[str]
    key: str  # `isep.runs.trial_key` of its resolved config
    evaluations: int  # rollout evaluations it will report (ASHA's time axis)
    action: str = "start"  # start | resume | skip
    note: str = ""
    early_stopped: bool = False  # stopped by ASHA in this invocation
    config: dict | None = None  # the resolved config
    members: list["Trial"] | None = None

    def label(self) -> str:
        if self.members:
            return f"{Path(self.point['config']).stem} stack of {len(self.members)}: " + ", ".join(
                m.label().split(" ", 1)[1] if " " in m.label() else m.label() for m in self.members)
        return self.single_label()

    def single_label(self) -> str:
        names = {"seed_everything": "seed"}
        parts = [Path(self.point["config"]).stem] + [f"{names.get(k, k.split('.')[-1])}={v}"
                                                      for k, v in self.point.items() if k != "config"]
        return " ".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="isep sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Grid axes: --config a.yaml,b.yaml  --lam 0,0.3  --seeds 0-4  --policy_mix stochastic,deterministic  "
               "--tasks ID,ID  and any --model.* / --data.* / --trainer.* / --evaluation.* field with comma-separated "
               "values; a single value is a fixed override for every trial.")
    parser.add_argument("--name", help="the sweep's name: its MLflow experiment and parent run (default: from the configs)")
    parser.add_argument("--root", default="runs", help="run folders of the trials (`--trainer.default_root_dir`)")
    parser.add_argument("--address", help="a running Ray cluster to join (`auto`, or host:port); default: start a local Ray")
    parser.add_argument("--num_cpus", type=int, help="CPUs of the local Ray (default: all)")
    parser.add_argument("--num_gpus", type=int, help="GPUs of the local Ray (default: all)")
    parser.add_argument("--cpus_per_run", type=float, default=1.0, help="CPUs reserved per trial (also its torch threads)")
    parser.add_argument("--gpus_per_run", type=float, help="GPUs per trial, fractions share a GPU (default: 1 where GPUs exist, else 0)")
    parser.add_argument("--scheduler", choices=("fifo", "asha"), default="fifo",
                        help="fifo: every trial to the end (the paper); asha: stop weak trials early")
    parser.add_argument("--retry_failed", action="store_true", help="run again the trials whose last run failed")
    parser.add_argument("--stack", type=int, default=1,
                        help="train up to N grid points as one stacked model per trial (points that differ only in "
                        "λ, τ, β, w, policy_mix or seed); each still gets its own MLflow run")
    parser.add_argument("--dry_run", action="store_true", help="check the grid and print the plan; start nothing")
    parser.add_argument("--out", help="folder for the compare table and Figure 5 (default: outputs/sweeps/<name>)")
    parser.add_argument("--mlflow.tracking_uri", dest="tracking_uri", help="MLflow store (default as `isep fit`)")
    return parser


def sweep_name(grid: Grid) -> str:
    stems = sorted({Path(c).stem for c in grid.configs})
    return "sweep-" + "+".join(stems)


def plan_trials(grid: Grid, bookkeeping: list[str]) -> list[Trial]:
    """Every grid point as a checked `isep fit`: configs resolved once per point up to its seed."""
    import copy

    from isep.callbacks.evaluation import planned_evaluations
    from isep.cli import resolve_fit_config
    from isep.runs import trial_key

    trials, resolved = [], {}
    for point in grid.points():
        args = grid.fit_args(point) + bookkeeping
        seedless = tuple(sorted((k, v) for k, v in point.items() if k != "seed_everything"))
        if seedless not in resolved:
            try:
                resolved[seedless] = resolve_fit_config(args)
            except ISEPError as err:
                raise ConfigError(f"trial {Trial(point, args, '', 0).label()}: {err}") from None
        config = copy.deepcopy(resolved[seedless])
        if "seed_everything" in point:
            config["seed_everything"] = int(point["seed_everything"])
        trainer = config.get("trainer") or {}
        evaluations = planned_evaluations((config.get("evaluation") or {}).get("every") or 0, trainer.get("max_epochs"),
                                          trainer.get("max_steps"), (config.get("data") or {}).get("steps_per_epoch", 1000))
        trials.append(Trial(point, args, trial_key(config), max(1, evaluations), config=config))
    keys = [t.key for t in trials]
    if len(set(keys)) != len(keys):
        raise ConfigError("two grid points resolve to the same run (an axis changes nothing that defines a run)")
    if len({t.single_label() for t in trials}) != len(trials):
        raise ConfigError("two configs of the sweep share a file name: give each task's config its own name")
    return trials


def decide(trials: list[Trial], records: dict[str, TrialRecord], retry_failed: bool) -> None:
    """What each trial needs: skip (finished, failed without --retry_failed), resume, or start."""
    for trial in trials:
        record = records.get(trial.key)
        if record is None:
            continue
        if record.status == "FINISHED" or record.early_stopped:
            trial.action, trial.note = "skip", "finished" if not record.early_stopped else "stopped early by ASHA"
        elif record.status == "FAILED" and not retry_failed:
            reason = (record.reason or "").split(". ")[0]
            trial.action, trial.note = "skip", f"failed ({reason[:120]}); --retry_failed runs it again"
        elif record.status == "FAILED":
            trial.note = "failed before; starting again"
        else:  # RUNNING / KILLED / SCHEDULED: the sweep was stopped while it ran
            trial.action, trial.note = "resume", "interrupted; resuming from its last checkpoint"
            trial.args = [*trial.args, "--ckpt_path", "last"]


def pack(trials: list[Trial], size: int, grid: Grid, bookkeeping: list[str]) -> list[Trial]:
    """The trials to run, `size` grid points per stacked trial: points that differ only in
    stackable axes (λ, τ, β, w, policy_mix, seed) share a model; others stay apart. Packing follows
    the grid's order, so an interrupted stack is packed again the same way and resumes."""
    import json

    todo = [t for t in trials if t.action != "skip"]
    if size <= 1:
        return todo
    groups: dict[tuple, list[Trial]] = {}
    for trial in todo:
        fixed = tuple(sorted((k, v) for k, v in trial.point.items() if k not in STACKABLE))
        groups.setdefault((fixed, weighted_sum(trial.config)), []).append(trial)
    packed = []
    for (fixed, _), members in groups.items():
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            if len(chunk) == 1:
                packed.append(chunk[0])
                continue
            args = grid.fit_args(dict(fixed)) + bookkeeping
            for option, field in STACKABLE.items():
                if field == "seed":
                    values = [int(run_seed(m.config)) for m in chunk]
                else:
                    values = [m.config["model"][field] for m in chunk]
                if field == "seed" or len(set(map(str, values))) > 1:
                    args += [f"--model.{field}", json.dumps(values)]
            if any(m.action == "resume" for m in chunk):
                args += ["--ckpt_path", "last"]
            packed.append(Trial(dict(fixed), args, "|".join(m.key for m in chunk), max(m.evaluations for m in chunk),
                                action="resume" if "--ckpt_path" in args else "start", members=chunk))
    return packed


def weighted_sum(config: dict | None) -> bool:
    """A `weighted_sum` run with λ > 0 doubles the actor's batch: it stacks only with its like."""
    model = (config or {}).get("model") or {}
    return model.get("policy_mix") == "weighted_sum" and float(model.get("lam") or 0) > 0


def has_checkpoint(run_dir: str | None) -> bool:
    """Whether a run folder (or a stacked run's folder, via its stack) holds a `last.ckpt` to resume."""
    return bool(run_dir) and run_checkpoint(Path(run_dir))[0].is_file()


def run_grid(todo: list[Trial], args, name: str, threads: int, gpus: float) -> list[tuple[Trial, str]]:
    """Run the trials on Tune; returns (trial, error) for those that failed."""
    from ray import tune

    from isep.sweeps.trial import run_trial

    scheduler = None
    if args.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        horizon = max(t.evaluations for t in todo)
        scheduler = ASHAScheduler(time_attr="evaluations", max_t=horizon, grace_period=max(1, horizon // 8),
                                  reduction_factor=3)
    by_label = {t.label(): t for t in todo}
    trainable = tune.with_resources(tune.with_parameters(run_trial, trials={k: t.args for k, t in by_label.items()}),
                                    {"cpu": args.cpus_per_run, "gpu": gpus})
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(list(by_label)), "threads": threads},
        tune_config=tune.TuneConfig(scheduler=scheduler, metric="eval/score", mode="max", reuse_actors=False),
        run_config=tune.RunConfig(
            name=name, storage_path=str(Path(args.root).resolve() / "_tune"), verbose=1,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )
    results = tuner.fit()
    failed = []
    for result in results:
        trial = by_label[result.config["trial"]]
        if result.error is not None:
            reason = str(result.error).strip().splitlines()[-1]
            reason = reason.split("TrialError: ", 1)[-1]  # (Ray's wrapper names the exception first)
            failed.append((trial, reason[:300]))
        elif args.scheduler == "asha" and result.metrics.get("evaluations", 0) < trial.evaluations:
            trial.early_stopped, trial.note = True, "stopped early by ASHA"
    return failed


def summarise(name: str, uri: str, out: Path) -> str:
    """The `isep compare` report of the sweep's experiment; writes Figure 5 (and the report's files) to `out`."""
    from isep.results.cli import compare_main

    code = compare_main(["--experiment", name, "--out", str(out), "--tracking_uri", uri])
    if code != 0:
        return "(no table: `isep compare` found nothing to compare)"
    figure = out / "figure5.png"
    if (out / "score_vs_lambda.png").is_file():
        figure.write_bytes((out / "score_vs_lambda.png").read_bytes())
    return str(figure)


def ray_env() -> dict[str, str]:
    """What the trials' processes need from this one's environment (paths made absolute)."""
    return {k: str(Path(os.environ[k]).resolve()) if k == "MINARI_DATASETS_PATH" else os.environ[k]
            for k in ENV_FORWARD if k in os.environ}


def run_sweep(todo: list[Trial], points: list[Trial], known: dict, records: SweepRecords, parent: str, args,
              name: str, ray) -> list[tuple[Trial, str]]:
    """Run the trials to do under the sweep's parent record on `ray` (started); returns the failed
    ones with why."""
    for trial in todo:
        trial.args += ["--mlflow.parent_run_id", parent]
    if not todo:
        return []
    for trial in points:  # a stale RUNNING record without a checkpoint would stay RUNNING forever
        record = known.get(trial.key)
        if trial.action == "resume" and record and not has_checkpoint(record.run_dir):
            records.mark(record.run_id, "KILLED", **{"isep.interrupted": "true"})
    gpus = args.gpus_per_run if args.gpus_per_run is not None else (1.0 if ray.cluster_resources().get("GPU") else 0.0)
    threads = max(1, int(args.cpus_per_run))
    try:
        failed = run_grid(todo, args, name, threads, gpus)
    finally:
        ray.shutdown()  # (ends the trials' processes)
    if received() is not None:  # Tune stops on SIGINT itself and returns: the sweep was still stopped
        raise Stopped(received())
    stopped = [t for t in todo if t.early_stopped]
    current = records.trials() if stopped else {}
    for trial in stopped:
        for member in trial.members or [trial]:
            record = current.get(member.key)
            if record:
                records.mark(record.run_id, "KILLED", **{EARLY_STOP_TAG: "true"})
    return failed


def end_records(records: SweepRecords, parent: str, err: BaseException) -> None:
    """A sweep that stopped: its parent record and its trials still RUNNING say KILLED (a stop signal,
    Ctrl-C) or FAILED (an error), with why; a re-run of the sweep resumes them from their checkpoints."""
    stopped = isinstance(err, KeyboardInterrupt)  # (isep's `Stopped`, or what Ray made of it)
    status = "KILLED" if stopped else "FAILED"
    reason = f"stopped by {as_stopped(err).name}" if stopped else f"{type(err).__name__}: {err}"[:500]
    try:
        for record in records.trials().values():
            if record.status == "RUNNING":
                records.mark(record.run_id, "KILLED", **{"isep.interrupted": "true", "failure_reason": reason})
        records.mark(parent, status, failure_reason=reason)
    except Exception:  # noqa: BLE001 - the store itself may be what failed
        pass


def sweep_main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args, grid_options = parser.parse_known_args(argv)
    grid = parse_grid(grid_options)
    name = args.name or sweep_name(grid)
    if args.address:  # before the imports below (Lightning, seconds): a wrong address fails at once
        check_address(args.address)
    from isep.callbacks.tracking import tracking_uri

    uri = absolute_uri(tracking_uri(args.tracking_uri))
    root = Path(args.root).resolve()
    bookkeeping = ["--trainer.default_root_dir", str(root), "--mlflow.experiment", name, "--mlflow.tracking_uri", uri,
                   "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    if args.cpus_per_run <= 0 or (args.gpus_per_run is not None and args.gpus_per_run < 0):
        raise ConfigError("--cpus_per_run must be > 0 and --gpus_per_run ≥ 0")
    if args.stack < 1:
        raise ConfigError("--stack takes the number of runs per stacked trial (≥ 1)")

    try:
        import ray  # noqa: F401
    except ImportError:
        raise ConfigError("`isep sweep` runs on Ray Tune: pip install -e '.[sweep]'") from None
    started = time.perf_counter()
    trials = plan_trials(grid, bookkeeping)  # every config checked before anything starts
    records = SweepRecords(uri, name)  # creates the store before any trial opens it
    known = records.trials()
    decide(trials, known, args.retry_failed)
    todo = pack(trials, args.stack, grid, bookkeeping)
    points = [t for t in trials if t.action != "skip"]
    print(f"isep sweep {name}: {len(trials)} trials, {len(points)} to run "
          f"({sum(t.action == 'resume' for t in trials)} to resume)"
          + (f" in {len(todo)} stacked trials" if args.stack > 1 else "") + f", MLflow {uri}, runs in {root}", flush=True)
    for trial in trials:
        print(f"  {trial.action:6} {trial.label()}" + (f"  [{trial.note}]" if trial.note else ""), flush=True)
    if args.stack > 1:
        for trial in todo:
            print(f"  trial  {trial.label()}", flush=True)
    if args.dry_run:
        return 0

    ray = start_ray(args, ray_env()) if todo else None  # (a cluster that cannot be joined: before any record)
    reclaim()  # (ray.init installed a SIGTERM handler that exits without ending the records)
    parent = records.parent_run({"configs": ",".join(grid.configs), **{f"axis.{k}": ",".join(v) for k, v in grid.axes.items()},
                                 **{f"fixed.{k}": v for k, v in grid.fixed.items()}})
    try:
        failed = run_sweep(todo, points, known, records, parent, args, name, ray)
    except BaseException as err:  # stopped (SIGTERM / Ctrl-C) or failed: no record stays RUNNING
        end_records(records, parent, err)
        raise
    records.mark(parent, "FINISHED", **{"isep.failed_trials": str(len(failed))})
    out = Path(args.out or Path("outputs") / "sweeps" / name)
    figure = summarise(name, uri, out)
    for trial, error in failed:
        print(f"failed: {trial.label()}: {error}", file=sys.stderr)
    print(f"isep sweep {name}: done in {time.perf_counter() - started:.0f} s; {len(failed)} failed; Figure 5: {figure}")
    return 0
