"""Adam for stacked networks, written so that a whole update can be captured as one CUDA graph.

`torch.optim.Adam` keeps a step counter per parameter and takes a learning rate per group; ours
takes the update count and a learning-rate factor as device tensors (so a schedule is a formula
of the update count inside the graph, not a host-side scheduler) and a per-member `active` mask:
a member (a run of a stack) that diverged is frozen — its parameters stop moving — while the
others go on. With everything active it is Adam (Kingma & Ba) exactly as `torch.optim.Adam`
computes it (tested against it).

The moments are buffers of an `nn.Module` (`AdamMoments`) that the agent owns: they move with
`agent.to(device)` and are part of `agent.state_dict()`, so the agent's state alone resumes a run
exactly. The optimizer's own `state_dict` holds its hyper-parameters only.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn


class AdamMoments(nn.Module):
    """Adam's first and second moments of a list of parameters, as buffers `exp_avg_i`, `exp_avg_sq_i`."""

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.count = len(params)
        for i, p in enumerate(params):
            self.register_buffer(f"exp_avg_{i}", torch.zeros_like(p, memory_format=torch.preserve_format))
            self.register_buffer(f"exp_avg_sq_{i}", torch.zeros_like(p, memory_format=torch.preserve_format))

    def first(self) -> list[torch.Tensor]:
        return [getattr(self, f"exp_avg_{i}") for i in range(self.count)]

    def second(self) -> list[torch.Tensor]:
        return [getattr(self, f"exp_avg_sq_{i}") for i in range(self.count)]


class StackedAdam(torch.optim.Optimizer):
    """Adam over parameters whose first dimension indexes independent members (runs, or twins).

    Gradients are passed in (`apply`), as returned by `torch.autograd.grad`; no `.grad` fields,
    no host synchronisation, no allocation of state after construction. `moments` (default: a new
    `AdamMoments`) holds the moments; give the one a module owns so that they travel with it.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        moments: AdamMoments | None = None,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.moments = moments if moments is not None else AdamMoments(self.params)
        if self.moments.count != len(self.params):
            raise ValueError(f"moments for {self.moments.count} parameters, optimizer over {len(self.params)}")

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "moments": self.moments}  # copies and pickles keep the moments

    def load_state_dict(self, state_dict: dict) -> None:
        """The hyper-parameters; moments in `state` (checkpoints from before the moments moved into
        the agent) are the owning module's to restore, not kept here."""
        super().load_state_dict({**state_dict, "state": {}})

    def step(self, closure=None):  # noqa: D102
        raise RuntimeError("StackedAdam is stepped by `apply(grads, count, ...)` from the update, not by `step()`")

    @torch.no_grad()
    def apply(
        self,
        grads: Sequence[torch.Tensor],
        count: torch.Tensor,
        lr_factor: torch.Tensor | float = 1.0,
        active: torch.Tensor | None = None,
    ) -> None:
        """One Adam step with `grads` (one per parameter, in `params` order).

        Args:
            count: float tensor, the number of steps including this one (bias correction).
            lr_factor: multiplies every group's learning rate (a schedule's value, a tensor).
            active: (M,) bool over the parameters' first dimension; inactive members do not move.
        """
        if len(grads) != len(self.params):
            raise ValueError(f"got {len(grads)} gradients for {len(self.params)} parameters")
        first, second = self.moments.first(), self.moments.second()
        offset = 0
        for group in self.param_groups:
            params = group["params"]
            part = slice(offset, offset + len(params))
            offset += len(params)
            g, exp_avg, exp_avg_sq = list(grads[part]), first[part], second[part]
            beta1, beta2 = group["betas"]
            torch._foreach_lerp_(exp_avg, g, 1 - beta1)
            torch._foreach_mul_(exp_avg_sq, beta2)
            torch._foreach_addcmul_(exp_avg_sq, g, g, value=1 - beta2)
            bias1 = 1 - beta1**count
            bias2_sqrt = torch.sqrt(1 - beta2**count)
            denom = torch._foreach_sqrt(exp_avg_sq)
            torch._foreach_div_(denom, bias2_sqrt)
            torch._foreach_add_(denom, group["eps"])
            steps = torch._foreach_div(exp_avg, denom)
            torch._foreach_mul_(steps, group["lr"] * lr_factor / bias1)
            if active is not None:
                steps = [torch.where(active.view(-1, *[1] * (s.dim() - 1)), s, 0.0) for s in steps]
            torch._foreach_sub_(params, steps)
