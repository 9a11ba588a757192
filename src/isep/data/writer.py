"""Write episodes into the local Minari store with `minari.create_dataset_from_buffers`.

Minari's DataCollector needs jax; building `EpisodeBuffer`s from arrays does not. Used by
`isep data import-d4rl` and by the tests that make small real datasets from MuJoCo rollouts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from isep.data.minari_source import minari_root
from isep.data.store_paths import CreatedPaths, check_new_dataset_id
from isep.errors import DatasetError


@dataclass
class Episode:
    """T+1 observations (an array, or a dict of them for Dict spaces), T actions, rewards, terminations
    and truncations (Minari's layout)."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray


def _arrays(obs):
    """Observations as Minari's buffers take them: arrays, nested in dicts like a Dict space."""
    return {k: _arrays(v) for k, v in obs.items()} if isinstance(obs, dict) else np.asarray(obs)


def write_dataset(
    dataset_id: str,
    episodes: list[Episode],
    env_id: str | None = None,
    observation_space=None,
    action_space=None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    description: str | None = None,
    author: str = "isep",
):
    """Create `dataset_id` in the local store. The id is checked first (`namespace/name-vN`, inside
    the store, its folder not there yet); a write that fails removes only what it created.

    When `env_id` names a registered Gymnasium env it is recorded (so `recover_environment`
    works); otherwise only the spaces are stored.
    """
    import gymnasium as gym
    import minari
    from minari.data_collector import EpisodeBuffer

    created = CreatedPaths(check_new_dataset_id(dataset_id, minari_root()))
    if not episodes:
        raise DatasetError(f"no episodes to write for '{dataset_id}'")
    buffers = [
        EpisodeBuffer(
            id=i,
            observations=_arrays(ep.observations),
            actions=np.asarray(ep.actions),
            rewards=np.asarray(ep.rewards, dtype=np.float64),
            terminations=np.asarray(ep.terminations, dtype=bool),
            truncations=np.asarray(ep.truncations, dtype=bool),
        )
        for i, ep in enumerate(episodes)
    ]
    env = None
    if env_id is not None:
        try:
            gym.spec(env_id)
            env = env_id
        except gym.error.Error:
            env = None  # not installed here (e.g. Adroit without gymnasium-robotics): spaces only
    if env is None and (observation_space is None or action_space is None):
        first = episodes[0]
        observation_space = observation_space or gym.spaces.Box(
            -np.inf, np.inf, first.observations.shape[1:], np.float64
        )
        action_space = action_space or gym.spaces.Box(-1.0, 1.0, first.actions.shape[1:], np.float32)
    try:
        dataset = minari.create_dataset_from_buffers(
            dataset_id=dataset_id,
            buffer=buffers,
            env=env,
            observation_space=observation_space,
            action_space=action_space,
            description=description,
            author=author,
            algorithm_name="isep",
        )
        # Set the reference scores ourselves: Minari drops them without an env, and estimates a
        # missing one with 100 random episodes.
        scores = {"ref_min_score": ref_min_score, "ref_max_score": ref_max_score}
        if any(v is not None for v in scores.values()):
            dataset.storage.update_metadata({k: float(v) for k, v in scores.items() if v is not None})
        return dataset
    except BaseException:
        created.undo()  # no half-written dataset, and nothing that was there before touched
        raise
