"""Shared fixtures: a temporary Minari store holding small real datasets made from MuJoCo rollouts."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
SHARED_STORE = Path(__file__).resolve().parents[2] / "shared" / "data" / "minari"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# CLI overrides that shrink any paper config to a few seconds of CPU.
TINY = [
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
    "--data.batch_size", "32",
    "--data.steps_per_epoch", "10",
    "--model.critic_hidden", "[32, 32]",
    "--model.actor_hidden", "[32, 32]",
    "--model.flow_steps", "3",
    "--model.log_every", "5",
]


def stack(observations: list):
    """A list of per-step observations → (T, ...) arrays, nested in dicts like a Dict space."""
    if isinstance(observations[0], dict):
        return {k: stack([o[k] for o in observations]) for k in observations[0]}
    return np.array(observations)


def rollout_episodes(env_id, episodes: int, max_steps: int, seed: int = 0, script=None, **env_kwargs):
    """Random-policy episodes of a Gymnasium env (an id or an EnvSpec), in Minari's layout;
    `script(env, episode, t)`, when given, acts on the env before step t."""
    import gymnasium as gym

    from isep.data.writer import Episode

    env = gym.make(env_id, max_episode_steps=max_steps, **env_kwargs)
    env.action_space.seed(seed)
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        o, a, r, te, tr = [obs], [], [], [], []
        done = False
        while not done:
            if script is not None:
                script(env.unwrapped, i, len(a))
            act = env.action_space.sample()
            obs, rew, term, trunc, _ = env.step(act)
            o.append(obs), a.append(act), r.append(rew), te.append(term), tr.append(trunc)
            done = term or trunc
        out.append(Episode(stack(o), np.array(a), np.array(r), np.array(te), np.array(tr)))
    env.close()
    return out


@pytest.fixture(scope="session")
def minari_store(tmp_path_factory) -> Path:
    """A Minari store with `test/hopper/random-v0` (terminations and time-outs both occur) and
    `test/hopper/other-v0`, made here from real Hopper-v5 rollouts; MINARI_DATASETS_PATH points at it."""
    from isep.data.writer import write_dataset

    root = tmp_path_factory.mktemp("minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    write_dataset("test/hopper/random-v0", rollout_episodes("Hopper-v5", 12, 60, seed=0), env_id="Hopper-v5",
                  ref_min_score=-20.272305, ref_max_score=3234.3)
    write_dataset("test/hopper/other-v0", rollout_episodes("Hopper-v5", 4, 60, seed=100), env_id="Hopper-v5")
    yield root
    if old is None:
        os.environ.pop("MINARI_DATASETS_PATH", None)
    else:
        os.environ["MINARI_DATASETS_PATH"] = old


# Minari's D4RL Kitchen ports record FrankaKitchen-v1 with the dataset's four sub-tasks, counted at
# every step (none removed when done, no termination), and 450 steps on mixed (Farama's
# minari-dataset-generation-scripts, kitchen); the observations are dicts: `observation` (59) and the
# sub-tasks' `achieved_goal` / `desired_goal`.
KITCHEN_MIXED_DATA_ENV = {"tasks_to_complete": ["microwave", "kettle", "bottom burner", "light switch"],
                          "remove_task_when_completed": False, "terminate_on_tasks_completed": False}


def complete_kitchen_subtasks(env, episode: int, t: int) -> None:
    """Scripted progress for random Kitchen rollouts: in episode i, sub-task j (j < i) of kitchen-mixed
    is put at its goal before step 5(j + 1), so that episodes score 0, 1, 2, ... completed sub-tasks."""
    from gymnasium_robotics.envs.franka_kitchen.kitchen_env import OBS_ELEMENT_GOALS, OBS_ELEMENT_INDICES

    j = t // 5 - 1
    if t % 5 == 0 and 0 <= j < episode:
        task = KITCHEN_MIXED_DATA_ENV["tasks_to_complete"][j]
        env.data.qpos[OBS_ELEMENT_INDICES[task]] = OBS_ELEMENT_GOALS[task]


@pytest.fixture(scope="session")
def robotics_store(tmp_path_factory) -> Path:
    """A Minari store with `D4RL/pen/human-v2` and `D4RL/kitchen/mixed-v2` as Minari's D4RL ports store
    them, made here from real AdroitHandPen-v1 and FrankaKitchen-v1 rollouts (random actions)."""
    import dataclasses

    import gymnasium as gym
    import gymnasium_robotics

    from isep.data.writer import write_dataset
    from isep.envs.kitchen import kitchen_spec

    gym.register_envs(gymnasium_robotics)
    root = tmp_path_factory.mktemp("robotics-store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        write_dataset("D4RL/pen/human-v2", rollout_episodes("AdroitHandPen-v1", 4, 40), env_id="AdroitHandPen-v1")
        spec = dataclasses.replace(gym.spec("FrankaKitchen-v1"), max_episode_steps=450, kwargs=KITCHEN_MIXED_DATA_ENV)
        built = kitchen_spec(spec)  # gymnasium-robotics' own Kitchen fails on mujoco >= 3.12
        env = gym.make(built)
        dataset = write_dataset("D4RL/kitchen/mixed-v2", rollout_episodes(built, 3, 30, script=complete_kitchen_subtasks), env_id=None,
                                observation_space=env.observation_space, action_space=env.action_space)
        env.close()
        dataset.storage.update_metadata({"env_spec": spec.to_json()})  # the spec Minari's port records
    return root


@pytest.fixture
def use_robotics_store(robotics_store, monkeypatch) -> Path:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(robotics_store))
    return robotics_store


@pytest.fixture
def one_torch_thread():
    """Tiny networks on a shared 2-core machine: one torch thread (GUIDE), restored afterwards. With two,
    each small matmul of an evaluation's policy waits on the other thread whenever the cores are busy."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def isolated_tracking(tmp_path, monkeypatch):
    """Every test runs in its own folder with its own MLflow store: nothing lands in the checkout."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


@pytest.fixture
def use_store(minari_store, monkeypatch) -> Path:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_store))
    return minari_store


@pytest.fixture
def empty_store(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "empty-store"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture(scope="session")
def results_store(tmp_path_factory) -> dict:
    """The synthetic MLflow store of `tests/results_store.py`, written once for the compare tests
    (which only read it)."""
    from tests.results_store import build_store

    return build_store(tmp_path_factory.mktemp("mlstore"))
