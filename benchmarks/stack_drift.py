"""How far a stacked run drifts from the same run trained alone, update by update.

A stack's batched matrix products (at the widths the paper uses) sum in another order than one run's, so the two agree within
float32 rounding after one update and, training being chaotic, drift apart after that. This
trains a stack of R runs and each run alone (same settings, seeds, data; eager, fp32, CPU) and
writes the largest relative parameter difference ‖stack − alone‖∞ / ‖alone‖∞ after each of the
checkpoints, and the policies' action gap on fixed states, to `<out>/stack_drift.json`.

    python benchmarks/stack_drift.py --out bench-results
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from isep.agent import ISEPAgent
from isep.data.buffer import TransitionBuffer
from isep.data.transitions import Transitions

CHECKPOINTS = (1, 10, 100, 300)
OBS_DIM, ACT_DIM = 3, 2  # small random data: the drift comes from the networks' widths, not the data
SIZES = dict(critic_hidden=[256, 256], actor_hidden=[256, 256], label_embed_dim=4, flow_steps=3)  # IQL's widths


def ready_agent(actor: str, lam: float | list[float], seed: int | list[int]) -> ISEPAgent:
    """An agent of SIZES on 4,000 random transitions (batch 256), statistics set: ready to step."""
    agent = ISEPAgent(OBS_DIM, ACT_DIM, actor=actor, lam=lam, seed=seed, **SIZES)
    data = Transitions.random(4000, OBS_DIM, ACT_DIM, 0, terminal_prob=0.1, action_bound=0.9)
    agent.attach_data(TransitionBuffer.from_transitions(data), 256)
    agent.set_data_stats(torch.zeros(OBS_DIM), torch.ones(OBS_DIM), torch.tensor(0.0), torch.tensor(1.0))
    return agent


def drift(actor: str, runs: int = 2) -> list[dict]:
    """Per checkpoint: the worst relative parameter difference over runs and tensors, and the
    worst action difference of the policies on 256 fixed states."""
    lam, seed = [0.0, 0.3, 0.5][:runs], [0, 1, 2][:runs]
    stack = ready_agent(actor, lam, seed)
    alone = [ready_agent(actor, lam[r], seed[r]) for r in range(runs)]
    steps = [stack.step_function("eager")] + [a.step_function("eager") for a in alone]
    states = torch.randn(256, OBS_DIM, generator=torch.Generator().manual_seed(7))
    rows, done = [], 0
    for target in CHECKPOINTS:
        for _ in range(target - done):
            for step in steps:
                step()
        done = target
        worst, gap = 0.0, 0.0
        for r, agent in enumerate(alone):
            mine, theirs = stack.select_run(r).state_dict(), agent.state_dict()
            for name, tensor in theirs.items():
                if torch.is_tensor(tensor) and tensor.is_floating_point() and tensor.numel() and name.startswith(
                        ("critic.", "value.", "actor.")):
                    scale = float(tensor.abs().max()) or 1.0
                    worst = max(worst, float((mine[name] - tensor).abs().max()) / scale)
            if actor == "gaussian":  # the mean action: no sampling noise in the gap
                gap = max(gap, float((stack.select_run(r).act(states) - agent.act(states)).abs().max()))
        rows.append({"updates": target, "max_relative_parameter_difference": worst,
                     "max_action_difference": gap if actor == "gaussian" else None})
    return rows


def cpu_name() -> str:
    import platform

    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    result = {"what": "a stack of 2 runs (λ 0 and 0.3; seeds 0, 1) against each run alone; networks 256×256, "
                      "batch 256, random data, eager fp32 on the CPU", "cpu": cpu_name(),
              "gaussian": drift("gaussian"), "flow": drift("flow")}
    result["seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stack_drift.json").write_text(json.dumps(result, indent=1))
    for actor in ("gaussian", "flow"):
        for row in result[actor]:
            gap = "" if row["max_action_difference"] is None else f", actions {row['max_action_difference']:.2g}"
            print(f"{actor:8s} after {row['updates']:5d} updates: parameters {row['max_relative_parameter_difference']:.2g}{gap}")


if __name__ == "__main__":
    main()
