"""`isep bench` (`make bench`): gradient updates per second of the ISEP update, and evaluation speed.

For each device (the CPU with one torch thread, and CUDA where present), each actor (Gaussian,
flow) and λ ∈ {0, the paper's walker2d-medium value}, on walker2d shapes (17-d states, 6-d
actions, batch 256, Appendix C networks) and data resident on the device, it times:

- `reference`: the same math written the plain way (`isep.bench.reference`, CORL's style);
- `eager`: `ISEPModule`'s update (`train_step`, the code `isep fit` runs) with the fast path off;
- `fast`: the same update on the fast path (compiled on the CPU; compiled + one CUDA graph on CUDA);

each `eager` / `fast` both in a plain Python loop and driven by `Trainer.fit` in the same process,
so Lightning's cost is a ratio of two numbers measured side by side. Warm-up updates (and with
them compilation and capture, reported apart as `setup_s`) are excluded; the clock is read after
a device synchronisation; each figure is the median over `--windows` timed windows. Kernels per
update: dispatched (non-view, non-allocation) ops on the CPU in eager mode, Inductor's generated
kernels plus extern matmuls when compiled, CUDA kernels from the profiler on a GPU. Evaluation:
environment steps/s of `RolloutEvaluation` with a paper-sized policy on HalfCheetah-v5 (the
walker2d shapes, without early terminations). Writes `throughput.json` and `throughput.md`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from isep.bench.report import markdown
from isep.precision import SUPPORTED, cpu_bf16_units, cpu_model

OBS_DIM, ACT_DIM, BATCH = 17, 6, 256  # walker2d
PAPER = {  # walker2d-medium-v2, Appendix C Tables 3 and 4
    "gaussian": {"lam": 0.3, "expectile": 0.8, "beta": 5.0},
    "flow": {"lam": 0.3, "expectile": 0.8, "guidance": 2.0},
}
ACTOR_HIDDEN = {"gaussian": (256, 256), "flow": (512, 512, 512, 512)}
MATMULS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def synthetic_walker(n: int = 100_000, seed: int = 0):
    """Walker-shaped random transitions."""
    from isep.data.transitions import Transitions

    return Transitions.random(n, OBS_DIM, ACT_DIM, seed)


def walker_buffer(device: str):
    """The synthetic walker transitions, resident on `device` (every path draws its batches from these)."""
    from isep.data.buffer import TransitionBuffer

    return TransitionBuffer.from_transitions(synthetic_walker(), device)


def data_stats() -> dict:
    """The statistics the module keeps (a DataModule's `data_stats`): the same under `fit` and in the loop."""
    return {"obs_mean": torch.zeros(OBS_DIM), "obs_std": torch.ones(OBS_DIM),
            "max_reward": torch.tensor(1.0), "max_abs_reward": torch.tensor(1.0)}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def settings(actor: str, lam: float, runs: int = 1, **extra) -> dict:
    """The paper's walker2d settings of `actor` at `lam` (a stack of `runs` seeds), with `extra` settings."""
    kw = {**PAPER[actor], "lam": lam, **extra}
    if runs > 1:
        kw = {**kw, "lam": [lam] * runs, "seed": list(range(runs))}
    return kw


def build_module(actor: str, lam: float, fast: bool, runs: int = 1):
    """The bench's `ISEPModule` (walker2d shapes, the paper's settings) for `Trainer.fit`."""
    from isep.module import ISEPModule

    return ISEPModule(OBS_DIM, ACT_DIM, actor=actor, actor_hidden=ACTOR_HIDDEN[actor], log_every=1000,
                      fast=fast, **settings(actor, lam, runs))


def build_agent(actor: str, lam: float, runs: int = 1, **extra):
    """The bench's `ISEPAgent` (the module's settings, and `extra` ones), with its data statistics."""
    from isep.agent import ISEPAgent

    agent = ISEPAgent(OBS_DIM, ACT_DIM, actor=actor, actor_hidden=ACTOR_HIDDEN[actor], **settings(actor, lam, runs, **extra))
    agent.set_data_stats(**data_stats())
    return agent


def make_agent(actor: str, lam: float, device: str, total: int, runs: int = 1, **extra):
    """The agent ready for a plain loop, set up as `Trainer.fit(max_steps=total)` sets it up: data
    statistics, a cosine schedule over `total` updates, the resident dataset. No Lightning."""
    agent = build_agent(actor, lam, runs, **extra).to(device)
    agent.plan(total)
    agent.attach_data(walker_buffer(device), BATCH)
    return agent


def step_of(agent, fast: bool, device: str, total: int):
    """The agent's update on the fast path `fit` would choose (`fast`), or eager."""
    from isep.fast import choose_mode

    mode = choose_mode(fast, torch.device(device), total)
    return agent.step_function(mode), mode


def timed_windows(call: Callable[[], None], updates: int, windows: int, device: str) -> list[float]:
    """Updates/s of `windows` consecutive windows of `updates` calls."""
    rates = []
    for _ in range(windows):
        sync(device)
        start = time.perf_counter()
        for _ in range(updates):
            call()
        sync(device)
        rates.append(updates / (time.perf_counter() - start))
    return rates


def reference_step(actor: str, lam: float, device: str, **extra) -> Callable[[], None]:
    """One `ReferenceISEP` update on a batch drawn the CORL way (`torch.randint` on the device) from
    the same data as the module's (with the same `extra` settings)."""
    from isep.bench.reference import ReferenceISEP

    ref = ReferenceISEP(OBS_DIM, ACT_DIM, actor, actor_hidden=ACTOR_HIDDEN[actor], device=device,
                        **settings(actor, lam, **extra))
    buffer = walker_buffer(device)

    def step() -> None:
        b = buffer.gather(torch.randint(0, len(buffer), (BATCH,), device=device))
        ref.step(b["observations"], b["actions"], b["rewards"], b["next_observations"], b["dones"])

    return step


def bench_reference(actor: str, lam: float, device: str, updates: int, warmup: int, windows: int) -> dict:
    step = reference_step(actor, lam, device)
    timed_windows(step, warmup, 1, device)
    return {"rates": timed_windows(step, updates, windows, device)}


def bench_plain(actor: str, lam: float, fast: bool, device: str, updates: int, warmup: int, windows: int,
                runs: int = 1) -> dict:
    """The agent's update in a bare loop (no Lightning)."""
    total = warmup + updates * windows
    step, mode = step_of(make_agent(actor, lam, device, total, runs), fast, device, total)
    warm_s = warmup / timed_windows(step, warmup, 1, device)[0]
    rates = timed_windows(step, updates, windows, device)
    return {"rates": rates, "setup_s": max(0.0, warm_s - warmup / statistics.median(rates)), "mode": mode}


def bench_fit(actor: str, lam: float, fast: bool, device: str, updates: int, warmup: int, windows: int) -> dict:
    """The same update driven by `Trainer.fit`, as `isep fit` runs it."""
    import lightning as L

    from isep.data.buffer import UpdateClock

    total = warmup + updates * windows

    class Data(L.LightningDataModule):
        def __init__(self) -> None:
            super().__init__()
            self.batch_size, self.steps_per_epoch, self.updates_per_call = BATCH, total, 1
            self.buffer = walker_buffer(device)

        def data_stats(self) -> dict:
            return data_stats()

        def train_dataloader(self):
            return UpdateClock(self.steps_per_epoch, self.updates_per_call)

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.marks: list[tuple[int, float]] = []

        def on_train_batch_end(self, trainer, *args) -> None:
            step = trainer.global_step
            boundary = warmup + len(self.marks) * updates
            if step >= boundary and len(self.marks) <= windows:
                sync(device)
                self.marks.append((step, time.perf_counter()))

    module = build_module(actor, lam, fast)
    clock = Clock()
    trainer = L.Trainer(accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1, max_steps=total,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, callbacks=[clock])
    trainer.fit(module, Data())
    marks = clock.marks
    rates = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(marks[:-1], marks[1:])]
    return {"rates": rates}


