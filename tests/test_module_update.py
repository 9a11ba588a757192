"""`ISEPAgent.update` without a Trainer: λ = 0 equals a from-scratch IQL / CFGRL, gradients reach
only their own network, the target EMA is exact, and every variant runs with finite metrics.

The references below are written from the paper / IQL's code directly and do not call
`isep.losses`. The agent's networks carry a leading run dimension (one run here: R = 1); the
references call them on one run and drop that dimension. Random numbers come from the update's
counter-based draws (`isep.rng`); where a reference needs the same numbers, it asks the same draws.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from isep.models.flow import NEGATIVE, NULL, POSITIVE
from isep.agent import ISEPAgent
from isep.agent.targets import ValueTargets
from isep.rng import Draws, Stream
from tests.helpers import (
    ACT_DIM,
    B,
    OBS_DIM,
    draws_for,
    make_batch,
    make_agent,
    params_equal,
    perturb_targets,
    stacked,
)

# -- from-scratch IQL pieces (one run: inputs (B, ·), outputs (B,)) ------------------------------


def twins(critic, obs, act):
    """The two critics' values, (2, B)."""
    return critic(obs[None], act[None])[0]


def v_of(value, obs):
    return value(obs[None])[0]


def iql_value_loss(target_critic, value, obs, act, tau):
    q1, q2 = twins(target_critic, obs, act)
    q_hat = torch.min(q1, q2)
    u = q_hat - v_of(value, obs)
    weight = torch.abs(tau - (u < 0).float())
    return (weight * u**2).mean(), q_hat


def iql_critic_loss(critic, value, batch, gamma):
    with torch.no_grad():
        y = batch["rewards"] + gamma * (1 - batch["dones"]) * v_of(value, batch["next_observations"])
    q1, q2 = twins(critic, batch["observations"], batch["actions"])
    return ((q1 - y) ** 2 + (q2 - y) ** 2).mean()


def iql_gaussian_actor_loss(actor, value, q_hat, obs, act, beta):
    with torch.no_grad():
        adv = q_hat - v_of(value, obs)
        w = torch.clamp(torch.exp(beta * adv), max=100.0)
    mean = torch.tanh(actor.net(obs[None])[0])
    std = torch.exp(actor.log_std[0, 0].clamp(-5.0, 2.0))
    log_prob = torch.distributions.Normal(mean, std).log_prob(act).sum(-1)
    return (-w * log_prob).mean()


def cfgrl_actor_loss(actor, value, q_hat, obs, act, draws: Draws, label_dropout=0.1):
    """CFGRL's flow-matching loss with the update's x0, t and label-dropout draws."""
    with torch.no_grad():
        adv = q_hat - v_of(value, obs)
    x0 = draws.normal(Stream.FLOW_NOISE, tuple(act.shape))[0]
    t = draws.uniform(Stream.FLOW_TIME, (act.shape[0],))[0]
    drop = draws.uniform(Stream.LABEL_DROP, (act.shape[0],))[0] < label_dropout
    labels = torch.full((act.shape[0],), NEGATIVE, dtype=torch.long)
    labels[adv > 0] = POSITIVE
    labels[drop] = NULL
    x_t = (1 - t[:, None]) * x0 + t[:, None] * act
    v = actor(x_t[None], t[None], obs[None], labels[None])[0]
    return ((v - (act - x0)) ** 2).mean()


def assert_same_adam_step(ref_net, net, loss, lr: float, atol: float) -> None:
    """One reference `torch.optim.Adam` step on `ref_net` from `loss` lands where the agent's step took `net`."""
    opt = torch.optim.Adam(ref_net.parameters(), lr=lr)
    opt.zero_grad()
    loss.backward()
    opt.step()
    for p_ref, p in zip(ref_net.parameters(), net.parameters()):
        assert torch.allclose(p_ref, p, atol=atol)


