"""The agent on your own tensors: the README's loop runs as written (and the docs show the same
loop), actions honour the data's box, and state normalization has one owner, the buffer: the
agent takes its statistics at `attach_data`, and a pair that would train on one scale and act on
another is refused in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from isep.data.buffer import TransitionBuffer, state_normalizer
from isep.errors import ConfigError
from tests.helpers import make_agent

ROOT = Path(__file__).resolve().parents[1]


def own_data_loop(path: Path) -> str:
    """The python block after `<!-- own-data-loop -->`."""
    return re.search(r"<!-- own-data-loop -->\s*```python\n(.*?)```", path.read_text(), re.S).group(1)


def boxed_transitions(n: int = 512, obs_dim: int = 3, act_dim: int = 2, seed: int = 0):
    """Raw states far from 0/1 scale and actions on a ±2 box, rewarded near a = 1.8."""
    g = torch.Generator().manual_seed(seed)
    obs = 50 + 10 * torch.randn(n, obs_dim, generator=g)
    act = 4 * torch.rand(n, act_dim, generator=g) - 2
    rew = -((act - 1.8) ** 2).sum(1)
    return obs, act, rew, obs + torch.randn(n, obs_dim, generator=g), torch.zeros(n)


def test_the_readme_loop_on_plain_tensors_runs_and_acts_in_the_data_box():
    code = own_data_loop(ROOT / "README.md")
    assert code == own_data_loop(ROOT / "docs" / "guides" / "agent.md"), "the README and the docs show other loops"
    assert len(code.strip().splitlines()) <= 20
    small = {"50_000": "40", 'actor="flow", lam=0.3, seed=0)': 'actor="flow", lam=0.3, seed=0, actor_hidden=[32, 32], '
                                                                 'critic_hidden=[32, 32], flow_steps=3)'}
    for old, new in small.items():
        assert old in code, old
        code = code.replace(old, new)
    obs, act, rew, next_obs, done = boxed_transitions()
    scope = {"my_transitions": lambda: (obs, act, rew, next_obs, done), "raw_states": obs[:256]}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (the README's own code)
    agent, actions = scope["agent"], scope["actions"]
    assert int(agent.updates) == 40
    assert actions.shape == (256, 2) and bool((actions.abs() <= 2).all()) and bool((actions.abs() > 1).any())
    mean, std = state_normalizer(obs)
    assert torch.equal(agent.obs_mean, mean) and torch.equal(agent.obs_std, std)  # act() normalizes as training did


def test_attach_data_gives_the_agent_the_buffers_statistics():
    obs, act, rew, next_obs, done = boxed_transitions()
    mean, std = state_normalizer(obs)
    buffer = TransitionBuffer(obs, act, rew, next_obs, done).normalized(mean, std)
    assert torch.allclose(buffer.observations.mean(0), torch.zeros(3), atol=1e-4)
    agent = make_agent("gaussian", 0.3)
    agent.attach_data(buffer, 32)
    assert torch.equal(agent.obs_mean, mean) and torch.equal(agent.obs_std, std)
    # the same policy on raw states (act) and on the buffer's states (the actor itself)
    direct = agent.actor.mode(buffer.observations[:8].unsqueeze(0), agent.precision.actor)[0]
    assert torch.allclose(agent.act(obs[:8]), direct.clamp(-1, 1), atol=1e-6)
    # the statistics travel with the state: a loaded agent acts the same without a buffer
    again = make_agent("gaussian", 0.3)
    again.load_state_dict(agent.state_dict())
    assert torch.equal(again.act(obs[:8]), agent.act(obs[:8]))


def test_a_raw_buffer_with_statistics_or_two_normalizations_is_one_line():
    obs, act, rew, next_obs, done = boxed_transitions()
    mean, std = state_normalizer(obs)
    raw = TransitionBuffer(obs, act, rew, next_obs, done)
    agent = make_agent("gaussian", 0.3)
    agent.set_data_stats(mean, std, 0.0, 1.0)  # the agent would normalize act()'s input, the buffer nothing
    with pytest.raises(ConfigError, match="the buffer's states are raw"):
        agent.attach_data(raw, 32)
    other = make_agent("gaussian", 0.3)
    other.set_data_stats(mean + 1, std, 0.0, 1.0)
    with pytest.raises(ConfigError, match="other state statistics than the buffer was normalized with"):
        other.attach_data(raw.normalized(mean, std), 32)
    with pytest.raises(ConfigError, match="normalized already"):
        raw.normalized(mean, std).normalized(mean, std)
    # raw states and no statistics: nobody normalizes, consistently (the paper's flow configs)
    plain = make_agent("gaussian", 0.3)
    plain.attach_data(raw, 32)
    assert torch.equal(plain.obs_mean, torch.zeros(3)) and torch.equal(plain.obs_std, torch.ones(3))


@pytest.mark.parametrize("given, message", [
    ({"observations": torch.zeros(10, 3)}, "attach_data takes a TransitionBuffer"),
    ("shape", "observations (10, 5) (expected (10, 3))"),
])
def test_a_dict_or_a_wrong_shape_is_one_line_at_attach_data(given, message):
    agent = make_agent("flow", 0.3)
    if given == "shape":
        given = TransitionBuffer(torch.zeros(10, 5), torch.zeros(10, 2), torch.zeros(10), torch.zeros(10, 5), torch.zeros(10))
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        agent.attach_data(given, 4)
    assert "\n" not in str(caught.value)


def test_states_of_the_wrong_size_are_one_line_at_act():
    agent = make_agent("flow", 0.3)
    with pytest.raises(ValueError, match=re.escape("act() takes states of size 3 (the agent's obs_dim) in the last "
                                                   "dimension, got shape (4, 5)")):
        agent.act(torch.zeros(4, 5))
