"""ISEP-FM's a_π draw during training (`--model.policy_guidance`, `--model.policy_flow_steps`):
one branch at w = 1 or 0 computes the two-branch formula, the agent and the plain-torch reference
draw with the setting, the default is the trained w, and bad values stop before anything is written."""

from __future__ import annotations

import pytest
import torch

from isep.agent import AgentConfig
from isep.errors import ConfigError
from isep.models.flow import NULL, POSITIVE, guided_sample, one_branch_labels
from isep.rng import Stream
from isep.runs import run_key
from tests.conftest import CONFIGS, TINY
from tests.helpers import ACT_DIM, OBS_DIM, draws_for, isep_here, make_agent, make_batch, stacked

TOY = ["--config", str(CONFIGS / "toy" / "sparse_isep_fm.yaml"), *TINY, "--data.toy_size", "500",
       "--mlflow.enabled", "false"]


def _two_branch(field, obs, steps, w, noise):
    """Eq. 7 written out with both velocities at every step (what the doubled batch computes)."""
    r, b, _ = obs.shape
    x, dt = noise, 1.0 / steps
    null, pos = torch.full((r, b), NULL), torch.full((r, b), POSITIVE)
    with torch.no_grad():
        for k in range(steps):
            t = torch.full((r, b), k * dt)
            v_null, v_pos = field(x, t, obs, null), field(x, t, obs, pos)
            x = x + dt * (v_null + w * (v_pos - v_null))
    return x.clamp(-1, 1)


