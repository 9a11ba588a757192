"""The agent apart from Lightning: the README's plain loop equals `isep fit`, checkpoints written
before the split still resume and evaluate, per-update hooks (the target EMA) run inside the
compiled step, validation draws never repeat training draws, and action bounds follow the data."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from isep.cli import main
from tests.conftest import CONFIGS
from tests.helpers import ready_agent, run_folders

README = Path(__file__).resolve().parents[1] / "docs" / "guides" / "agent.md"  # the plain loop's page
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints_v0_1"


def readme_loop() -> str:
    """The plain loop of the agent guide (the python block after `<!-- plain-loop -->`)."""
    text = README.read_text()
    return re.search(r"<!-- plain-loop -->\s*```python\n(.*?)```", text, re.S).group(1)


def test_the_readme_loop_ends_where_isep_fit_ends(use_store, tmp_path):
    """The README's loop, with its data and sizes shrunk, against `isep fit` with the same settings:
    every parameter, target, moment and buffer bit for bit (eager, CPU)."""
    code = readme_loop()
    small = {
        '"hopper-medium-v2", batch_size=256': '"test/hopper/random-v0", batch_size=32',
        'seed=0)': 'seed=0, critic_hidden=[32, 32], actor_hidden=[32, 32])',
        "updates = 100_000": "updates = 30",
    }
    for old, new in small.items():
        assert code.count(old) == 1, old
        code = code.replace(old, new)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (the README's own code)
    agent = scope["agent"]
    assert int(agent.updates) == 30
    root = tmp_path / "runs"
    assert main(["fit", "--config", str(CONFIGS / "hopper_med_gaussian.yaml"), "--data.dataset", "test/hopper/random-v0",
                 "--data.batch_size", "32", "--model.lam", "0.3", "--model.expectile", "0.7", "--model.beta", "3.0",
                 "--seed_everything", "0", "--trainer.max_steps", "30", "--data.steps_per_epoch", "10",
                 "--model.critic_hidden", "[32, 32]", "--model.actor_hidden", "[32, 32]", "--model.fast", "false",
                 "--evaluation.every", "0", "--mlflow.enabled", "false", "--trainer.enable_progress_bar", "false",
                 "--trainer.precision", "32-true", "--trainer.default_root_dir", str(root)]) == 0
    (run,) = run_folders(root)
    fitted = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    mine = {k: v for k, v in agent.state_dict().items() if k != "_extra_state"}
    assert {f"agent.{k}" for k in mine} <= set(fitted) and any(k.startswith("moments.") for k in mine)
    worst = max(float((fitted[f"agent.{k}"].double() - v.double()).abs().max()) for k, v in mine.items())
    print(f"largest difference, README loop vs isep fit, 30 updates: {worst}")
    assert worst == 0.0
    untrained = scope["ISEPAgent"](agent.obs_dim, agent.act_dim, **scope["settings"])
    assert not torch.equal(mine["actor.net.layers.0.weight"], untrained.actor.net.layers[0].weight)  # it trained


@pytest.mark.parametrize("name, config, extra", [
    ("gaussian", "sparse_gaussian.yaml", []),
    # (the fixture drew a_π at the trained w: the toy config's later `policy_guidance: 1.0` is set back)
    ("flow_stack", "sparse_isep_fm.yaml", ["--model.flow_steps", "3", "--model.label_embed_dim", "4", "--stack.lam", "0,0.3",
                                           "--model.policy_guidance", "null"]),
])
def test_checkpoints_from_before_the_split_resume_and_evaluate(name, config, extra, tmp_path, capsys):
    """Checkpoints written by the module that held the networks itself (tests/fixtures) resume to
    exactly the state the old code reached, and `isep evaluate` reads them."""
    root = tmp_path / "runs"
    shutil.copytree(FIXTURES / "toy__sparse-optimum", root / "toy__sparse-optimum")
    common = ["--data.toy_size", "500", "--data.batch_size", "32", "--data.steps_per_epoch", "10",
              "--model.critic_hidden", "[16,16]", "--model.actor_hidden", "[16,16]", "--evaluation.every", "1",
              "--mlflow.enabled", "false", "--trainer.enable_progress_bar", "false", "--model.log_every", "5"]
    assert main(["fit", "--config", str(CONFIGS / "toy" / config), *common, *extra, "--trainer.max_epochs", "3",
                 "--trainer.default_root_dir", str(root), "--ckpt_path", "last"]) == 0
    (run,) = [f for f in run_folders(root) if (name == "gaussian") == f.name.startswith("gaussian")]
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    expected = torch.load(FIXTURES / "resumed_to_30_updates.pt", weights_only=False)[name]
    assert resumed["global_step"] == expected["global_step"] == 30
    for key, value in expected["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][f"agent.{key}"], value, rtol=0, atol=0, msg=key)
    target = run / "run1-flow-lam0.3-stochastic-seed0" if name == "flow_stack" else run
    capsys.readouterr()
    assert main(["evaluate", "--ckpt_path", str(target), "--no-mlflow"]) == 0
    assert "expected reward" in capsys.readouterr().out


def test_the_target_ema_hook_runs_inside_the_compiled_step():
    """Hooks run in the step the fast path compiles (`train_step`, compiled with fullgraph=True where
    PyTorch traces autograd: one graph with the update), the EMA moves the targets by the exact lerp,
    compiled = eager, and its rate is the hook's."""
    from isep.agent import TargetEMAUpdate

    def probe(agent) -> None:
        agent.probe.add_(1)  # device work, every update

    agents = {}
    for mode in ("eager", "compile"):
        agent = ready_agent("gaussian", 0.3)
        agent.register_buffer("probe", torch.zeros(()))
        agent.set_update_hook("target_ema", TargetEMAUpdate(0.2))
        agent.set_update_hook("probe", probe)
        step = agent.step_function(mode)
        for _ in range(4):
            step()
        before = [p.detach().clone() for p in agent.target_critic.parameters()]
        step()
        for new, old, online in zip(agent.target_critic.parameters(), before, agent.critic.parameters()):
            torch.testing.assert_close(new, old + 0.2 * (online - old), rtol=0, atol=1e-6)
        agents[mode] = agent
    assert int(agents["compile"].probe) == int(agents["eager"].probe) == 5
    for a, b in zip(agents["eager"].target_critic.parameters(), agents["compile"].target_critic.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    slow = ready_agent("gaussian", 0.3)  # the default rate (0.005) moves the targets less
    for _ in range(5):
        slow.step_function()()
    assert not torch.allclose(next(slow.target_critic.parameters()), next(agents["eager"].target_critic.parameters()))


def test_a_target_ema_callback_sets_the_rate_of_a_fit(tmp_path):
    """`--trainer.callbacks+ TargetEMA --rate …` (a user's callback) replaces the module's own."""
    common = ["fit", "--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"), "--data.toy_size", "500",
              "--data.steps_per_epoch", "10", "--model.critic_hidden", "[16,16]", "--model.actor_hidden", "[16,16]",
              "--trainer.max_epochs", "1", "--evaluation.every", "0", "--mlflow.enabled", "false",
              "--trainer.enable_progress_bar", "false"]
    targets = {}
    for rate in (None, "1.0"):
        extra = [] if rate is None else ["--trainer.callbacks+", "isep.callbacks.target_ema.TargetEMA",
                                         "--trainer.callbacks.rate", rate]
        root = tmp_path / f"rate{rate}"
        assert main([*common, *extra, "--trainer.default_root_dir", str(root)]) == 0
        (run,) = run_folders(root)
        targets[rate] = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    online, target = (targets["1.0"][f"agent.{n}.net.layers.0.weight"] for n in ("critic", "target_critic"))
    assert torch.equal(online, target)  # rate 1: the targets are the online critic
    assert not torch.equal(targets[None]["agent.target_critic.net.layers.0.weight"], targets[None]["agent.critic.net.layers.0.weight"])


