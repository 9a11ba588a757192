"""Twin Q-functions and the state-value function, as in IQL, with a leading run dimension."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from isep.models.mlp import StackedMLP
from isep.precision import Layers


class TwinQ(nn.Module):
    """Q1, Q2 of R runs as one network of 2R members: (s, a) of shape (R, B, ·) → (R, 2, B).

    `min` gives the clipped double-Q estimate Q̂ (R, B). Run r's twins are built from
    `generators[r]`.
    """

    def __init__(
        self,
        runs: int,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        generators: Sequence[torch.Generator] | None = None,
    ) -> None:
        super().__init__()
        twins = None if generators is None else [g for g in generators for _ in range(2)]
        self.net = StackedMLP(2 * runs, obs_dim + act_dim, hidden, 1, activation, generators=twins)

    def forward(self, obs: torch.Tensor, act: torch.Tensor, layers: Layers | None = None) -> torch.Tensor:
        x = torch.cat([obs, act], -1)  # (R, B, S + A)
        r, b, d = x.shape
        x = x.unsqueeze(1).expand(r, 2, b, d).reshape(2 * r, b, d)
        return self.net(x, layers=layers).view(r, 2, b)

    def min(self, obs: torch.Tensor, act: torch.Tensor, layers: Layers | None = None) -> torch.Tensor:
        return self(obs, act, layers).amin(1)


class ValueFunction(nn.Module):
    """V(s) of R runs: (R, B, S) → (R, B)."""

    def __init__(
        self,
        runs: int,
        obs_dim: int,
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        generators: Sequence[torch.Generator] | None = None,
    ) -> None:
        super().__init__()
        self.net = StackedMLP(runs, obs_dim, hidden, 1, activation, generators=generators)

    def forward(self, obs: torch.Tensor, layers: Layers | None = None) -> torch.Tensor:
        return self.net(obs, layers=layers).squeeze(-1)
