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
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers: the tiny agents the tests use

from tests.helpers import OBS_DIM, ready_agent, small_buffer  # noqa: E402

CHECKPOINTS = (1, 10, 100, 300)
SIZES = dict(critic_hidden=[256, 256], actor_hidden=[256, 256])  # IQL's widths (tiny ones sum alike here)


def drift(actor: str, runs: int = 2) -> list[dict]:
    """Per checkpoint: the worst relative parameter difference over runs and tensors, and the
    worst action difference of the policies on 256 fixed states."""
    lam, seed = [0.0, 0.3, 0.5][:runs], [0, 1, 2][:runs]
    stack = ready_agent(actor, lam, max_reward=0.0, seed=seed, **SIZES)
    alone = [ready_agent(actor, lam[r], max_reward=0.0, seed=seed[r], **SIZES) for r in range(runs)]
    for agent in [stack, *alone]:
        agent.attach_data(small_buffer(4000), 256)
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