def test_validation_draws_repeat_no_training_draw():
    """Validation used update 2**31, which wrapped to training update 0's numbers in 32 bits."""
    from isep.rng import Draws, Stream, run_keys

    keys = run_keys([0, 1])
    val = Draws(keys, torch.tensor(0), validation=True).bits(Stream.BATCH, (64,))
    for update in (0, 1, 2**26 - 1, 2**31, 2**32):
        assert not torch.equal(val, Draws(keys, torch.tensor(update)).bits(Stream.BATCH, (64,))), update
    assert torch.equal(Draws(keys, torch.tensor(2**31)).bits(Stream.BATCH, (64,)),
                       Draws(keys, torch.tensor(0)).bits(Stream.BATCH, (64,)))  # the old key's collision
    with pytest.raises(ValueError, match="training streams"):
        Draws(keys, torch.tensor(0)).bits(40, (4,))


def test_action_bounds_come_from_the_dataset(tmp_path, monkeypatch, capsys):
    """A dataset whose actions lie in [-0.5, 0.5]: the policy's actions are clipped there, and an
    evaluation env with other bounds is refused at start."""
    import gymnasium as gym
    import numpy as np

    from isep.data.datamodule import D4RLDataModule
    from isep.data.writer import write_dataset
    from tests.conftest import rollout_episodes

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    episodes = rollout_episodes("Hopper-v5", 3, 30)
    for ep in episodes:
        ep.actions = ep.actions * 0.5
    space = gym.spaces.Box(-0.5, 0.5, (3,), np.float32)
    write_dataset("test/half/bounded-v0", episodes, observation_space=gym.spaces.Box(-np.inf, np.inf, (11,)),
                  action_space=space)
    dm = D4RLDataModule("test/half/bounded-v0", reward_transform="none")
    dm.setup()
    from isep.agent import ISEPAgent

    agent = ISEPAgent(dm.obs_dim, dm.act_dim, actor="gaussian", critic_hidden=[8], actor_hidden=[8], seed=0)
    agent.set_data_stats(**dm.data_stats())
    with torch.no_grad():
        agent.actor.net.layers[-1].bias.fill_(5.0)  # a mean far outside the bounds
    assert agent.act(torch.zeros(4, 11)).abs().max() == pytest.approx(0.5, abs=1e-3)  # the mean spans the box
    code = main(["fit", "--config", str(CONFIGS / "hopper_med_gaussian.yaml"), "--data.dataset", "test/half/bounded-v0",
                 "--data.reward_transform", "none", "--evaluation.env_id", "Hopper-v5", "--mlflow.enabled", "false",
                 "--trainer.default_root_dir", str(tmp_path / "runs")])
    assert code == 2
    assert "dataset's action space is [-0.5, 0.5]" in capsys.readouterr().err