def _dispatched_ops(call: Callable[[], None]) -> tuple[int, int]:
    """(kernels, of which matmuls) dispatched by one eager call: every op but views and allocations."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {"all": 0, "mm": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.name()
            if not func.is_view and "empty" not in name and name not in ("aten::detach", "aten::lift_fresh"):
                counts["all"] += 1
                counts["mm"] += name.split(".")[0] in MATMULS
            return func(*args, **(kwargs or {}))

    with Count():
        call()
    return counts["all"], counts["mm"]


def kernels_per_update(actor: str, lam: float, device: str, total: int) -> dict:
    """Kernels launched by one update (of a run of `total`): eager, reference and fast path."""
    out: dict = {}
    step, _ = step_of(make_agent(actor, lam, device, total), False, device, total)
    step()
    if device == "cpu":
        out["eager"], matmuls = _dispatched_ops(step)
        out["reference"], _ = _dispatched_ops(reference_step(actor, lam, device))  # the timed step, draw included
        import torch._inductor.config as inductor_config
        import torch._inductor.metrics as inductor_metrics

        fast, _ = step_of(make_agent(actor, lam, device, total), True, device, total)
        inductor_metrics.reset()
        with inductor_config.patch(fx_graph_cache=False):  # count what a fresh compile generates
            fast()
        out["fast"] = inductor_metrics.generated_kernel_count + matmuls
        return out
    from torch.profiler import ProfilerActivity, profile

    def cuda_kernels(call: Callable[[], None], n: int = 5) -> float:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(n):
                call()
            torch.cuda.synchronize()
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA) / n

    out["eager"] = cuda_kernels(step)
    fast, _ = step_of(make_agent(actor, lam, device, total), True, device, total)
    for _ in range(6):
        fast()
    out["fast"] = cuda_kernels(fast)
    return out


def bench_evaluation(actor: str, device: str, precision: str = "32-true", episodes: int = 10, steps: int = 200) -> float:
    """Environment steps/s of training's evaluation (`Evaluator`) with a paper-sized (untrained)
    policy in `precision` (bf16-mixed: the flow sampler in bf16)."""
    from isep.evaluation import Evaluator

    agent = build_agent(actor, 0.0).to(device)
    agent.set_precision(precision)
    evaluation = Evaluator(episodes=episodes, num_envs=10, max_episode_steps=steps)
    evaluation.prepare("HalfCheetah-v5", None, None, OBS_DIM, ACT_DIM)
    (metrics, _), = evaluation.rollouts(agent, None)
    return metrics["eval/env_steps_per_s"]


def plan(device: str, actor: str, lam: float, quick: bool) -> tuple[int, int]:
    """(updates per window, warm-up updates) for a measurement of a few seconds."""
    if device.startswith("cuda"):
        return (200 if quick else 1000), 50
    per_window = 150 if actor == "gaussian" else (60 if lam == 0 else 12)
    return (max(per_window // 3, 6) if quick else per_window), 10


def median(result: dict) -> float:
    return round(statistics.median(result["rates"]), 1)


def run(devices: Sequence[str], actors: Sequence[str], windows: int, quick: bool, kernels: bool,
        evaluation: bool, stacks: Sequence[int] = (), processes: int = 0, updates: bool = True,
        precisions: bool = True, draws: bool = True, log: Callable[[str], None] = print) -> dict:
    """Every measurement for `devices` × `actors`: the update (`updates`), stacked runs (`stacks`),
    N processes against N stacked runs (`processes`, CPU), evaluation speed (`evaluation`),
    each precision against the measured matmul peaks (`precisions`, `isep.bench.roofline`) and
    ISEP-FM's a_π draw settings (`draws`, `isep.bench.draw`)."""
    from isep.bench import roofline
    from isep.bench.draw import bench_draws
    from isep.bench.stacks import bench_processes, bench_stack

    rows, evals, stacked, versus, precision_rows, peaks, draw_rows = [], [], [], [], [], {}, []
    for device in devices:
        if draws and "flow" in actors:
            draw_rows += bench_draws(device, quick, log=lambda row: log(json.dumps(row)))
        if precisions:
            peaks[device] = roofline.peaks_of(device)
            log(json.dumps({"device": device, "matmul_peak_gflops": peaks[device]}))
            for actor in actors:
                for lam in (0.0, PAPER[actor]["lam"]):
                    for row in roofline.bench_precisions(actor, lam, device, quick, peaks[device]):
                        precision_rows.append(row)
                        log(json.dumps(row))
        for actor in actors:
            for runs in stacks:
                stacked.append(bench_stack(actor, runs, True, device, windows, quick))
                log(json.dumps(stacked[-1]))
        if device == "cpu" and processes > 1:
            for actor in actors:
                versus.append(bench_processes(actor, processes, 10.0 if quick else 30.0))
                log(json.dumps(versus[-1]))
        for actor in actors if updates else ():
            for lam in (0.0, PAPER[actor]["lam"]):
                per_window, warmup = plan(device, actor, lam, quick)
                timing = (device, per_window, warmup, windows)
                ref = bench_reference(actor, lam, *timing)
                eager_plain = bench_plain(actor, lam, False, *timing)
                eager_fit = bench_fit(actor, lam, False, *timing)
                fast_plain = bench_plain(actor, lam, True, *timing)
                fast_fit = bench_fit(actor, lam, True, *timing)
                row = {
                    "device": device, "actor": actor, "lam": lam, "batch": BATCH, "updates_per_window": per_window,
                    "windows": windows, "fast_mode": fast_plain["mode"],
                    "reference": median(ref), "eager_plain": median(eager_plain), "eager_fit": median(eager_fit),
                    "fast_plain": median(fast_plain), "fast_fit": median(fast_fit),
                    "fast_setup_s": round(fast_plain["setup_s"], 1),
                    "raw": {"reference": ref["rates"], "eager_plain": eager_plain["rates"],
                            "eager_fit": eager_fit["rates"], "fast_plain": fast_plain["rates"],
                            "fast_fit": fast_fit["rates"]},
                }
                row["eager_fit_over_plain_time"] = round(row["eager_plain"] / row["eager_fit"], 3)
                row["fast_fit_over_plain_time"] = round(row["fast_plain"] / row["fast_fit"], 3)
                row["fast_fit_over_reference"] = round(row["fast_fit"] / row["reference"], 2)
                if kernels:
                    row["kernels_per_update"] = kernels_per_update(actor, lam, device, warmup + per_window * windows)
                rows.append(row)
                log(json.dumps({k: v for k, v in row.items() if k != "raw"}))
        if evaluation:
            for actor in actors:
                for precision in SUPPORTED:
                    evals.append({"device": device, "actor": actor, "actor_hidden": list(ACTOR_HIDDEN[actor]),
                                  "env": "HalfCheetah-v5", "num_envs": 10, "precision": precision,
                                  "env_steps_per_s": round(bench_evaluation(actor, device, precision), 1)})
                    log(json.dumps(evals[-1]))
    return {"rows": rows, "evaluation": evals, "stacked": stacked, "processes": versus,
            "precision": precision_rows, "matmul_peaks": peaks, "draws": draw_rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="isep bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-results", help="folder for throughput.json and throughput.md")
    parser.add_argument("--device", default="all", help="cpu, cuda, or all (the CPU, and CUDA where present)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (1: one run per core)")
    parser.add_argument("--windows", type=int, default=3, help="timed windows per figure (the median is reported)")
    parser.add_argument("--actors", default="gaussian,flow")
    parser.add_argument("--quick", action="store_true", help="shorter windows (a smoke test of the benchmark)")
    parser.add_argument("--no-kernels", dest="kernels", action="store_false", help="skip counting kernels per update")
    parser.add_argument("--no-eval", dest="evaluation", action="store_false", help="skip the evaluation speed")
    parser.add_argument("--stacks", default="1,8,30", help="stack sizes (runs in one model) to time; '' for none")
    parser.add_argument("--processes", type=int, default=4,
                        help="on the CPU: N separate processes against N stacked runs (0: skip)")
    parser.add_argument("--only", choices=("updates", "stacks", "precision", "draw"), help="run one part of the benchmark")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    devices = [d for d in devices if d == "cpu" or torch.cuda.is_available()]
    if args.device == "cuda" and not devices:
        print("isep bench: no CUDA device here", flush=True)
        return 2
    only = args.only
    stacks = [int(x) for x in args.stacks.split(",") if x.strip()] if only in (None, "stacks") else []
    result = run(devices, args.actors.split(","), args.windows, args.quick, args.kernels and only in (None, "updates"),
                 args.evaluation and only in (None, "updates"), stacks, args.processes if only in (None, "stacks") else 0,
                 updates=only in (None, "updates"), precisions=only in (None, "precision"), draws=only in (None, "draw"),
                 log=lambda line: print(line, flush=True))
    import lightning

    result["meta"] = {"torch": torch.__version__, "lightning": lightning.__version__, "threads": args.threads,
                      "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                      "cpu_model": cpu_model(), "cpu_bf16_units": cpu_bf16_units() or None,
                      "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
                      "date": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(result, indent=2))
    table = markdown(result)
    (out / "throughput.md").write_text(table)
    print(table)
    return 0
