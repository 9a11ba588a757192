"""Adam for stacked networks, written so that a whole update can be captured as one CUDA graph.

`torch.optim.Adam` keeps a step counter per parameter and takes a learning rate per group; ours
takes the update count and a learning-rate factor as device tensors (so a schedule is a formula
of the update count inside the graph, not a host-side scheduler) and a per-member `active` mask:
a member (a run of a stack) that diverged is frozen — its parameters stop moving — while the
others go on. With everything active it is Adam (Kingma & Ba) exactly as `torch.optim.Adam`
computes it (tested against it). Moments live in `state`, so checkpoints hold them.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch


class StackedAdam(torch.optim.Optimizer):
    """Adam over parameters whose first dimension indexes independent members (runs, or twins).

    Gradients are passed in (`apply`), as returned by `torch.autograd.grad`; no `.grad` fields,
    no host synchronisation, no allocation of state after construction.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p] = {
                    "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                    "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                }

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for group in self.param_groups for p in group["params"]]

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
        offset = 0
        for group in self.param_groups:
            params = group["params"]
            g = list(grads[offset : offset + len(params)])
            offset += len(params)
            beta1, beta2 = group["betas"]
            exp_avg = [self.state[p]["exp_avg"] for p in params]
            exp_avg_sq = [self.state[p]["exp_avg_sq"] for p in params]
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