def test_the_agent_and_its_evaluation_import_no_lightning():
    """`isep.agent` and `isep.evaluation` are plain PyTorch: building an agent and acting with it
    loads no Lightning module (checked in a fresh interpreter)."""
    import os
    import subprocess
    import sys

    code = ("import sys\nfrom isep.agent import ISEPAgent\nfrom isep.evaluation import Evaluator, evaluate\n"
            "agent = ISEPAgent(3, 2, actor='flow', actor_hidden=[8], critic_hidden=[8])\nagent.act([[0.0, 0.0, 0.0]])\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m == 'lightning' or m.startswith(('lightning.', 'pytorch_lightning'))}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_attach_data_refuses_what_is_not_a_buffer_of_the_agents_shapes():
    from isep.errors import ConfigError
    from tests.helpers import make_agent, small_buffer

    agent, buffer = make_agent("gaussian", 0.3), small_buffer()
    with pytest.raises(ConfigError, match="attach_data takes a TransitionBuffer .* got a dict"):
        agent.attach_data(vars(buffer), 16)
    wide = type(buffer)(**{**vars(buffer), "actions": torch.zeros(len(buffer), agent.act_dim + 1)})
    with pytest.raises(ConfigError, match=r"actions \(500, 3\) \(expected \(500, 2\)\)"):
        agent.attach_data(wide, 16)
    agent.attach_data(buffer, 16)  # the right shapes are taken


def test_a_state_of_other_settings_is_refused_with_each_difference():
    from isep.errors import ConfigError
    from tests.helpers import make_agent

    trained = make_agent("flow", 0.3, guidance=2.0).state_dict()
    with pytest.raises(ConfigError, match=r"lam \[0.5\] .*, \[0.3\].*guidance"):
        make_agent("flow", 0.3, guidance=1.0).load_state_dict({**trained, "lam": torch.tensor([[0.5]])})
    make_agent("flow", 0.3, guidance=2.0).load_state_dict(trained)  # the same settings load


@pytest.mark.parametrize("actor", ["gaussian", "flow"])
def test_actions_reach_the_bounds_of_the_data_not_just_one(actor):
    """On a ±2 action box a policy can act up to ±2 (training's draw, act() and evaluation alike),
    not only within IQL's [-1, 1]."""
    from tests.helpers import make_agent

    agent = make_agent(actor, 0.3)
    agent.set_data_stats(torch.zeros(agent.obs_dim), torch.ones(agent.obs_dim), torch.tensor(1.0), torch.tensor(1.0),
                         action_low=-2 * torch.ones(agent.act_dim), action_high=2 * torch.ones(agent.act_dim))
    last = agent.actor.net.layers[-1]
    with torch.no_grad():  # push every output up: tanh → 1 (Gaussian), a velocity of 10 (flow)
        last.weight.zero_()
        last.bias.fill_(10.0)
    acted = agent.act(torch.zeros(64, agent.obs_dim))  # the mean / a guided sample
    assert acted.max() == 2.0 and acted.min() > 1.99  # reaches the box's edge, beyond 1
    drawn = agent.policy_actions(torch.zeros(1, 64, agent.obs_dim), torch.zeros(1, 64, agent.act_dim))
    assert drawn.max() == 2.0 and drawn.min() > 1.99
    # a state saved and loaded keeps the box
    again = make_agent(actor, 0.3)
    again.load_state_dict(agent.state_dict())
    assert again.act(torch.zeros(8, agent.obs_dim)).min() > 1.99