@pytest.mark.parametrize("beta", [3.0, 50.0])
def test_lambda_zero_gaussian_is_iql(beta):
    agent = make_agent("gaussian", 0.0, beta=beta, expectile=0.8, gamma=0.9)
    perturb_targets(agent)
    batch = make_batch()
    obs, act = batch["observations"], batch["actions"]
    hp = agent.config
    ref = copy.deepcopy(agent)
    target, value, actor, critic = ref.target_critic, ref.value, ref.actor, ref.critic

    info = agent.update(stacked(batch), draws_for(agent))

    # V step (target twins, expectile τ)
    v_loss, q_hat = iql_value_loss(target, value, obs, act, 0.8)
    assert torch.allclose(info["value/loss"], v_loss, rtol=1e-5, atol=1e-6)
    assert_same_adam_step(value, agent.value, v_loss, hp.value_lr, atol=1e-6)

    # actor step: AWR with the V *after* its step
    a_loss = iql_gaussian_actor_loss(actor, value, q_hat.detach(), obs, act, beta)
    assert torch.allclose(info["actor/loss"], a_loss, rtol=1e-5, atol=1e-5)
    assert_same_adam_step(actor, agent.actor, a_loss, hp.actor_lr, atol=1e-6)

    # Q step: y = r + γ(1 − d)·V(s') with the stepped V
    c_loss = iql_critic_loss(critic, value, batch, 0.9)
    assert torch.allclose(info["critic/loss"], c_loss, rtol=1e-5, atol=1e-6)
    assert_same_adam_step(critic, agent.critic, c_loss, hp.critic_lr, atol=1e-6)

    # target critics are not touched by update()
    assert params_equal(agent.target_critic, ref.target_critic)


def test_update_uses_stepped_value_for_actor_and_critic():
    """The actor and critic losses must use V after its own step, not the V of the start."""
    agent = make_agent("gaussian", 0.0, value_lr=0.05, gamma=0.9)
    perturb_targets(agent)
    batch = make_batch()
    obs, act = batch["observations"], batch["actions"]
    ref = copy.deepcopy(agent)
    info = agent.update(stacked(batch), draws_for(agent))
    _, q_hat = iql_value_loss(ref.target_critic, ref.value, obs, act, agent.config.expectile)
    with torch.no_grad():
        old_v_actor = iql_gaussian_actor_loss(ref.actor, ref.value, q_hat, obs, act, agent.config.beta)
        new_v_actor = iql_gaussian_actor_loss(ref.actor, agent.value, q_hat, obs, act, agent.config.beta)
        old_v_critic = iql_critic_loss(ref.critic, ref.value, batch, 0.9)
        new_v_critic = iql_critic_loss(ref.critic, agent.value, batch, 0.9)
    assert not torch.allclose(old_v_actor, new_v_actor, rtol=1e-4)
    assert not torch.allclose(old_v_critic, new_v_critic, rtol=1e-4)
    assert torch.allclose(info["actor/loss"], new_v_actor, rtol=1e-5, atol=1e-5)
    assert torch.allclose(info["critic/loss"], new_v_critic, rtol=1e-5, atol=1e-6)


