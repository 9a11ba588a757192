"""ISEP-FM's velocity field v(x_t, t, s, o) and its classifier-free-guided Euler sampler (Eq. 7)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from isep.models.mlp import StackedMLP, member_generators
from isep.precision import Layers

# Optimality tokens (CFGRL): ∅ (unconditional), negative advantage, positive advantage.
NULL, NEGATIVE, POSITIVE = 0, 1, 2
TOKENS = 3


class VelocityField(nn.Module):
    """An MLP with Mish activations on [x_t, t, s, embed(o)] → velocity, for R runs (R, B, ·).

    The raw time t is concatenated as in CFGRL/FQL; o is one of three learned embeddings
    {∅, negative, positive} per run (CFGRL's IsPositiveEmbedding, 32 dimensions), looked up as a
    one-hot product so that the lookup is a batched matmul like the rest.
    """

    def __init__(
        self,
        runs: int,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (512, 512, 512, 512),
        embed_dim: int = 32,
        activation: str = "mish",
        generators: Sequence[torch.Generator] | None = None,
    ) -> None:
        super().__init__()
        self.act_dim = act_dim
        self.embed = nn.Parameter(torch.empty(runs, TOKENS, embed_dim))
        with torch.no_grad():  # nn.Embedding's N(0, 1) initialisation, per run
            for r, gen in enumerate(member_generators(runs, generators)):
                self.embed[r].normal_(generator=gen)
        self.net = StackedMLP(runs, act_dim + 1 + obs_dim + embed_dim, hidden, act_dim, activation, generators=generators)

    def forward(self, x: torch.Tensor, t: torch.Tensor, obs: torch.Tensor, label: torch.Tensor,
                layers: Layers | None = None, cast: list | None = None) -> torch.Tensor:
        """x (R, B, A), t (R, B), obs (R, B, S), label (R, B) long → (R, B, A); `layers`: the
        matrix products' dtypes (`isep.precision`), `cast`: the weights already in them."""
        # (not F.one_hot: it checks the labels' range on the host, a synchronisation)
        one_hot = (label.unsqueeze(-1) == torch.arange(TOKENS, device=label.device)).to(x.dtype)
        return self.net(torch.cat([x, t.unsqueeze(-1).to(x.dtype), obs, torch.bmm(one_hot, self.embed)], -1), layers=layers,
                        cast=cast)


def one_branch_labels(weights: Sequence[float]) -> list[int] | None:
    """Per run, the one token whose velocity is the guided one when every run's w is 0 or 1:
    ṽ = v(∅) + w·(v(+) − v(∅)) is v(+) at w = 1 and v(∅) at w = 0, so one forward pass over the
    batch replaces the doubled one. None when some w is neither (both branches are needed)."""
    weights = [float(w) for w in weights]
    if not all(w in (0.0, 1.0) for w in weights):
        return None
    return [POSITIVE if w == 1.0 else NULL for w in weights]


def guided_sample(
    field: VelocityField,
    obs: torch.Tensor,
    steps: int,
    guidance: float | torch.Tensor,
    noise: torch.Tensor | None = None,
    low: float | torch.Tensor = -1.0,
    high: float | torch.Tensor = 1.0,
    layers: Layers | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate ṽ = v(x,t,s,∅) + w·(v(x,t,s,+) − v(x,t,s,∅)) from x₀ in `steps` Euler steps.

    obs (R, B, S); `guidance` a float or per-run (R, 1, 1) tensor; x₀ is `noise` (R, B, A), or a draw
    from torch's generator. The ∅ and positive branches run as one forward pass over a doubled
    batch; with `labels` ((R, 1) long, from `one_branch_labels`: every w is 0 or 1) only run r's
    branch `labels[r]` runs, and `guidance` is not read. The result is clipped to the action bounds
    (Eq. 7). `layers`: the field's matrix products' dtypes (`isep.precision`); x is integrated in float32.
    """
    r, b, _ = obs.shape
    x = torch.randn(r, b, field.act_dim, device=obs.device, dtype=obs.dtype) if noise is None else noise
    dt = 1.0 / steps
    cast = field.net.cast(layers)  # the bf16 copies of the weights, once for all steps
    if labels is not None:
        branch = labels.to(obs.device).expand(r, b)
        for k in range(steps):
            t = torch.full((r, b), k * dt, device=obs.device, dtype=obs.dtype)
            x = x + dt * field(x, t, obs, branch, layers, cast)
        return torch.clamp(x, low, high)
    obs2 = torch.cat([obs, obs], 1)
    both = torch.cat(
        [
            torch.full((r, b), NULL, device=obs.device, dtype=torch.long),
            torch.full((r, b), POSITIVE, device=obs.device, dtype=torch.long),
        ],
        1,
    )
    for k in range(steps):
        t = torch.full((r, 2 * b), k * dt, device=obs.device, dtype=obs.dtype)
        v_null, v_pos = field(torch.cat([x, x], 1), t, obs2, both, layers, cast).chunk(2, dim=1)
        x = x + dt * (v_null + guidance * (v_pos - v_null))
    return torch.clamp(x, low, high)
