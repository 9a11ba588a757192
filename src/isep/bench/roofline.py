"""The update against the hardware's limit: FLOP per update, achieved GFLOP/s, and the ratio to
the measured matrix-product peak of the dtype the update multiplies in, per precision.

- Peak: GFLOP/s of a 512 × 512 × 512 matmul in fp32 and bf16 on the device, measured in the same
  run, with the hardware it ran on (the CPU's model and bf16 units: an Intel core with AMX gave
  fp32 ≈ 180, bf16 ≈ 1,230 GFLOP/s; the AMD EPYC (Zen 4, AVX-512 BF16, no AMX) this project ran
  on on 2026-12-02, quiet, gave 78-92 and 215-219: the bf16 gain is a property of the CPU).
- FLOP per update: counted by `torch.utils.flop_counter` from the shapes of every matrix product of
  one eager update (forward and backward), split into the a_π sampler and the rest; nothing is
  estimated.
- Rows: both actors, λ = 0 and the paper's λ, each `--trainer.precision` isep runs (32-true,
  bf16-mixed with the `safe` rule, and with only the sampler in bf16), eager and compiled.
"""

from __future__ import annotations

import statistics
import time

import torch

PRECISIONS = (("32-true", "safe"), ("bf16-mixed", "safe"), ("bf16-mixed", "sampler"))


def matmul_peak(dtype: torch.dtype, device: str, n: int = 512, seconds: float = 1.0) -> float:
    """GFLOP/s of n × n × n matrix products in `dtype` on `device` (median of 3 windows)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(3):
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            a @ b
            done += 1
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        rates.append(2 * n**3 * done / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


class DtypeFlops:
    """FLOP of the matrix products run inside the block, by the dtype they multiply in (the dtype of
    their first input): `torch.utils.flop_counter`'s formulas, counted per dtype, so that each
    product is held against the peak of what it actually computes in."""

    def __init__(self) -> None:
        self.by_dtype: dict[str, float] = {"fp32": 0.0, "bf16": 0.0}

    def __enter__(self) -> "DtypeFlops":
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        counts = self.by_dtype

        class Count(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                formula = flop_registry.get(func.overloadpacket)
                if formula is not None:
                    first = next(a for a in args if isinstance(a, torch.Tensor))
                    counts["bf16" if first.dtype == torch.bfloat16 else "fp32"] += formula(*args, **kwargs, out_val=out)
                return out

        self._mode = Count()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    @property
    def total(self) -> float:
        return sum(self.by_dtype.values())


def update_flops(agent) -> dict[str, float]:
    """FLOP of one update of `agent` (ready to step): in total, in fp32 and bf16 products, and in the a_π sampler."""
    from isep.rng import Draws, Stream

    with DtypeFlops() as counted:
        agent.train_step()
    sampler = 0.0
    if agent.draws_policy:
        draws = Draws(agent.keys, agent.updates)
        batch = agent.buffer.sample(draws, agent.batch_size)
        with DtypeFlops() as drawn:
            agent.policy_actions(batch["observations"], draws.normal(Stream.POLICY_NOISE, batch["actions"].shape[1:]))
        sampler = drawn.total
    return {"total": counted.total, **counted.by_dtype, "sampler": sampler}


def bench_precisions(actor: str, lam: float, device: str, quick: bool, peaks: dict[str, float]) -> list[dict]:
    """One row per (precision, rule, mode): updates/s, FLOP per update, GFLOP/s, roofline ratio."""
    from isep.bench.throughput import make_agent, plan, timed_windows

    per_window, warmup = plan(device, actor, lam, quick)
    rows = []
    # without bf16 units bf16 is emulated (~60× slower than fp32 on such a CPU): nothing to measure
    for precision, parts in PRECISIONS if peaks.get("bf16_units", True) else PRECISIONS[:1]:
        for mode in ("eager", "compile" if device == "cpu" else "graph"):
            agent = make_agent(actor, lam, device, warmup + 3 * per_window)
            agent.set_precision(precision, parts)
            flops = update_flops(agent)
            step = agent.step_function(mode)
            timed_windows(step, warmup, 1, device)
            rate = statistics.median(timed_windows(step, per_window, 3, device))
            rows.append({"device": device, "actor": actor, "lam": lam, "precision": precision, "bf16_parts": parts,
                         "mode": mode, "updates_per_s": round(rate, 1), "gflop_per_update": round(flops["total"] / 1e9, 3),
                         "sampler_share": round(flops["sampler"] / flops["total"], 3),
                         "gflop_per_s": round(flops["total"] * rate / 1e9, 1),
                         "bf16_share": round(flops["bf16"] / flops["total"], 3),
                         "roofline": round(ideal_seconds(flops, peaks) * rate, 3)})
    return rows


def ideal_seconds(flops: dict[str, float], peaks: dict[str, float]) -> float:
    """The time the update's matrix products take at the measured peaks, each product at the peak of
    the dtype it was counted in (`DtypeFlops`): the roofline is this over the update's real time."""
    return (flops["bf16"] / peaks["bf16"] + flops["fp32"] / peaks["fp32"]) / 1e9


def peaks_of(device: str) -> dict:
    """The measured fp32 and bf16 peaks of `device`, and what it is (they differ 3× between CPUs)."""
    from isep.precision import cpu_bf16_units, cpu_model

    if device.startswith("cuda"):
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{cpu_model() or 'CPU'}, bf16 units: {cpu_bf16_units() or 'none'}"
    from isep.precision import native_bf16

    return {"fp32": round(matmul_peak(torch.float32, device), 1), "bf16": round(matmul_peak(torch.bfloat16, device), 1),
            "hardware": hardware, "bf16_units": native_bf16(torch.device(device))}


def markdown(rows: list[dict], peaks: dict[str, dict[str, float]]) -> list[str]:
    lines = ["", "| device | actor | λ | precision | bf16 parts | mode | updates/s | GFLOP/update (sampler share, bf16 share) | "
             "GFLOP/s | roofline |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        parts = r["bf16_parts"] if r["precision"] == "bf16-mixed" else "–"
        lines.append(f"| {r['device']} | {r['actor']} | {r['lam']} | {r['precision']} | {parts} | {r['mode']} | "
                     f"{r['updates_per_s']} | {r['gflop_per_update']} ({r['sampler_share']:.0%}, {r.get('bf16_share', 0):.0%}) | "
                     f"{r['gflop_per_s']} | "
                     f"{r['roofline']:.0%} |")
    for device, p in peaks.items():
        if not p.get("bf16_units", True):
            lines.append(f"\nNo bf16 rows on {device}: it has no bf16 matrix units, so bf16 is emulated "
                         f"({p['bf16']} GFLOP/s against fp32's {p['fp32']}) and isep refuses it there.")
        lines.append(f"\nMeasured matmul peak on {device} ({p.get('hardware', '?')}; 512³, same run): fp32 {p['fp32']} GFLOP/s, bf16 {p['bf16']} GFLOP/s. "
                     "Roofline: the time of the update's matrix products at those peaks (each product at the peak of the dtype it "
                     "was counted in) "
                     "over the update's measured time, optimizer and element-wise work included.")
    return lines