def test_lambda_zero_flow_is_cfgrl():
    agent = make_agent("flow", 0.0, gamma=0.95)
    perturb_targets(agent)
    batch = make_batch()
    obs, act = batch["observations"], batch["actions"]
    ref = copy.deepcopy(agent)

    info = agent.update(stacked(batch), draws_for(agent))
    assert "q_pi/mean" not in info
    v_loss, q_hat = iql_value_loss(ref.target_critic, ref.value, obs, act, agent.config.expectile)
    assert torch.allclose(info["value/loss"], v_loss, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(info["actor/loss"]).all()
    # critic with the stepped V (= agent.value, which nothing after the V step changes)
    c_loss = iql_critic_loss(ref.critic, agent.value, batch, 0.95)
    assert torch.allclose(info["critic/loss"], c_loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("update", [0, 1, 2])
def test_flow_actor_loss_lambda_zero_matches_cfgrl(update):
    agent = make_agent("flow", 0.0)
    perturb_targets(agent)
    batch = make_batch(update + 10)
    obs, act = batch["observations"], batch["actions"]
    with torch.no_grad():
        q_hat = torch.min(*twins(agent.target_critic, obs, act))
        # shift V so that both positive and negative labels occur
        head = agent.value.net.layers[-1]
        head.bias.fill_(0.0)
        head.bias.add_(q_hat.median() - v_of(agent.value, obs).median())
    draws = draws_for(agent, update)
    loss, info = agent.actor_loss(stacked(batch), ValueTargets(q_hat[None], None, None), draws)
    ref = cfgrl_actor_loss(agent.actor, agent.value, q_hat, obs, act, draws, agent.config.label_dropout)
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)
    assert torch.allclose(info["actor/loss"], ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        adv = q_hat - v_of(agent.value, obs)
    assert 0 < (adv > 0).float().mean() < 1
    assert torch.allclose(info["adv/positive_frac"], (adv > 0).float().mean())


# -- λ > 0 losses against direct formulas -------------------------------------------------------


@pytest.mark.parametrize("value_policy_loss", ["mse", "expectile"])
def test_value_loss_lambda_half_expectation(value_policy_loss):
    lam, tau = 0.5, 0.7
    agent = make_agent("gaussian", lam, expectile=tau, value_policy_loss=value_policy_loss)
    batch = make_batch()
    obs = batch["observations"]
    g = torch.Generator().manual_seed(3)
    q_data, q_pi = torch.randn(B, generator=g), torch.randn(B, generator=g)
    loss, info = agent.value_loss(stacked(batch), ValueTargets(q_data[None], None, q_pi[None]), draws_for(agent))
    with torch.no_grad():
        v = v_of(agent.value, obs)
    u_d, u_p = q_data - v, q_pi - v
    data = torch.where(u_d < 0, 1 - tau, tau) * u_d**2
    pi = u_p**2 if value_policy_loss == "mse" else torch.where(u_p < 0, 1 - tau, tau) * u_p**2
    assert torch.allclose(loss, ((1 - lam) * data + lam * pi).mean(), rtol=1e-5)
    assert torch.allclose(info["q_pi/mean"], q_pi.mean())
    assert torch.allclose(info["q_pi/minus_q_data"], (q_pi - q_data).mean())


def test_value_loss_bernoulli_gate_uses_the_value_gate_draw():
    lam, tau = 0.5, 0.7
    agent = make_agent("gaussian", lam, expectile=tau, value_mix="bernoulli")
    batch = make_batch()
    g = torch.Generator().manual_seed(3)
    q_data, q_pi = torch.randn(B, generator=g), torch.randn(B, generator=g)
    with torch.no_grad():
        v = v_of(agent.value, batch["observations"])
    draws = draws_for(agent, 5)
    loss, _ = agent.value_loss(stacked(batch), ValueTargets(q_data[None], None, q_pi[None]), draws)
    gate = draws.uniform(Stream.VALUE_GATE, (B,))[0] < lam
    u_d, u_p = q_data - v, q_pi - v
    data = torch.where(u_d < 0, 1 - tau, tau) * u_d**2
    assert 0 < gate.sum() < B
    assert torch.allclose(loss, torch.where(gate, u_p**2, data).mean(), rtol=1e-5)


def gaussian_actor_case(lam: float, beta: float, policy_mix: str):
    """A Gaussian agent with moved targets, a batch, a fixed a_π and the target Q̂ of a and a_π."""
    agent = make_agent("gaussian", lam, beta=beta, policy_mix=policy_mix)
    perturb_targets(agent)
    batch = make_batch()
    obs, act = batch["observations"], batch["actions"]
    g = torch.Generator().manual_seed(4)
    a_pi = torch.rand(B, ACT_DIM, generator=g) * 2 - 1
    with torch.no_grad():
        q_data = torch.min(*twins(agent.target_critic, obs, act))
        q_pi = torch.min(*twins(agent.target_critic, obs, a_pi))
    return agent, batch, obs, act, a_pi, q_data, q_pi


def test_gaussian_actor_loss_deterministic_mix_matches_interpolation():
    lam, beta = 0.3, 2.0
    agent, batch, obs, act, a_pi, q_data, q_pi = gaussian_actor_case(lam, beta, "deterministic")
    loss, _ = agent.actor_loss(stacked(batch), ValueTargets(q_data[None], a_pi[None], q_pi[None]), draws_for(agent))
    a_bar = (1 - lam) * act + lam * a_pi
    with torch.no_grad():
        q_bar = torch.min(*twins(agent.target_critic, obs, a_bar))
    ref = iql_gaussian_actor_loss(agent.actor, agent.value, q_bar, obs, a_bar, beta)
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)


def test_gaussian_actor_loss_weighted_sum_is_eq_26():
    """Appendix B's Eq. 26: (1 − λ)·w(s, a)·(−log π(a|s)) + λ·w(s, a_π)·(−log π(a_π|s)), both terms
    every sample (no gate), each with its own Q̂."""
    lam, beta = 0.3, 2.0
    agent, batch, obs, act, a_pi, q_data, q_pi = gaussian_actor_case(lam, beta, "weighted_sum")
    loss, info = agent.actor_loss(stacked(batch), ValueTargets(q_data[None], a_pi[None], q_pi[None]), draws_for(agent))
    ref = (1 - lam) * iql_gaussian_actor_loss(agent.actor, agent.value, q_data, obs, act, beta) \
        + lam * iql_gaussian_actor_loss(agent.actor, agent.value, q_pi, obs, a_pi, beta)
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(loss, iql_gaussian_actor_loss(agent.actor, agent.value, q_data, obs, act, beta))


def test_flow_actor_loss_weighted_sum_weights_the_two_rows():
    """ISEP-FM's form of Eq. 26: flow matching on a (weight 1 − λ) and on a_π (weight λ), each with
    its own optimality label."""
    lam = 0.4
    agent = make_agent("flow", lam, policy_mix="weighted_sum")
    perturb_targets(agent)
    batch = make_batch()
    obs, act = batch["observations"], batch["actions"]
    a_pi = torch.rand(B, ACT_DIM, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        q_data, q_pi = torch.min(*twins(agent.target_critic, obs, act)), torch.min(*twins(agent.target_critic, obs, a_pi))
        v = v_of(agent.value, obs)
    draws = draws_for(agent, 3)
    loss, _ = agent.actor_loss(stacked(batch), ValueTargets(q_data[None], a_pi[None], q_pi[None]), draws)
    x0 = draws.normal(Stream.FLOW_NOISE, (2 * B, ACT_DIM))[0]
    t = draws.uniform(Stream.FLOW_TIME, (2 * B,))[0]
    drop = draws.uniform(Stream.LABEL_DROP, (2 * B,))[0] < agent.config.label_dropout
    targets, adv = torch.cat([act, a_pi]), torch.cat([q_data, q_pi]) - torch.cat([v, v])
    labels = torch.where(adv > 0, POSITIVE, NEGATIVE)
    labels[drop] = NULL
    x_t = (1 - t[:, None]) * x0 + t[:, None] * targets
    per = ((agent.actor(x_t[None], t[None], torch.cat([obs, obs])[None], labels[None])[0] - (targets - x0)) ** 2).mean(-1)
    ref = ((1 - lam) * per[:B] + lam * per[B:]).mean()
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)


def test_gaussian_actor_loss_stochastic_mix_uses_the_actor_gate_draw():
    lam, beta = 0.5, 2.0
    agent, batch, obs, act, a_pi, q_data, q_pi = gaussian_actor_case(lam, beta, "stochastic")
    draws = draws_for(agent, 9)
    loss, _ = agent.actor_loss(stacked(batch), ValueTargets(q_data[None], a_pi[None], q_pi[None]), draws)
    gate = draws.uniform(Stream.ACTOR_GATE, (B,))[0] < lam
    assert 0 < gate.sum() < B
    a1 = torch.where(gate[:, None], a_pi, act)
    q1 = torch.where(gate, q_pi, q_data)
    ref = iql_gaussian_actor_loss(agent.actor, agent.value, q1, obs, a1, beta)
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)


