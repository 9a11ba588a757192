"""Per-update work that runs inside the agent's step: the target-network EMA, and anything a user adds.

A hook is a callable `hook(agent)` that the agent calls at the end of every update, inside
`train_step`, so that it is compiled and captured with the update (a Python callback could not
run inside a replayed CUDA graph). It must read and write device tensors only: no `.item()`, no
branch on a tensor's value. `ISEPAgent.set_update_hook(name, hook)` installs or replaces one.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

from isep.errors import ConfigError


class Trained(Protocol):
    """What a hook may read of the agent (`ISEPAgent` is one): this module does not import the agent."""

    critic: nn.Module
    target_critic: nn.Module
    active: torch.Tensor
    failures: dict[int, str]


UpdateHook = Callable[[Trained], None]


def twin_active(active: torch.Tensor) -> torch.Tensor:
    """(R,) `active` per critic member (2 per run: the twins), as views (no data-dependent sizes)."""
    return active.unsqueeze(1).expand(active.shape[0], 2).reshape(-1)


class TargetEMAUpdate:
    """Q̂ ← (1 − ρ)·Q̂ + ρ·Q in place (IQL's target critics, ρ = 0.005), for the runs still training."""

    def __init__(self, rate: float) -> None:
        if not 0.0 < float(rate) <= 1.0:
            raise ConfigError(f"the target EMA rate must lie in (0, 1], got {rate}")
        self.rate = float(rate)

    @torch.no_grad()
    def __call__(self, agent: Trained) -> None:
        targets, online = list(agent.target_critic.parameters()), list(agent.critic.parameters())
        if not agent.failures:  # a host-side fact: the compiled step specialises on it
            torch._foreach_lerp_(targets, online, self.rate)
            return
        rate = (self.rate * twin_active(agent.active).to(torch.float32)).view(-1, 1, 1)
        for target, source in zip(targets, online):
            target.lerp_(source, rate)

    def __repr__(self) -> str:
        return f"TargetEMAUpdate(rate={self.rate:g})"
