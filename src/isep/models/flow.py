"""ISEP-FM's velocity field v(x_t, t, s, o) and its classifier-free-guided Euler sampler (Eq. 7)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from isep.models.mlp import mlp

# Optimality tokens (CFGRL): ∅ (unconditional), negative advantage, positive advantage.
NULL, NEGATIVE, POSITIVE = 0, 1, 2


class VelocityField(nn.Module):
    """An MLP with Mish activations on [x_t, t, s, embed(o)] → velocity (B, A).

    The raw time t is concatenated as in CFGRL/FQL; o is one of three learned embeddings
    {∅, negative, positive} (CFGRL's IsPositiveEmbedding, 32 dimensions).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (512, 512, 512, 512),
        embed_dim: int = 32,
        activation: str = "mish",
    ) -> None:
        super().__init__()
        self.act_dim = act_dim
        self.embed = nn.Embedding(3, embed_dim)
        self.net = mlp(act_dim + 1 + obs_dim + embed_dim, hidden, act_dim, activation)

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """x (B, A), t (B,) or (B, 1), obs (B, S), label (B,) long → (B, A)."""
        t = t.reshape(-1, 1).to(x.dtype)
        return self.net(torch.cat([x, t, obs, self.embed(label)], -1))


def guided_sample(
    field: VelocityField,
    obs: torch.Tensor,
    steps: int,
    guidance: float | torch.Tensor,
    noise: torch.Tensor | None = None,
    low: float | torch.Tensor = -1.0,
    high: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """Integrate ṽ = v(x,t,s,∅) + w·(v(x,t,s,+) − v(x,t,s,∅)) from x₀ ~ N(0, I) in `steps` Euler steps.

    The ∅ and positive branches run as one forward pass over a doubled batch. The result is
    clipped to the action bounds (Eq. 7).
    """
    b = obs.shape[0]
    x = torch.randn(b, field.act_dim, device=obs.device, dtype=obs.dtype) if noise is None else noise
    obs2 = torch.cat([obs, obs])
    labels = torch.cat(
        [
            torch.full((b,), NULL, device=obs.device, dtype=torch.long),
            torch.full((b,), POSITIVE, device=obs.device, dtype=torch.long),
        ]
    )
    dt = 1.0 / steps
    for k in range(steps):
        t = torch.full((2 * b,), k * dt, device=obs.device, dtype=obs.dtype)
        v_null, v_pos = field(torch.cat([x, x]), t, obs2, labels).chunk(2)
        x = x + dt * (v_null + guidance * (v_pos - v_null))
    return torch.clamp(x, low, high)