def test_clip_policy_q_caps_q_pi_at_bound():
    agent = make_agent("gaussian", 0.5, clip_policy_q=True, gamma=0.9)
    with torch.no_grad():
        agent.critic.net.layers[-1].bias.fill_(5.0)  # Q ≈ 5 everywhere
        agent.target_critic.net.layers[-1].bias.fill_(5.0)
    agent.set_data_stats(torch.zeros(OBS_DIM), torch.ones(OBS_DIM), torch.tensor(0.1), torch.tensor(0.1))  # bound 0.1/0.1 = 1
    batch = stacked(make_batch())
    q_data, a_pi, q_pi = agent.targets(batch, draws_for(agent))
    with torch.no_grad():
        raw = torch.min(*twins(agent.target_critic, batch["observations"][0], a_pi[0]))
    assert (raw > 1.0).any()
    assert torch.allclose(q_pi[0], torch.clamp(raw, max=1.0))
    assert torch.allclose(agent.q_bound, torch.tensor(1.0))


def test_policy_actions_use_the_policy_noise_draw():
    agent = make_agent("gaussian", 0.5)
    batch = stacked(make_batch())
    draws = draws_for(agent, 3)
    _, a_pi, _ = agent.targets(batch, draws)
    with torch.no_grad():
        mean = torch.tanh(agent.actor.net(batch["observations"]))
        std = agent.actor.log_std.clamp(-5, 2).exp()
    expected = (mean + draws.normal(Stream.POLICY_NOISE, (B, ACT_DIM)) * std).clamp(-1, 1)
    assert torch.allclose(a_pi, expected, atol=1e-6)


