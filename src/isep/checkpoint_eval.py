"""`isep evaluate`: roll out a trained policy from its checkpoint, at one or several guidance weights.

Classifier-free guidance is a test-time knob of ISEP-FM (Eq. 7): the same trained velocity field
gives a more or less greedy policy with w. This evaluates a checkpoint at each w without
retraining, with the rollouts of training's evaluation (`isep.evaluation.Evaluator`: vectorized envs,
episode i seeded `seed + i`, D4RL normalized score), prints a table, appends the records to
`<run>/guidance_eval.jsonl` and logs the scores into the run's MLflow record
(`eval/guidance/<w>/normalized_score`, ..., at the checkpoint's step).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

from isep.errors import ConfigError
from isep.runs import RUN_ID_FILE, run_checkpoint, stack_member


def parse_floats(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise ConfigError(f"--{name} takes comma-separated numbers, e.g. 0.5,1,2,3; got {text!r}") from err
    if not values:
        raise ConfigError(f"--{name} is empty")
    return values


def locate(ckpt: str, run: int | None) -> tuple[Path, Path, int | None]:
    """(checkpoint file, the run's folder, its index in a stack) from a checkpoint, a run folder,
    or a stacked run's folder (which names its stack's checkpoint and its index)."""
    path = Path(ckpt)
    if path.is_dir():
        folder, (path, index) = path, run_checkpoint(path)
        if index is not None:
            if run is not None and run != index:
                raise ConfigError(f"{folder} is run {index} of its stack; --run {run} names another")
            run = index
    if not path.is_file():
        raise ConfigError(f"no checkpoint at {path}: pass a .ckpt file or a run folder holding checkpoints/last.ckpt")
    stack_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if run is None:
        return path, stack_dir, None
    members = sorted(p for p in stack_dir.glob(f"run{run}-*") if stack_member(p))
    return path, (members[0] if members else stack_dir), run


def load_run(ckpt: Path, run_dir: Path, device: str, run: int | None = None):
    """The agent of a checkpoint (run `run` of a stacked one) and the data settings of its run
    (from the run's config.yaml)."""
    import torch
    import yaml

    from isep.cli.checkpoints import load_failure, read_checkpoint
    from isep.module import ISEPModule

    try:
        module = ISEPModule.load_from_checkpoint(ckpt, map_location=device)
    except Exception as err:  # noqa: BLE001  (a corrupt or foreign file: say so, keep the file)
        read_checkpoint(ckpt)  # a missing, truncated or foreign file: its own one line
        raise ConfigError(f"cannot load {ckpt} as an isep checkpoint ({load_failure(err)})") from err
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"{config_file} is missing: `isep evaluate` reads the run's dataset from it")
    config = yaml.safe_load(config_file.read_text()) or {}
    agent = module.agent
    if agent.runs > 1:
        if run is None:
            raise ConfigError(f"{ckpt} holds {agent.runs} stacked runs: pass --run K (0..{agent.runs - 1}) "
                              "or the run's own folder")
        try:
            agent = agent.select_run(run)
        except IndexError as err:
            raise ConfigError(str(err)) from None
    agent.eval()
    step = int(torch.load(ckpt, map_location="cpu", weights_only=False).get("global_step", 0))
    return agent, config, step


def evaluate_weights(agent, config: dict, weights: list[float | None], episodes: int | None, num_envs: int,
                     seed: int, env_id: str | None, max_episode_steps: int | None) -> list[dict]:
    """One record per guidance weight (None = the trained w): metrics as the evaluation callback logs them."""
    from isep.data.datamodule import D4RLDataModule
    from isep.evaluation import Evaluator

    data = config.get("data") or {}
    dm = D4RLDataModule(**{k: data[k] for k in ("dataset", "obs_keys", "toy_size", "toy_seed") if k in data})
    if dm.toy is None and dm.task is None:
        dm.load_transitions()  # the dataset's own reference scores live in its metadata
    records = []
    evaluation = Evaluator(episodes=episodes, num_envs=num_envs, seed=seed, env_id=env_id,
                           max_episode_steps=max_episode_steps)
    evaluation.prepare_for(dm, agent.obs_dim, agent.act_dim)
    for w in weights:
        evaluation.guidance = w
        start = time.perf_counter()
        metrics, record = evaluation.measure(agent, dm)[0]
        used = w if w is not None else float(agent.guidance.flatten()[0])
        records.append({"guidance": used, **metrics, "seconds": time.perf_counter() - start,
                        **{k: v for k, v in record.items() if k in ("returns", "seeds")}})
    return records


