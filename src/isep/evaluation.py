"""Policy evaluation: vectorized Gymnasium rollouts, the D4RL normalized score, toy-bandit rewards.

Pure functions over a `policy(obs_batch) -> action_batch` callable, and `Evaluator` / `evaluate`,
which score an `ISEPAgent` on its dataset's task; the training callback (`RolloutEvaluation`),
`isep evaluate`, a plain training loop and the benchmarks share them. The evaluation envs
themselves come from `isep.envs`. No Lightning here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torchmetrics import Metric

from isep.envs import make_env_fn
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


def check_spaces(env_fn, obs_keys: list[str] | None, obs_dim: int, act_dim: int, action_bounds=None):
    """The evaluation env must produce the observations and take the actions the model was built
    for, with the dataset's action bounds (`(low, high)`, when given); returns the (selected)
    observation space, which flattens the env's observations."""
    import gymnasium as gym

    from isep.data.minari_source import select_keys

    env = env_fn()
    try:
        obs_space = select_keys(env.observation_space, obs_keys)
        got = (gym.spaces.flatdim(obs_space), gym.spaces.flatdim(env.action_space))
        space = env.action_space
    finally:
        env.close()
    name = env.spec.id if env.spec else env
    if got != (obs_dim, act_dim):
        raise ConfigError(
            f"the evaluation env {name} has observation/action sizes {got}, but the "
            f"dataset has {(obs_dim, act_dim)}: pick the env that recorded the data (`--evaluation.env_id`)"
        )
    if action_bounds is not None and isinstance(space, gym.spaces.Box):
        low, high = (np.asarray(b, dtype=np.float32).reshape(-1) for b in action_bounds)
        if not (np.allclose(space.low.reshape(-1), low) and np.allclose(space.high.reshape(-1), high)):
            raise ConfigError(
                f"the evaluation env {name} takes actions in [{space.low.min():g}, {space.high.max():g}] per dimension, "
                f"but the dataset's action space is [{low.min():g}, {high.max():g}]: the policy's actions are clipped to "
                "the dataset's bounds, so pick the env that recorded the data (`--evaluation.env_id`)"
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


TOY_SAMPLES = 2000  # policy samples per toy evaluation (E[r]'s standard error ≈ 0.01 at these rewards)


def toy_policy_metrics(model, bandit, n: int = TOY_SAMPLES, guidance: float | None = None,
                       generators: list[torch.Generator] | None = None) -> list[dict[str, float]]:
    """Per run, on a toy bandit: the expected reward of `n` policy samples (its exact reward
    function; `eval/expected_reward`) and the share of them near the optimum (`eval/share_near_optimum`)."""
    runs = getattr(model, "runs", 1)
    obs = torch.zeros(n, 1) if runs == 1 else torch.zeros(runs, n, 1)
    actions = model.act(obs, guidance=guidance, stochastic=True, generators=generators).cpu().reshape(runs, n, -1)
    rewards, near = bandit.reward(actions).mean(-1), bandit.share_near(actions)
    return [{"eval/expected_reward": float(r), "eval/share_near_optimum": float(s)} for r, s in zip(rewards, near)]


class Evaluator:
    """Scores an agent's policy on a dataset's task: `prepare_for(data, …)` once (builds the env,
    checks its spaces against the data), then `measure(agent, data)` as often as wanted.

    Episode i uses seed `seed + i`, and the policy's noise comes from a generator seeded with `seed`
    (one per run of a stack: a stacked run is evaluated exactly as it would be alone); training's
    random numbers are untouched. A stack's runs step together in one vector of envs.

    Args:
        episodes: episodes per evaluation; default the task's (20 Gym-MuJoCo, 50 Adroit/Kitchen).
        num_envs: synchronous envs stepped together (one batched `act` call per step).
        seed: seed of the first episode.
        env_id: override the evaluation env (default: the dataset's, else the registry's).
        max_episode_steps: cap episode length (default: the env's own time limit).
        guidance: guidance weight for the flow actor (default: the trained w).
    """

    def __init__(self, episodes: int | None = None, num_envs: int = 10, seed: int = 100_000, env_id: str | None = None,
                 max_episode_steps: int | None = None, guidance: float | None = None) -> None:
        self.episodes, self.num_envs, self.seed = episodes, num_envs, seed
        self.env_id, self.max_episode_steps, self.guidance = env_id, max_episode_steps, guidance
        self._env_fn = None
        self._obs_space = None

    def prepare_for(self, dm, obs_dim: int, act_dim: int) -> None:
        """Set up the evaluation of a model on `dm`'s task: its env (`env_id`, else the dataset's own
        evaluation env, else the registry's) and its number of episodes (the task's, else 20).
        Nothing to set up for a toy bandit (its expected reward is exact)."""
        if getattr(dm, "toy", None) is not None:
            return
        dataset_id = dm.minari_ids[0] if dm.minari_ids else None
        bounds = (dm.action_low, dm.action_high) if hasattr(dm, "action_low") else None
        self.prepare(self.env_id or dm.env_id, None if self.env_id else dataset_id, dm.obs_keys, obs_dim, act_dim, bounds)
        if self.episodes is None:
            self.episodes = dm.task.eval_episodes if dm.task is not None else 20

    def prepare(self, env_id: str | None, dataset_id: str | None, obs_keys: list[str] | None, obs_dim: int, act_dim: int,
                action_bounds=None) -> None:
        """Build the env factory (the dataset's own evaluation env, else `env_id`) and check that
        its spaces fit the model (and the dataset's action bounds); fails at once with the fix."""
        self._env_fn = make_env_fn(env_id, dataset_id, self.max_episode_steps)
        self._obs_space = check_spaces(self._env_fn, obs_keys, obs_dim, act_dim, action_bounds)

    def measure(self, agent, dm) -> list[tuple[dict, dict]]:
        """Per run of `agent` (an `ISEPAgent`): its metrics and its record. A toy bandit's exact
        expected reward of the policy's samples, else `rollouts` (after `prepare_for`). Noise from
        generators seeded with `seed`."""
        if getattr(dm, "toy", None) is None:
            return self.rollouts(agent, dm.ref_scores)
        per_run = toy_policy_metrics(agent, dm.toy, guidance=self.guidance, generators=agent.generators(self.seed))
        return [({**m, "eval/score": m["eval/expected_reward"]},) * 2 for m in per_run]

    def rollouts(self, agent, ref_scores: tuple[float, float] | None) -> list[tuple[dict, dict]]:
        """`episodes` rollouts of each run's policy (after `prepare`), all runs stepped in one vector
        of envs: per run, its metrics and its episode record."""
        from isep.data.minari_source import flatten_observations

        runs = agent.runs
        generators = agent.generators(self.seed)  # the policy's noise: each run's own stream

        def policy(obs):
            if runs > 1:
                obs = obs.reshape(runs, -1, obs.shape[-1])
            actions = agent.act(obs, guidance=self.guidance, generators=generators)
            return actions.reshape(-1, agent.act_dim).cpu().numpy()

        flatten = lambda obs: flatten_observations(obs, self._obs_space)  # noqa: E731
        t0 = time.perf_counter()
        results = rollout(policy, self._env_fn, self.episodes, self.seed, self.num_envs, flatten, runs)
        steps_per_s = sum(r.env_steps for r in results) / (time.perf_counter() - t0)
        out = []
        for result in results:
            metrics = {
                "eval/return_mean": float(result.returns.mean()),
                "eval/return_std": float(result.returns.std()),
                "eval/env_steps_per_s": steps_per_s,
            }
            if ref_scores is not None:
                score = NormalizedScore(*ref_scores)
                score.update(torch.as_tensor(result.returns))
                metrics["eval/normalized_score"] = float(score.compute())
                metrics["eval/score"] = metrics["eval/normalized_score"]
            else:
                metrics["eval/score"] = metrics["eval/return_mean"]
            out.append((metrics, {"returns": result.returns.tolist(), "seeds": result.seeds, **metrics}))
        return out


def evaluate(agent, data, **settings) -> list[dict]:
    """Each run's evaluation metrics (`eval/normalized_score`, `eval/return_mean`, …, or a toy
    bandit's `eval/expected_reward` and `eval/share_near_optimum`) of `agent` on `data`'s task (a set-up `D4RLDataModule`);
    `settings` are `Evaluator`'s."""
    evaluator = Evaluator(**settings)
    evaluator.prepare_for(data, agent.obs_dim, agent.act_dim)
    return [metrics for metrics, _ in evaluator.measure(agent, data)]

