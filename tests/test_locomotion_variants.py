"""The locomotion variants of the paper through `isep fit`, on tiny real MuJoCo rollouts in a temporary
store: medium-expert (Minari's medium + expert combined) and medium-replay (D4RL's own file, imported)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from isep.callbacks.evaluation import RolloutEvaluation
from isep.cli import main
from isep.data.datamodule import D4RLDataModule
from isep.data.minari_source import load_transitions, resolve
from isep.data.registry import TASKS
from isep.data.transitions import Transitions, reward_scale
from isep.data.writer import write_dataset
from tests.conftest import CONFIGS, rollout_episodes
from tests.helpers import run_isep, tiny_fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")
EVAL = ["--evaluation.episodes", "2", "--evaluation.max_episode_steps", "20"]
GAMMA = 0.99  # the configs' γ: a checkpoint's q_bound is max r̃ / (1 − γ), r̃ the scaled reward


def assert_scored_on_d4rl_references(record: dict, task) -> None:
    expected = 100 * (np.mean(record["returns"]) - task.ref_min_score) / (task.ref_max_score - task.ref_min_score)
    assert record["eval/normalized_score"] == pytest.approx(expected)


def test_medium_expert_combines_medium_and_expert(empty_store, tmp_path):
    """halfcheetah-medium-expert-v2 = Minari's medium + expert: IQL's reward scale from the episodes of
    both, D4RL's reference scores of the task."""
    task = TASKS["halfcheetah-medium-expert-v2"]
    medium, expert = task.minari_ids
    write_dataset(medium, rollout_episodes("HalfCheetah-v5", 4, 30, seed=0), env_id="HalfCheetah-v5")
    write_dataset(expert, rollout_episodes("HalfCheetah-v5", 3, 60, seed=50), env_id="HalfCheetah-v5")
    parts = [load_transitions(i) for i in (medium, expert)]
    combined = reward_scale(Transitions.concatenate(parts), "iql_locomotion")
    assert combined not in [reward_scale(p, "iql_locomotion") for p in parts]  # the two sets differ

    evaluation = RolloutEvaluation()  # the callback's defaults on a locomotion task: 20 episodes, 1000 steps
    dm = D4RLDataModule(task.name)
    evaluation.prepare_for(dm, dm.obs_dim, dm.act_dim)
    assert (evaluation.episodes, evaluation._env_fn().spec.max_episode_steps) == (20, 1000)

    state, record = tiny_fit(CONFIGS / "halfcheetah_medexp.yaml", tmp_path / "runs", *EVAL)
    max_reward = max(float(p.rewards.max()) for p in parts)
    assert float(state["state_dict"]["agent.q_bound"]) == pytest.approx(max_reward * combined / (1 - GAMMA), rel=1e-5)
    assert_scored_on_d4rl_references(record, task)


def write_d4rl_file(path: Path, episodes) -> tuple[int, int]:
    """Episodes as a legacy D4RL file: flat arrays, each episode's end flagged as a terminal or a
    timeout; returns (terminals, timeouts)."""
    def flat(name):
        return np.concatenate([getattr(e, name) for e in episodes])

    with h5py.File(path, "w") as f:
        f["observations"] = np.concatenate([e.observations[:-1] for e in episodes])
        f["next_observations"] = np.concatenate([e.observations[1:] for e in episodes])
        f["actions"], f["rewards"] = flat("actions"), flat("rewards")
        f["terminals"], f["timeouts"] = flat("terminations"), flat("truncations")
    return int(flat("terminations").sum()), int(flat("truncations").sum())


def test_medium_replay_through_import_d4rl(empty_store, tmp_path, capsys):
    """hopper-medium-replay-v2 from D4RL's file: refused with the import command until imported, then
    the task name resolves to the imported id, whose terminals and timeouts stay apart, and trains."""
    task = TASKS["hopper-medium-replay-v2"]
    assert main(["fit", "--config", str(CONFIGS / "hopper_medrep.yaml")]) == 2
    assert f"isep data import-d4rl hopper_medium_replay-v2.hdf5 --id {task.import_id}" in capsys.readouterr().err

    episodes = rollout_episodes("Hopper-v5", 10, 40, seed=0)
    file = tmp_path / "hopper_medium_replay-v2.hdf5"
    terminals, timeouts = write_d4rl_file(file, episodes)
    assert terminals > 0 and timeouts > 0, "the rollouts must end both ways"
    out = run_isep("data", "import-d4rl", str(file), "--id", task.import_id, "--task", task.name)
    assert out.returncode == 0, out.stderr
    assert resolve(task.name).minari_ids == (task.import_id,)
    data = load_transitions(task.import_id)
    assert (int(data.terminals.sum()), int(data.timeouts.sum())) == (terminals, timeouts)
    np.testing.assert_allclose(data.episode_returns, [e.rewards.sum() for e in episodes], rtol=1e-6)

    state, record = tiny_fit(CONFIGS / "hopper_medrep.yaml", tmp_path / "runs", *EVAL)
    scale = reward_scale(data, "iql_locomotion")
    assert float(state["state_dict"]["agent.q_bound"]) == pytest.approx(data.rewards.max() * scale / (1 - GAMMA), rel=1e-5)
    assert_scored_on_d4rl_references(record, task)