def log_to_mlflow(run_dir: Path, records: list[dict], step: int, uri: str | None) -> str | None:
    """Add the scores to the run's MLflow record; returns the run id, or None without one."""
    id_file = run_dir / RUN_ID_FILE
    if not id_file.is_file():
        return None
    import mlflow

    from isep.callbacks.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri(uri))
    run_id = id_file.read_text().strip()
    try:
        client.get_run(run_id)
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"the run's MLflow record {run_id} is not in the store {tracking_uri(uri)} "
                          f"({type(err).__name__}); point --mlflow.tracking_uri at the run's store, or pass --no-mlflow") from err
    metrics = []
    for r in records:
        for key in ("eval/normalized_score", "eval/return_mean", "eval/return_std", "eval/expected_reward",
                    "eval/share_near_optimum"):
            if key in r:
                name = f"eval/guidance/{r['guidance']:g}/{key.split('/', 1)[1]}"
                metrics.append(mlflow.entities.Metric(name, float(r[key]), int(time.time() * 1000), step))
    client.log_batch(run_id, metrics=metrics)
    client.log_artifact(run_id, str(run_dir / "guidance_eval.jsonl"))
    return run_id


def format_table(records: list[dict]) -> str:
    toy = "eval/expected_reward" in records[0]
    head = "| guidance w | expected reward |" if toy else "| guidance w | return (mean ± std) | normalized score |"
    lines = [head, "|---|---|" if toy else "|---|---|---|"]
    for r in records:
        if toy:
            lines.append(f"| {r['guidance']:g} | {r['eval/expected_reward']:.4f} |")
        else:
            score = r.get("eval/normalized_score")
            lines.append(f"| {r['guidance']:g} | {r['eval/return_mean']:.1f} ± {r['eval/return_std']:.1f} | "
                         f"{'–' if score is None else f'{score:.1f}'} |")
    return "\n".join(lines)


def evaluate_main(argv: Sequence[str]) -> int:
    import torch

    from isep.precision import SUPPORTED, check_device

    parser = argparse.ArgumentParser(prog="isep evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_path", required=True, help="a checkpoint (.ckpt) or a run folder (uses checkpoints/last.ckpt)")
    parser.add_argument("--run", type=int, help="which run of a stacked checkpoint (its index in the stack)")
    parser.add_argument("--guidance", help="comma-separated guidance weights w (flow actor); default: the trained w")
    parser.add_argument("--episodes", type=int, help="episodes per weight (default: the task's, 20 on Gym-MuJoCo)")
    parser.add_argument("--num_envs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=100_000, help="seed of the first episode (the callback's default)")
    parser.add_argument("--env_id", help="evaluate in this env instead of the dataset's")
    parser.add_argument("--max_episode_steps", type=int)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=SUPPORTED,
                        help="the policy's precision (default: the one the checkpoint was trained in)")
    parser.add_argument("--mlflow.tracking_uri", dest="tracking_uri", help="the run's MLflow store (default as `isep fit`)")
    parser.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not write to the run's MLflow record")
    args = parser.parse_args(argv)

    ckpt, run_dir, run = locate(args.ckpt_path, args.run)
    weights: list[float | None] = parse_floats(args.guidance, "guidance") if args.guidance else [None]
    if any(w is not None and w < 0 for w in weights):
        raise ConfigError(f"guidance weights must be ≥ 0, got {args.guidance}")
    agent, config, step = load_run(ckpt, run_dir, args.device, run)
    if args.precision:
        check_device(args.precision, torch.device(args.device))
        agent.set_precision(args.precision)
    if agent.actor_kind != "flow" and args.guidance:
        raise ConfigError("--guidance applies to the flow actor (ISEP-FM); this checkpoint has a Gaussian actor "
                          "(evaluate it without --guidance)")
    records = evaluate_weights(agent, config, weights, args.episodes, args.num_envs, args.seed, args.env_id,
                               args.max_episode_steps)
    with open(run_dir / "guidance_eval.jsonl", "a") as f:
        for r in records:
            f.write(json.dumps({"checkpoint": str(ckpt), "step": step, **r}) + "\n")
    print(f"{ckpt}{'' if run is None else f' run {run}'} (step {step}, precision {agent.precision.name})")
    print(format_table(records))
    if args.mlflow:
        run_id = log_to_mlflow(run_dir, records, step, args.tracking_uri)
        print(f"logged to MLflow run {run_id}" if run_id else "no MLflow record for this run (no mlflow_run_id file)")
    return 0

