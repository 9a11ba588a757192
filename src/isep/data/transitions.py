"""Flat transition arrays (host side) and the reward transforms applied to them before training."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from isep.data.registry import RewardTransform


@dataclass
class Transitions:
    """One row per transition, numpy on the host.

    `terminals` marks true environment terminations (no bootstrap); `timeouts` marks the last
    step of an episode cut by a time limit, which *is* bootstrapped through (its next observation
    is the real one). `episode_returns` holds each episode's raw return, for IQL's reward scaling.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_returns: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rewards)

    @staticmethod
    def random(n: int, obs_dim: int, act_dim: int, seed: int = 0, terminal_prob: float = 0.001,
               action_bound: float = 1.0) -> "Transitions":
        """`n` random transitions of the given sizes (benchmarks and tests: the speed and the
        mechanics of an update do not depend on the values)."""
        rng = np.random.default_rng(seed)
        obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
        return Transitions(
            observations=obs,
            actions=rng.uniform(-action_bound, action_bound, size=(n, act_dim)).astype(np.float32),
            rewards=rng.normal(size=n).astype(np.float32),
            next_observations=np.roll(obs, -1, 0),
            terminals=(rng.uniform(size=n) < terminal_prob).astype(np.float32),
            timeouts=np.zeros(n, bool),
            episode_returns=np.zeros(1),
        )

    @staticmethod
    def concatenate(parts: list["Transitions"]) -> "Transitions":
        """Join datasets row-wise (D4RL's medium-expert = medium + expert)."""
        if len(parts) == 1:
            return parts[0]
        dims = {(p.observations.shape[1:], p.actions.shape[1:]) for p in parts}
        if len(dims) != 1:
            raise ValueError(f"cannot combine datasets with different observation/action shapes: {sorted(dims)}")
        cat = lambda name: np.concatenate([getattr(p, name) for p in parts])  # noqa: E731
        return Transitions(
            **{
                name: cat(name)
                for name in (
                    "observations",
                    "actions",
                    "rewards",
                    "next_observations",
                    "terminals",
                    "timeouts",
                    "episode_returns",
                )
            },
            meta=dict(parts[0].meta),
        )


def episode_returns_from_flags(rewards: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Sum rewards per episode, episodes being closed by `ends` (the last one by the array end)."""
    ends = ends.astype(bool).copy()
    if len(ends):
        ends[-1] = True
    cuts = np.flatnonzero(ends) + 1
    return np.add.reduceat(rewards.astype(np.float64), np.r_[0, cuts[:-1]]) if len(cuts) else np.zeros(0)


def reward_scale(transitions: Transitions, transform: RewardTransform) -> float:
    """The factor applied to rewards: IQL's 1000 / (max - min episode return) for locomotion.

    (ikostrikov/implicit_q_learning, train_offline.py `normalize`.)
    """
    if transform == "none":
        return 1.0
    returns = transitions.episode_returns
    spread = float(returns.max() - returns.min()) if len(returns) else 0.0
    if spread <= 0:
        raise ValueError(
            "IQL's locomotion reward scaling needs episodes with different returns, but every "
            f"episode returned {returns.max() if len(returns) else 'nothing'}; "
            "set `data.reward_transform: none` for this dataset"
        )
    return 1000.0 / spread
