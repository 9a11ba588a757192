"""The toy 2-D bandits of Sections 4.3 and 4.5, as data sources of the same DataModule.

A bandit is a one-step MDP: one constant state, `done = 1` on every transition (so γ plays no role).
The paper's exact coordinates were lost in extraction; the ones below are ours, chosen to show
each effect clearly, and are the ones every figure and test of this package uses.

- `toy/sparse-optimum` (Section 4.5, Figure 1): 90 % of the actions in a dense mode around
  (-0.5, -0.5) whose reward peaks at 0.5, 10 % in a sparse mode around (0.5, 0.5) whose reward
  peaks at 1.0, and a reward near 0 in between.
- `toy/danger-zone` (Section 4.3, Figure 2): actions uniform on [-1, 1]²; reward +1 at a
  high-reward region centred at (0.6, 0.6), -1 in a danger zone centred at (0.1, 0.6) beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from isep.data.transitions import Transitions


def _bump(actions: torch.Tensor, centre: tuple[float, float], width: float) -> torch.Tensor:
    d2 = ((actions - torch.tensor(centre, dtype=actions.dtype, device=actions.device)) ** 2).sum(-1)
    return torch.exp(-d2 / (2 * width**2))


def sparse_optimum_reward(actions: torch.Tensor) -> torch.Tensor:
    """Reward of Section 4.5's bandit: 0.5 at the dense mode, 1.0 at the sparse one, ~0 between."""
    return 0.5 * _bump(actions, (-0.5, -0.5), 0.2) + 1.0 * _bump(actions, (0.5, 0.5), 0.2)


def danger_zone_reward(actions: torch.Tensor) -> torch.Tensor:
    """Reward of Section 4.3's bandit: +1 around (0.6, 0.6), -1 in the danger zone at (0.1, 0.6)."""
    return _bump(actions, (0.6, 0.6), 0.15) - _bump(actions, (0.1, 0.6), 0.15)


def _sparse_optimum_actions(n: int, rng: np.random.Generator) -> np.ndarray:
    n_sparse = int(round(0.1 * n))
    dense = rng.normal((-0.5, -0.5), 0.12, size=(n - n_sparse, 2))
    sparse = rng.normal((0.5, 0.5), 0.12, size=(n_sparse, 2))
    return np.clip(np.concatenate([dense, sparse]), -1, 1)


def _uniform_actions(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1, 1, size=(n, 2))


NEAR = 0.3  # an action within this distance of a mode's centre counts as "near" it


@dataclass(frozen=True)
class ToyBandit:
    name: str
    reward: Callable[[torch.Tensor], torch.Tensor]
    sample_actions: Callable[[int, np.random.Generator], np.ndarray]
    description: str
    optimum: tuple[float, float]  # the centre of the highest-reward region

    def share_near(self, actions: torch.Tensor, centre: tuple[float, float] | None = None) -> torch.Tensor:
        """The share of `actions` (..., N, 2) within `NEAR` of `centre` (default: the optimum), per leading index."""
        centre = torch.tensor(self.optimum if centre is None else centre, dtype=actions.dtype, device=actions.device)
        return ((actions - centre).norm(dim=-1) < NEAR).float().mean(-1)

    def transitions(self, n: int = 10_000, seed: int = 0) -> Transitions:
        """`n` bandit transitions (one constant 1-D state, done = 1), drawn with `seed`."""
        actions = self.sample_actions(n, np.random.default_rng(seed)).astype(np.float32)
        rewards = self.reward(torch.from_numpy(actions)).numpy().astype(np.float32)
        obs = np.zeros((n, 1), dtype=np.float32)
        return Transitions(
            observations=obs,
            actions=actions,
            rewards=rewards,
            next_observations=obs.copy(),
            terminals=np.ones(n, dtype=np.float32),
            timeouts=np.zeros(n, dtype=bool),
            episode_returns=rewards.astype(np.float64),
            meta={"dataset_id": self.name, "env_spec": None, "ref_min_score": None, "ref_max_score": None},
        )


TOY_BANDITS: dict[str, ToyBandit] = {
    b.name: b
    for b in (
        ToyBandit(
            "toy/sparse-optimum",
            sparse_optimum_reward,
            _sparse_optimum_actions,
            "Section 4.5: 90% dense suboptimal mode, 10% sparse optimal mode",
            (0.5, 0.5),
        ),
        ToyBandit(
            "toy/danger-zone",
            danger_zone_reward,
            _uniform_actions,
            "Section 4.3: uniform actions, a high-reward region beside a danger zone",
            (0.6, 0.6),
        ),
    )
}
