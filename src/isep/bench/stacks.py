"""Stacked runs in `isep bench`: R runs in one model against one run, and N one-thread processes
against N runs stacked in one process."""

from __future__ import annotations

import json
import os
import statistics
import time

import torch

from isep.bench.throughput import PAPER, bench_plain, make_agent, plan, step_of


def bench_stack(actor: str, runs: int, fast: bool, device: str, windows: int, quick: bool) -> dict:
    """Aggregate updates/s (runs × updates/s) of `runs` runs stacked in one model, at the paper's λ."""
    updates, warmup = plan(device, actor, PAPER[actor]["lam"], quick)
    updates, warmup = max(2, updates // runs), max(2, warmup // max(1, runs // 4))
    result = bench_plain(actor, PAPER[actor]["lam"], fast, device, updates, warmup, windows, runs=runs)
    rate = statistics.median(result["rates"])
    return {"device": device, "actor": actor, "lam": PAPER[actor]["lam"], "runs": runs, "mode": result["mode"],
            "updates_per_s": round(rate, 2), "aggregate_updates_per_s": round(rate * runs, 1),
            "setup_s": round(result["setup_s"], 1)}


def process_worker(actor: str, lam: float, seconds: float, total: int) -> None:
    """One run's eager update (of a run of `total`) on one thread in a loop for `seconds` after its
    warm-up; prints its updates/s."""
    torch.set_num_threads(1)
    step, _ = step_of(make_agent(actor, lam, "cpu", total), False, "cpu", total)
    for _ in range(3):
        step()
    start, done = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        step()
        done += 1
    print(json.dumps({"updates_per_s": done / (time.perf_counter() - start)}), flush=True)


def bench_processes(actor: str, n: int, seconds: float) -> dict:
    """N separate one-thread processes of one run each, side by side on the CPU, against N runs
    stacked in one process (all threads, eager both): aggregate updates/s of each."""
    import subprocess
    import sys

    lam = PAPER[actor]["lam"]
    total = 1_000_000  # a schedule as long as a real run: on, like the stacked runs'; its length does not matter
    code = (f"from isep.bench.stacks import process_worker; "
            f"process_worker({actor!r}, {lam}, {seconds}, {total})")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    rates = [json.loads(p.communicate()[0].strip().splitlines()[-1])["updates_per_s"] for p in procs]
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        stacked = bench_stack(actor, n, False, "cpu", 3, quick=True)
    finally:
        torch.set_num_threads(threads)
    separate = sum(rates)
    return {"device": "cpu", "actor": actor, "lam": lam, "runs": n, "processes_aggregate_updates_per_s": round(separate, 1),
            "stacked_aggregate_updates_per_s": stacked["aggregate_updates_per_s"], "stacked_threads": os.cpu_count(),
            "speedup": round(stacked["aggregate_updates_per_s"] / separate, 2)}