# -- gradient isolation -------------------------------------------------------------------------


def _grad_owners(agent: ISEPAgent) -> dict[str, bool]:
    owners = {}
    for name in ("critic", "target_critic", "value", "actor"):
        params = list(getattr(agent, name).parameters())
        owners[name] = any(p.grad is not None and torch.any(p.grad != 0) for p in params)
        if owners[name]:
            # every parameter of a network that got gradients has one
            assert all(p.grad is not None for p in params if p.requires_grad), name
    return owners


def _zero(agent: ISEPAgent) -> None:
    for p in agent.parameters():
        p.grad = None


@pytest.mark.parametrize("actor", ["gaussian", "flow"])
@pytest.mark.parametrize("lam", [0.0, 0.5])
def test_each_loss_reaches_only_its_network(actor, lam):
    agent = make_agent(actor, lam)
    perturb_targets(agent)
    batch = stacked(make_batch())
    draws = draws_for(agent)
    q_data, a_pi, q_pi = agent.targets(batch, draws)
    for tensor in (q_data, a_pi, q_pi):
        assert tensor is None or not tensor.requires_grad

    _zero(agent)
    agent.value_loss(batch, ValueTargets(q_data, a_pi, q_pi), draws)[0].sum().backward()
    assert _grad_owners(agent) == {"critic": False, "target_critic": False, "value": True, "actor": False}

    _zero(agent)
    agent.actor_loss(batch, ValueTargets(q_data, a_pi, q_pi), draws)[0].sum().backward()
    assert _grad_owners(agent) == {"critic": False, "target_critic": False, "value": False, "actor": True}

    _zero(agent)
    agent.critic_loss(batch)[0].sum().backward()
    assert _grad_owners(agent) == {"critic": True, "target_critic": False, "value": False, "actor": False}

    assert all(p.grad is None and not p.requires_grad for p in agent.target_critic.parameters())


