"""IQL's Gaussian actor: tanh-bounded mean, state-independent log-std, no tanh-squashed density."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from isep.models.mlp import StackedMLP
from isep.precision import Layers
from isep.rng import Draws

LOG_2PI = math.log(2 * math.pi)


class GaussianActor(nn.Module):
    """π(a|s) = N(c + h·tanh(f(s)), diag(exp(2·log_std))), log_std a free parameter clipped to [-5, 2];
    c and h are the centre and half-width of the action box (`set_bounds`; 0 and 1 for IQL's [-1, 1],
    where the mean is tanh(f(s)) exactly).

    (ikostrikov/implicit_q_learning: NormalTanhPolicy with state_dependent_std=False,
    tanh_squash_distribution=False, log_std_min=-5.) The density is written out rather than taken
    from `torch.distributions`, so no argument validation syncs with the host. R runs: states
    (R, B, S) → actions (R, B, A), one log-std vector per run.
    """

    def __init__(
        self,
        runs: int,
        obs_dim: int,
        act_dim: int,
        hidden: Sequence[int] = (256, 256),
        dropout: float = 0.0,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        generators: Sequence[torch.Generator] | None = None,
    ) -> None:
        super().__init__()
        self.net = StackedMLP(runs, obs_dim, hidden, act_dim, "relu", dropout=dropout, generators=generators)
        self.log_std = nn.Parameter(torch.zeros(runs, 1, act_dim))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max
        # the action box (derived from the agent's action bounds, which travel with its state)
        self.register_buffer("center", torch.zeros(act_dim), persistent=False)
        self.register_buffer("half_width", torch.ones(act_dim), persistent=False)

    @torch.no_grad()
    def set_bounds(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """The mean spans [low, high] (per action dimension)."""
        self.center.copy_((high + low) / 2)
        self.half_width.copy_((high - low) / 2)

    def forward(self, obs: torch.Tensor, draws: Draws | None = None,
                layers: Layers | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (R, B, A) and log-std (R, 1, A); `draws` switch the actor's dropout on (training)."""
        mean = self.center + self.half_width * torch.tanh(self.net(obs, draws, layers))
        return mean, self.log_std.clamp(self.log_std_min, self.log_std_max)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor, draws: Draws | None = None,
                 layers: Layers | None = None) -> torch.Tensor:
        """log π(a|s), summed over action dimensions → (R, B)."""
        mean, log_std = self(obs, draws, layers)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)

    def sample(self, obs: torch.Tensor, noise: torch.Tensor | None = None, layers: Layers | None = None) -> torch.Tensor:
        """a = mean + σ·ε (not clipped); ε is `noise` (R, B, A), or a fresh draw from torch's generator."""
        mean, log_std = self(obs, layers=layers)
        noise = torch.randn_like(mean) if noise is None else noise
        return mean + noise * log_std.exp()

    def mode(self, obs: torch.Tensor, layers: Layers | None = None) -> torch.Tensor:
        """The mean: IQL evaluates deterministically."""
        return self(obs, layers=layers)[0]
