"""ISEP-FM's a_π draw, its settings side by side: updates/s of the flow actor at the paper's λ with
the draw at the trained guidance w (two branches per Euler step), at w = 1 (one branch) and at
half the Euler steps, fp32 and bf16-mixed, eager and on the fast path, all in one run; and the
plain-torch reference (`isep.bench.reference`) with the same draw, so the ratio stays like for like.

bf16 rows run only where the device has bf16 matrix units (`isep.precision.native_bf16`): on a CPU
without them bf16 is emulated, tens of times slower than fp32, and its figure would say nothing.
"""

from __future__ import annotations

import statistics

import torch

FLOW_STEPS = 10  # the configs' Euler steps: "half" below is 5


def draw_settings() -> dict[str, dict]:
    """The draws compared: name → the `--model.*` settings that select it."""
    return {
        "trained w": {},
        "w = 1": {"policy_guidance": 1.0},
        "half steps": {"policy_flow_steps": FLOW_STEPS // 2},
    }


def bench_draws(device: str, quick: bool, log=print) -> list[dict]:
    """One row per (precision, draw, mode) of ISEP-FM at the paper's λ, and the reference's rate per draw."""
    from isep.bench.throughput import PAPER, make_agent, plan, reference_step, timed_windows
    from isep.precision import native_bf16

    lam = PAPER["flow"]["lam"]
    per_window, warmup = plan(device, "flow", lam, quick)
    precisions = ["32-true"] + (["bf16-mixed"] if native_bf16(torch.device(device)) else [])
    fast = "compile" if device == "cpu" else "graph"
    rows = []
    for name, extra in draw_settings().items():
        ref = reference_step("flow", lam, device, **extra)
        timed_windows(ref, max(2, warmup // 5), 1, device)
        reference = statistics.median(timed_windows(ref, per_window, 3, device))
        for precision in precisions:
            for mode in ("eager", fast):
                agent = make_agent("flow", lam, device, warmup + 3 * per_window, **extra)
                agent.set_precision(precision)
                step = agent.step_function(mode)
                timed_windows(step, warmup, 1, device)
                rate = statistics.median(timed_windows(step, per_window, 3, device))
                rows.append({"device": device, "actor": "flow", "lam": lam, "draw": name, "settings": extra,
                             "precision": precision, "mode": mode, "updates_per_s": round(rate, 1),
                             "reference_updates_per_s": round(reference, 1)})
                log(rows[-1])
    return rows


def markdown(rows: list[dict]) -> list[str]:
    """The draw table, each rate with its ratio to the trained-w draw of the same precision and mode."""
    base = {(r["device"], r["precision"], r["mode"]): r["updates_per_s"] for r in rows if r["draw"] == "trained w"}
    lines = ["", "ISEP-FM λ 0.3, the a_π draw (`--model.policy_guidance`, `--model.policy_flow_steps`):", "",
             "| device | draw | precision | mode | updates/s | × trained w | reference updates/s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["updates_per_s"] / base[(r["device"], r["precision"], r["mode"])]
        lines.append(f"| {r['device']} | {r['draw']} | {r['precision']} | {r['mode']} | {r['updates_per_s']} | "
                     f"{ratio:.2f}× | {r['reference_updates_per_s']} |")
    if not any(r["precision"] == "bf16-mixed" for r in rows):
        lines.append("\nNo bf16 rows: this device has no bf16 matrix units (bf16 would be emulated).")
    return lines