@pytest.mark.parametrize("weights", [[1.0], [0.0], [1.0, 0.0, 1.0]])
def test_one_branch_draw_equals_the_two_branch_formula_at_w_one_and_zero(weights):
    agent = make_agent("flow", 0.3, guidance=2.0, seed=list(range(len(weights))))
    runs = len(weights)
    g = torch.Generator().manual_seed(3)
    obs, noise = torch.randn(runs, 64, OBS_DIM, generator=g), torch.randn(runs, 64, ACT_DIM, generator=g)
    labels = one_branch_labels(weights)
    assert labels == [POSITIVE if w == 1.0 else NULL for w in weights]
    with torch.no_grad():
        one = guided_sample(agent.actor, obs, 4, 0.0, noise, labels=torch.tensor(labels).view(-1, 1))
        doubled = guided_sample(agent.actor, obs, 4, torch.tensor(weights).view(-1, 1, 1), noise)
    expected = _two_branch(agent.actor, obs, 4, torch.tensor(weights).view(-1, 1, 1), noise)
    torch.testing.assert_close(one, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(doubled, expected, rtol=0, atol=1e-6)
    assert one_branch_labels([1.0, 2.0]) is None and one_branch_labels([0.5]) is None


def _draw(agent, update: int = 0):
    batch = stacked(make_batch(), agent.runs)
    draws = draws_for(agent, update)
    noise = draws.normal(Stream.POLICY_NOISE, batch["actions"].shape[1:])
    return agent.policy_actions(batch["observations"], noise), batch["observations"], noise


def test_the_agent_draws_a_pi_with_the_setting_and_by_default_with_the_trained_w():
    default, _, _ = _draw(make_agent("flow", 0.3, guidance=2.0))
    at_one = make_agent("flow", 0.3, guidance=2.0, policy_guidance=1.0)
    drawn, obs, noise = _draw(at_one)
    assert at_one.draw_labels.tolist() == [[POSITIVE]]  # one branch
    with torch.no_grad():
        torch.testing.assert_close(drawn, _two_branch(at_one.actor, obs, 3, 1.0, noise), rtol=0, atol=1e-6)
        torch.testing.assert_close(default, _two_branch(at_one.actor, obs, 3, 2.0, noise), rtol=0, atol=1e-6)
    assert not torch.allclose(drawn, default)  # the setting changes the draw
    # half the Euler steps: the trained w, 2 steps instead of the agent's 4
    fewer = make_agent("flow", 0.3, guidance=2.0, flow_steps=4, policy_flow_steps=2)
    drawn, obs, noise = _draw(fewer)
    torch.testing.assert_close(drawn, _two_branch(fewer.actor, obs, 2, 2.0, noise), rtol=0, atol=1e-6)
    # evaluation keeps the trained w and flow_steps: the setting is training's only
    assert fewer.draw_steps == 2 and fewer.config.flow_steps == 4


def test_a_stack_draws_each_run_with_its_own_setting():
    agent = make_agent("flow", 0.3, guidance=[2.0, 2.0, 3.0], policy_guidance=[None, 1.0, 0.0], seed=[0, 1, 2])
    assert agent.draw_guidance.flatten().tolist() == [2.0, 1.0, 0.0] and agent.draw_labels is None
    drawn, obs, noise = _draw(agent)
    with torch.no_grad():
        expected = _two_branch(agent.actor, obs, 3, torch.tensor([2.0, 1.0, 0.0]).view(-1, 1, 1), noise)
    torch.testing.assert_close(drawn, expected, rtol=0, atol=1e-6)


def test_the_reference_update_draws_with_the_setting():
    from isep.bench.reference import ReferenceISEP

    ref = ReferenceISEP(OBS_DIM, ACT_DIM, "flow", guidance=2.0, flow_steps=4, policy_guidance=1.0, policy_flow_steps=2,
                        actor_hidden=(16, 16))
    calls = []
    ref.pi.register_forward_hook(lambda *args: calls.append(1))
    obs = torch.randn(8, OBS_DIM)
    torch.manual_seed(0)
    drawn = ref.sample(obs)
    assert len(calls) == 2  # 2 Euler steps, one branch each
    torch.manual_seed(0)
    x = torch.randn(8, ACT_DIM)
    with torch.no_grad():
        for k in range(2):
            x = x + ref._velocity(x, torch.full((8,), k / 2), obs, torch.full((8,), POSITIVE)) / 2
    torch.testing.assert_close(drawn, x.clamp(-1, 1))


def test_runs_from_before_the_setting_keep_their_key_and_a_lambda_zero_run_ignores_it():
    config = {"model": {"actor": "flow", "lam": 0.3}, "data": {"dataset": "toy/sparse-optimum"}, "seed_everything": 0}
    with_default = {**config, "model": {**config["model"], "policy_guidance": None, "policy_flow_steps": None}}
    with_one = {**config, "model": {**config["model"], "policy_guidance": 1.0}}
    assert run_key(config) == run_key(with_default) != run_key(with_one)
    cfgrl = make_agent("flow", 0.0, policy_guidance=1.0)
    assert not cfgrl.draws_policy  # λ = 0 draws no a_π
    assert AgentConfig(actor="flow", lam=0.3).draw_guidance() == [1.0]  # the trained w (the default 1.0)


def test_a_lambda_zero_run_keeps_its_key_and_resumes_whatever_the_draw_says(tmp_path, capfd):
    """The D4RL configs draw a_π at w = 1; their CFGRL runs (--model.lam 0) draw nothing, so a CFGRL
    run started before that change (draw: the trained w) is the same run and resumes."""
    from isep.cli import main

    cfgrl = {"model": {"actor": "flow", "lam": 0.0}, "data": {"dataset": "toy/sparse-optimum"}, "seed_everything": 0}
    drawn = {**cfgrl, "model": {**cfgrl["model"], "policy_guidance": 1.0, "policy_flow_steps": 5}}
    assert run_key(cfgrl) == run_key(drawn)
    stack = {**drawn, "model": {**drawn["model"], "lam": [0.0, 0.3]}}
    assert run_key(stack) != run_key({**stack, "model": {**stack["model"], "policy_guidance": None}})

    root = tmp_path / "runs"
    common = ["fit", *TOY, "--model.lam", "0", "--trainer.default_root_dir", str(root), "--evaluation.every", "0"]
    assert main([*common, "--model.policy_guidance", "null", "--trainer.max_steps", "20"]) == 0
    assert main([*common, "--trainer.max_steps", "30", "--ckpt_path", "last"]) == 0  # the config's 1.0 now
    (ckpt,) = root.rglob("last.ckpt")
    assert torch.load(ckpt, weights_only=False)["global_step"] == 30
    assert "a_π" not in capfd.readouterr().err  # λ = 0 draws nothing and says nothing of the draw
    assert main(["fit", *TOY, "--trainer.default_root_dir", str(tmp_path / "isep"), "--evaluation.every", "0",
                 "--trainer.max_steps", "2", "--stack.policy_guidance", "1,0"]) == 0
    assert "2 stacked runs (a_π drawn at w = 0, 1, 3 steps)" in capfd.readouterr().err  # the start line says the draw


@pytest.mark.parametrize("bad", [{"policy_guidance": 10.5}, {"policy_guidance": -0.1}, {"policy_guidance": float("nan")},
                                 {"policy_flow_steps": 0}])
def test_bad_draw_settings_are_config_errors(bad):
    with pytest.raises(ConfigError, match="policy_"):
        AgentConfig(actor="flow", lam=0.3, **bad)


@pytest.mark.parametrize("flag, value", [("--model.policy_guidance", "11"), ("--model.policy_flow_steps", "0")])
def test_bad_draw_settings_stop_the_fit_in_one_line_before_anything_is_written(flag, value, tmp_path, capfd):
    out = isep_here(capfd, "fit", *TOY, flag, value, "--trainer.default_root_dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "policy_" in lines[0], out.stderr
    assert not (tmp_path / "runs").exists()


def test_the_draw_settings_reach_the_printed_config(tmp_path, capfd):
    from isep.cli import main

    with pytest.raises(SystemExit) as stop:  # (--print_config ends with argparse's exit 0)
        main(["fit", *TOY, "--model.policy_guidance", "0", "--model.policy_flow_steps", "5", "--print_config"])
    printed = capfd.readouterr().out
    assert stop.value.code == 0 and "policy_guidance: 0.0" in printed and "policy_flow_steps: 5" in printed


def test_compare_holds_every_draw_setting_against_the_one_lambda_zero_baseline():
    import pandas as pd

    from isep.results.analysis import baseline_of
    from isep.results.frames import _add_settings, without_draw

    runs = pd.DataFrame([{"metric": "m", "task": "t", "actor": "flow", "left_out": "", "lam": lam,
                          "model.policy_guidance": str(g), "model.expectile": "0.7"}
                         for lam, g in ((0.0, None), (0.3, None), (0.3, 1.0), (0.3, 0.0))])
    labels = _add_settings(runs)["settings"].tolist()
    assert labels == ["", "policy_guidance=None", "policy_guidance=1.0", "policy_guidance=0.0"]
    assert without_draw("expectile=0.8, policy_guidance=1.0, policy_flow_steps=5") == "expectile=0.8"
    cells = runs.assign(settings=labels, policy_mix="stochastic")
    for _, cell in cells[cells["lam"] > 0].iterrows():
        assert baseline_of(cells, cell)["lam"] == 0.0
    # another setting that a λ = 0 run does use still separates baselines
    other = cells.assign(settings=["expectile=0.9", "expectile=0.7, policy_guidance=1.0", "", ""])
    assert baseline_of(other, other.iloc[1]) is None
