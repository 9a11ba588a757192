"""Policy evaluation: vectorized Gymnasium rollouts, the D4RL normalized score, toy-bandit rewards.

Pure functions over a `policy(obs_batch) -> action_batch` callable, so the callback, `isep
evaluate` and benchmarks share them. The evaluation envs themselves come from `isep.envs`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torchmetrics import Metric

from isep.errors import ConfigError

Policy = Callable[[np.ndarray], np.ndarray]

class NormalizedScore(Metric):
    """D4RL normalized score of episode returns: 100 · (mean R − ref_min) / (ref_max − ref_min)."""

    higher_is_better = True
    full_state_update = False

    def __init__(self, ref_min: float, ref_max: float, **kwargs) -> None:
        super().__init__(**kwargs)
        if not ref_max > ref_min:
            raise ConfigError(f"reference scores must satisfy max > min, got min={ref_min}, max={ref_max}")
        self.ref_min, self.ref_max = ref_min, ref_max
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, returns: torch.Tensor) -> None:
        returns = torch.as_tensor(returns, dtype=torch.float64)
        self.total += returns.sum()
        self.count += returns.numel()

    def compute(self) -> torch.Tensor:
        mean = self.total / self.count
        return 100.0 * (mean - self.ref_min) / (self.ref_max - self.ref_min)


def check_spaces(env_fn, obs_keys: list[str] | None, obs_dim: int, act_dim: int):
    """The evaluation env must produce the observations and take the actions the model was built
    for; returns the (selected) observation space, which flattens the env's observations."""
    import gymnasium as gym

    from isep.data.minari_source import select_keys

    env = env_fn()
    try:
        obs_space = select_keys(env.observation_space, obs_keys)
        got = (gym.spaces.flatdim(obs_space), gym.spaces.flatdim(env.action_space))
    finally:
        env.close()
    if got != (obs_dim, act_dim):
        raise ConfigError(
            f"the evaluation env {env.spec.id if env.spec else env} has observation/action sizes {got}, but the "
            f"dataset has {(obs_dim, act_dim)}: pick the env that recorded the data (`--evaluation.env_id`)"
        )
    return obs_space


@dataclass
class RolloutResult:
    returns: np.ndarray
    lengths: np.ndarray
    seeds: list[int]

    @property
    def env_steps(self) -> int:
        return int(self.lengths.sum())

    def to_json(self) -> str:
        return json.dumps({"returns": self.returns.tolist(), "lengths": self.lengths.tolist(), "seeds": self.seeds})


def rollout(
    policy: Policy,
    env_fn,
    episodes: int,
    seed: int = 0,
    num_envs: int = 10,
    flatten: Callable[[object], np.ndarray] | None = None,
    runs: int = 1,
) -> list[RolloutResult]:
    """`episodes` episodes for each of `runs` policies stepped together in one vector of
    runs × num_envs synchronous envs (run-major); every run's episode i is reset with seed + i,
    as it would be alone. `policy` maps the stacked observations (runs · num_envs, S) to actions.

    Episodes run in waves; an env that finished keeps stepping (autoreset) with its reward masked.
    """
    import gymnasium as gym

    flatten = flatten or (lambda o: np.asarray(o, dtype=np.float32))
    returns = [[] for _ in range(runs)]
    lengths = [[] for _ in range(runs)]
    seeds: list[int] = []
    n_envs = max(1, min(num_envs, episodes))
    envs = gym.vector.SyncVectorEnv([env_fn for _ in range(runs * n_envs)])
    try:
        done_eps = 0
        while done_eps < episodes:
            wave = min(n_envs, episodes - done_eps)
            wave_seeds = [seed + done_eps + i for i in range(n_envs)]
            obs, _ = envs.reset(seed=wave_seeds * runs)
            ret = np.zeros(runs * n_envs)
            length = np.zeros(runs * n_envs, dtype=np.int64)
            active = np.tile(np.arange(n_envs) < wave, runs)
            while active.any():
                actions = policy(flatten(obs))
                obs, rew, term, trunc, _ = envs.step(actions)
                ret += np.where(active, rew, 0.0)
                length += active
                active &= ~(term | trunc)
            for r in range(runs):
                returns[r] += ret[r * n_envs : r * n_envs + wave].tolist()
                lengths[r] += length[r * n_envs : r * n_envs + wave].tolist()
            seeds += wave_seeds[:wave]
            done_eps += wave
    finally:
        envs.close()
    return [RolloutResult(np.asarray(returns[r]), np.asarray(lengths[r]), list(seeds)) for r in range(runs)]


def toy_expected_reward(model, bandit, n: int = 1000, guidance: float | None = None,
                        generators: list[torch.Generator] | None = None) -> list[float]:
    """Expected reward of `n` policy samples on a toy bandit (its exact reward function), per run."""
    runs = getattr(model, "runs", 1)
    obs = torch.zeros(n, 1) if runs == 1 else torch.zeros(runs, n, 1)
    actions = model.act(obs, guidance=guidance, stochastic=True, generators=generators).cpu().reshape(runs, n, -1)
    return [float(r) for r in bandit.reward(actions).mean(-1)]
