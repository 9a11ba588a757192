"""Twin Q-functions (one batched network) and the state-value function, as in IQL."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from isep.models.mlp import EnsembleMLP, mlp


class TwinQ(nn.Module):
    """Q1, Q2 (s, a) → (2, B); `min` gives the clipped double-Q estimate Q̂."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256), activation: str = "relu"):
        super().__init__()
        self.net = EnsembleMLP(2, obs_dim + act_dim, hidden, 1, activation)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, act], -1)).squeeze(-1)

    def min(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self(obs, act).min(0).values


class ValueFunction(nn.Module):
    """V(s) → (B,)."""

    def __init__(self, obs_dim: int, hidden: Sequence[int] = (256, 256), activation: str = "relu"):
        super().__init__()
        self.net = mlp(obs_dim, hidden, 1, activation)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)
