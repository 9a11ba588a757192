"""Adroit (pen) and Kitchen end to end: real AdroitHandPen-v1 / FrankaKitchen-v1 rollouts stored as
Minari's D4RL ports store them, `isep fit` on the paper's configs, evaluation in the real envs under
D4RL's protocol, `isep evaluate` on a Kitchen checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from isep.data.registry import TASKS
from tests.conftest import CONFIGS, KITCHEN_MIXED_DATA_ENV, complete_kitchen_subtasks
from tests.helpers import run_isep, tiny_fit

PEN, KITCHEN = TASKS["pen-human-v1"], TASKS["kitchen-mixed-v0"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def normalized(returns: list[float], task) -> float:
    return 100 * (np.mean(returns) - task.ref_min_score) / (task.ref_max_score - task.ref_min_score)


@pytest.mark.parametrize("config", ["pen_human.yaml", "pen_human_gaussian.yaml"])
def test_pen_human_trains_and_evaluates_in_the_real_env(config, use_robotics_store, tmp_path):
    _, record = tiny_fit(CONFIGS / config, tmp_path / "runs")  # the paper's evaluation: 50 episodes of 100 steps
    assert len(record["returns"]) == 50 and record["seeds"] == list(range(100_000, 100_050))
    assert record["eval/normalized_score"] == pytest.approx(normalized(record["returns"], PEN))
    assert len(set(record["returns"])) > 1  # a real env: each seed its own episode


@pytest.mark.parametrize("config", ["kitchen_mixed.yaml", "kitchen_mixed_gaussian.yaml"])
def test_kitchen_mixed_trains_evaluates_and_isep_evaluate_reads_its_checkpoint(config, use_robotics_store, tmp_path):
    root = tmp_path / "runs"
    _, record = tiny_fit(CONFIGS / config, root, "--evaluation.episodes", "3", "--evaluation.max_episode_steps", "20")
    returns = record["returns"]
    assert len(returns) == 3 and all(r in (0, 1, 2, 3, 4) for r in returns)  # completed sub-tasks
    assert record["eval/normalized_score"] == pytest.approx(100 * np.mean(returns) / 4)
    (ckpt,) = root.rglob("last.ckpt")
    guidance = ["--guidance", "0,1"] if "gaussian" not in config else []
    out = run_isep("evaluate", "--ckpt_path", str(ckpt.parent.parent), "--episodes", "2", "--max_episode_steps", "20",
                   "--no-mlflow", *guidance, env={"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (ckpt.parent.parent / "guidance_eval.jsonl").read_text().splitlines()]
    assert len(rows) == (2 if guidance else 1) and all(len(r["returns"]) == 2 for r in rows)
    for r in rows:
        assert r["eval/normalized_score"] == pytest.approx(100 * np.mean(r["returns"]) / 4)
        assert f"| {r['eval/normalized_score']:.1f} |" in out.stdout


def test_evaluation_defaults_follow_the_paper_and_d4rl(use_robotics_store):
    """Without overrides the callback evaluates 50 episodes on Adroit and Kitchen, in envs of D4RL's
    length (pen 100 steps, kitchen 280; the datasets record 200 and 450)."""
    import minari

    from isep.callbacks.evaluation import RolloutEvaluation
    from isep.data.datamodule import D4RLDataModule

    assert (PEN.eval_episodes, PEN.max_episode_steps, KITCHEN.eval_episodes, KITCHEN.max_episode_steps) == (50, 100, 50, 280)
    for task, dataset_id, keys, recorded in ((PEN, "D4RL/pen/human-v2", None, 200),
                                             (KITCHEN, "D4RL/kitchen/mixed-v2", ["observation"], 450)):
        assert minari.load_dataset(dataset_id).env_spec.max_episode_steps == recorded
        dm = D4RLDataModule(task.name, obs_keys=keys)
        evaluation = RolloutEvaluation()
        evaluation.prepare_for(dm, dm.obs_dim, dm.act_dim)
        env = evaluation._env_fn()
        assert evaluation.episodes == 50 and env.spec.max_episode_steps == task.max_episode_steps
        env.close()


def kitchen_rewards(env) -> list[float]:
    """Rewards of an episode (at most 30 steps) in which kitchen-mixed's four sub-tasks are completed
    in turn, one before each of the steps 5, 10, 15 and 20."""
    env.reset(seed=0)
    rewards = []
    for t in range(30):
        complete_kitchen_subtasks(env.unwrapped, 4, t)
        _, reward, terminated, _, _ = env.step(env.action_space.sample())
        rewards.append(reward)
        if terminated:
            break
    env.close()
    return rewards


def test_kitchen_is_scored_by_completed_subtasks_as_d4rl(use_robotics_store):
    """The evaluation env rewards each of the dataset's four sub-tasks once and ends the episode when all
    are done (return 4 = normalized score 100), where the recorded data env counts them at every step."""
    import gymnasium as gym
    import minari

    from isep.envs import make_env_fn
    from isep.envs.kitchen import kitchen_spec
    from isep.evaluation import NormalizedScore

    evaluation = make_env_fn(KITCHEN.env_id, "D4RL/kitchen/mixed-v2")()
    assert evaluation.spec.kwargs["tasks_to_complete"] == KITCHEN_MIXED_DATA_ENV["tasks_to_complete"]
    rewards = kitchen_rewards(evaluation)
    assert len(rewards) == 21 and [t for t, r in enumerate(rewards) if r] == [5, 10, 15, 20] and sum(rewards) == 4
    score = NormalizedScore(KITCHEN.ref_min_score, KITCHEN.ref_max_score)
    score.update(np.array([sum(rewards)]))
    assert float(score.compute()) == 100.0
    recorded = minari.load_dataset("D4RL/kitchen/mixed-v2").env_spec  # the data env: 0, 1, 2, 3, 4 at every step
    assert kitchen_rewards(gym.make(kitchen_spec(recorded))) == [float(min(t // 5, 4)) for t in range(30)]


UPSTREAM_KITCHEN = """
import sys, numpy as np, gymnasium as gym, gymnasium_robotics
gym.register_envs(gymnasium_robotics)
env = gym.make("FrankaKitchen-v1")
obs, _ = env.reset(seed=3)
out = [obs["observation"]]
for action in np.random.default_rng(0).uniform(-1, 1, (25, 9)):
    out.append(env.step(action)[0]["observation"])
np.save(sys.argv[1], np.array(out))
"""


def test_isep_kitchen_is_gymnasium_robotics_kitchen_step_for_step(tmp_path):
    """isep's Kitchen gives the observations of gymnasium-robotics' own, whose only fault on current
    MuJoCo is its joint-type assertion: run without assertions (`python -O`), it is the reference."""
    import gymnasium as gym

    from isep.envs.kitchen import kitchen_spec

    subprocess.run([sys.executable, "-O", "-c", UPSTREAM_KITCHEN, str(tmp_path / "upstream.npy")], check=True,
                   capture_output=True)
    env = gym.make(kitchen_spec(gym.spec("FrankaKitchen-v1")))
    obs, _ = env.reset(seed=3)
    ours = [obs["observation"]]
    for action in np.random.default_rng(0).uniform(-1, 1, (25, 9)):
        ours.append(env.step(action)[0]["observation"])
    env.close()
    assert type(env.unwrapped).__module__ == "isep.envs.kitchen"
    np.testing.assert_array_equal(np.array(ours), np.load(tmp_path / "upstream.npy"))
