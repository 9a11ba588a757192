"""Gradient updates per second of `ISEPModule`'s update: a plain PyTorch loop vs `Trainer.fit`.

Both paths run the very same `ISEPModule.update` (+ target EMA) on walker2d shapes (17-d states,
6-d actions), batch 256, batches sampled on the device from a resident buffer; the ratio of the two
is Lightning's cost per step. Warm-up updates are excluded; the clock is read after a device
synchronisation; each figure is the median of `--repeats` runs. Writes JSON and a Markdown table.

    python benchmarks/throughput.py --out bench-results            # CPU, 1 thread
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from isep.data.buffer import TransitionBuffer
from isep.data.transitions import Transitions
from isep.module import ISEPModule

OBS_DIM, ACT_DIM = 17, 6  # walker2d
PAPER_SETTINGS = {  # walker2d-medium-v2, Appendix C
    "gaussian": {"lam": 0.3, "expectile": 0.8, "beta": 5.0},
    "flow": {"lam": 0.3, "expectile": 0.8, "guidance": 2.0},
}


def synthetic_walker(n: int = 100_000, seed: int = 0) -> Transitions:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, OBS_DIM)).astype(np.float32)
    return Transitions(
        observations=obs,
        actions=rng.uniform(-1, 1, size=(n, ACT_DIM)).astype(np.float32),
        rewards=rng.normal(size=n).astype(np.float32),
        next_observations=np.roll(obs, -1, 0),
        terminals=(rng.uniform(size=n) < 0.001).astype(np.float32),
        timeouts=np.zeros(n, bool),
        episode_returns=np.zeros(1),
    )


class SyntheticData(L.LightningDataModule):
    """Walker-shaped random transitions in a device buffer, sampled like `D4RLDataModule`."""

    def __init__(self, steps: int, batch_size: int, device: str):
        super().__init__()
        self.steps, self.batch_size, self.device = steps, batch_size, device
        self.buffer = TransitionBuffer.from_transitions(synthetic_walker(), device)

    def train_dataloader(self) -> DeviceSampler:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(0)
        return DeviceSampler(self.buffer, self.batch_size, self.steps, gen)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_module(actor: str, lam: float | None) -> ISEPModule:
    kw = dict(PAPER_SETTINGS[actor])
    if lam is not None:
        kw["lam"] = lam
    return ISEPModule(OBS_DIM, ACT_DIM, actor=actor, log_every=1000, **kw)


def plain_loop(actor: str, lam: float | None, steps: int, warmup: int, batch: int, device: str) -> float:
    """Updates/s of `update` + `update_targets` in a bare Python loop (no Lightning)."""
    module = make_module(actor, lam).to(device)
    opts, _ = module.configure_optimizers()
    data = SyntheticData(steps + warmup, batch, device)
    it = iter(data.train_dataloader())
    for _ in range(warmup):
        module.update(next(it), *opts)
        module.update_targets()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        module.update(next(it), *opts)
        module.update_targets()
    sync(device)
    return steps / (time.perf_counter() - start)


class _Clock(L.Callback):
    """Starts the clock after `warmup` updates, stops it at the end of training."""

    def __init__(self, warmup: int, device: str):
        self.warmup, self.device, self.start, self.elapsed = warmup, device, None, None

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, *args) -> None:
        sync(self.device)
        self.elapsed = time.perf_counter() - self.start


def trainer_fit(actor: str, lam: float | None, steps: int, warmup: int, batch: int, device: str) -> float:
    """Updates/s of the same update driven by `Trainer.fit` (as `isep fit` runs it)."""
    module = make_module(actor, lam)
    clock = _Clock(warmup, device)
    trainer = L.Trainer(
        accelerator="gpu" if device.startswith("cuda") else "cpu",
        devices=1,
        max_steps=steps + warmup,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[clock],
    )
    trainer.fit(module, SyntheticData(steps + warmup, batch, device))
    return steps / clock.elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU (1: one run per core)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--actors", default="gaussian,flow")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    rows = []
    for actor in args.actors.split(","):
        for lam in (0.0, None):
            lam_value = PAPER_SETTINGS[actor]["lam"] if lam is None else lam
            steps = args.steps if actor == "gaussian" or lam_value == 0 else max(args.steps // 4, 20)
            res = {}
            for name, fn in (("plain", plain_loop), ("trainer", trainer_fit)):
                res[name] = statistics.median(
                    fn(actor, lam, steps, args.warmup, args.batch, args.device) for _ in range(args.repeats)
                )
            rows.append(
                {
                    "actor": actor,
                    "lam": lam_value,
                    "device": args.device,
                    "threads": args.threads,
                    "batch": args.batch,
                    "steps": steps,
                    "plain_updates_per_s": round(res["plain"], 1),
                    "fit_updates_per_s": round(res["trainer"], 1),
                    "fit_over_plain_time": round(res["plain"] / res["trainer"], 3),
                }
            )
            print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "lightning": L.__version__, "machine": platform.processor() or platform.machine()}
    (out / "throughput.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [
        "| actor | λ | device | threads | plain loop (updates/s) | `isep fit` (updates/s) | fit time / plain time |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['actor']} | {r['lam']} | {r['device']} | {r['threads']} | {r['plain_updates_per_s']} | "
        f"{r['fit_updates_per_s']} | {r['fit_over_plain_time']} |"
        for r in rows
    ]
    (out / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
