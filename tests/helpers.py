"""Small builders shared by the update tests: a tiny module, batches, the update's draws."""

from __future__ import annotations

import json
import time

import lightning as L
import torch

from isep.module import ISEPModule
from isep.rng import Draws

OBS_DIM, ACT_DIM, B = 3, 2, 32


def make_module(actor: str = "gaussian", lam: float | list[float] = 0.0, **kw) -> ISEPModule:
    """A module with tiny networks and its optimizers configured (no Trainer)."""
    kw.setdefault("critic_hidden", [16, 16])
    kw.setdefault("actor_hidden", [16, 16])
    kw.setdefault("label_embed_dim", 4)
    kw.setdefault("flow_steps", 3)
    kw.setdefault("seed", 0)
    module = ISEPModule(obs_dim=OBS_DIM, act_dim=ACT_DIM, actor=actor, lam=lam, **kw)
    module.configure_optimizers()
    return module


def make_batch(seed: int = 1, batch: int = B) -> dict:
    """One run's batch, (B, ·)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(batch, OBS_DIM, generator=g),
        "actions": torch.rand(batch, ACT_DIM, generator=g) * 1.8 - 0.9,
        "rewards": torch.randn(batch, generator=g),
        "next_observations": torch.randn(batch, OBS_DIM, generator=g),
        "dones": (torch.rand(batch, generator=g) < 0.3).float(),
    }


def stacked(batch: dict, runs: int = 1) -> dict:
    """The same (B, ·) batch for each of `runs` runs: (R, B, ·)."""
    return {k: v.unsqueeze(0).expand(runs, *v.shape).contiguous() for k, v in batch.items()}


def draws_for(module: ISEPModule, update: int = 0) -> Draws:
    """The draws the module's update number `update` uses."""
    return Draws(module.keys, torch.tensor(update))


def perturb_targets(module: ISEPModule, seed: int = 2) -> None:
    """Make the target critics differ from the online ones (as after some training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.target_critic.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))



class PauseAfterFirstEpoch(L.Callback):
    """For kill tests: after epoch 0 (its checkpoint written) the run sleeps, so that a test kills
    it at a known step instead of racing it."""

    def __init__(self, seconds: float = 300.0) -> None:
        self.seconds = seconds

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= 1:
            time.sleep(self.seconds)


def callback_arg(cls: type, **init) -> list[str]:
    """The CLI arguments that add callback `cls` (a class of the tests package) to a run."""
    return ["--trainer.callbacks+", json.dumps({"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": init})]