def test_optimizers_hold_disjoint_parameter_sets():
    agent = make_agent("flow", 0.5)
    critic_opt, value_opt, actor_opt = agent.optimizers

    def ids(opt):
        return {id(p) for group in opt.param_groups for p in group["params"]}

    assert ids(critic_opt) == {id(p) for p in agent.critic.parameters()}
    assert ids(value_opt) == {id(p) for p in agent.value.parameters()}
    assert ids(actor_opt) == {id(p) for p in agent.actor.parameters()}
    target_ids = {id(p) for p in agent.target_critic.parameters()}
    assert not target_ids & (ids(critic_opt) | ids(value_opt) | ids(actor_opt))


@pytest.mark.parametrize("actor", ["gaussian", "flow"])
def test_update_moves_online_networks_not_targets(actor):
    agent = make_agent(actor, 0.5)
    perturb_targets(agent)
    before = copy.deepcopy(agent)
    agent.update(stacked(make_batch()), draws_for(agent))
    for name in ("critic", "value", "actor"):
        assert not params_equal(getattr(agent, name), getattr(before, name)), name
    assert params_equal(agent.target_critic, before.target_critic)


def test_update_targets_is_exact_lerp():
    rho = 0.1
    agent = make_agent("gaussian", 0.0, target_update_rate=rho)
    perturb_targets(agent)
    agent.update(stacked(make_batch()), draws_for(agent))
    old_target = [p.detach().clone() for p in agent.target_critic.parameters()]
    online = [p.detach().clone() for p in agent.critic.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(old_target, online))
    agent.update_hooks["target_ema"](agent)
    for new, old, q in zip(agent.target_critic.parameters(), old_target, online):
        assert torch.allclose(new, old + rho * (q - old), atol=1e-7)
    # the online critic is untouched by the EMA
    assert all(torch.equal(p, q) for p, q in zip(agent.critic.parameters(), online))


def test_cosine_schedule_follows_the_update_counter():
    agent = make_agent("gaussian", 0.0, actor_lr=1e-3)
    agent.schedule_total = 100
    for done, factor in ((0, 1.0), (50, 0.5), (100, 0.0), (150, 0.0)):
        agent.updates.fill_(done)
        info = agent.update(stacked(make_batch()), draws_for(agent, done))
        assert info["lr_actor"].item() == pytest.approx(1e-3 * factor, abs=1e-9)


# -- every variant runs -------------------------------------------------------------------------


@pytest.mark.parametrize("actor", ["gaussian", "flow"])
@pytest.mark.parametrize("policy_mix", ["stochastic", "deterministic", "weighted_sum"])
@pytest.mark.parametrize("value_mix", ["expectation", "bernoulli"])
def test_update_variants_finite(actor, policy_mix, value_mix):
    agent = make_agent(actor, 0.5, policy_mix=policy_mix, value_mix=value_mix)
    for step in range(3):
        info = agent.update(stacked(make_batch(step)), draws_for(agent, step))
        agent.update_hooks["target_ema"](agent)
    assert "q_pi/mean" in info
    for key in ("value/loss", "actor/loss", "critic/loss", "q_pi/mean"):
        assert key in info
    for key, value in info.items():
        assert value.shape == (1,), key
        assert torch.isfinite(value).all(), key
        assert not value.requires_grad, key


@pytest.mark.parametrize("lam", [-0.1, 1.0, 1.5, math.nan])
def test_constructor_rejects_lam_outside_unit_interval(lam):
    with pytest.raises(ValueError, match="lam"):
        make_agent("gaussian", lam)


@pytest.mark.parametrize("lam", [0.0, 0.99])
def test_constructor_accepts_lam_in_range(lam):
    assert make_agent("gaussian", lam).config.lam == lam


def test_initial_weights_depend_on_the_seed_only():
    a = make_agent("flow", 0.3, seed=5)
    torch.manual_seed(123)  # the global generator plays no part
    b = make_agent("flow", 0.3, seed=5)
    c = make_agent("flow", 0.3, seed=6)
    assert params_equal(a, b)
    assert not params_equal(a, c)
