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


def rollout_episodes(env_id: str, episodes: int, max_steps: int, seed: int = 0):
    """Random-policy episodes of a Gymnasium MuJoCo env, in Minari's layout."""
    import gymnasium as gym

    from isep.data.writer import Episode

    env = gym.make(env_id, max_episode_steps=max_steps)
    env.action_space.seed(seed)
    out = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        o, a, r, te, tr = [obs], [], [], [], []
        done = False
        while not done:
            act = env.action_space.sample()
            obs, rew, term, trunc, _ = env.step(act)
            o.append(obs), a.append(act), r.append(rew), te.append(term), tr.append(trunc)
            done = term or trunc
        out.append(Episode(np.array(o), np.array(a), np.array(r), np.array(te), np.array(tr)))
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
