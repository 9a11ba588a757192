"""Hand-computed checks of the pure, per-sample functions in `isep.losses` and of the flow sampler.

Every expected value below is written out by hand (or computed by an independent reference loop in
the test), never read back from the code under test.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from isep import losses
from isep.models.flow import NEGATIVE, NULL, POSITIVE, VelocityField, guided_sample


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


# -- expectile ----------------------------------------------------------------------------------


def test_expectile_hand_values():
    # τ = 0.7: u = 2 → 0.7·4, u = −2 → 0.3·4, u = 0.5 → 0.7·0.25, u = 0 → 0.
    out = losses.expectile(t(2.0, -2.0, 0.5, 0.0), 0.7)
    assert torch.allclose(out, t(2.8, 1.2, 0.175, 0.0))


def test_expectile_asymmetry_weights():
    u = t(3.0, -3.0, 0.1, -0.1)
    for tau in (0.1, 0.5, 0.9):
        out = losses.expectile(u, tau)
        expected = t(tau * 9.0, (1 - tau) * 9.0, tau * 0.01, (1 - tau) * 0.01)
        assert torch.allclose(out, expected, rtol=1e-6, atol=1e-7)
    # τ = 0.5 is half the squared error, symmetric.
    assert torch.allclose(losses.expectile(u, 0.5), 0.5 * u.pow(2))


# -- value loss (Eq. 2) -------------------------------------------------------------------------

V = t(1.0, 2.0, 0.0)
Q_DATA = t(2.0, 1.0, 0.5)  # u_data = [1, -1, 0.5]
Q_PI = t(3.0, 1.0, -1.0)  # u_pi   = [2, -1, -1]
TAU = 0.7
DATA_TERM = t(0.7, 0.3, 0.175)  # expectile_0.7(u_data), by hand
PI_MSE = t(4.0, 1.0, 1.0)  # u_pi²
PI_EXPECTILE = t(2.8, 0.3, 0.3)  # expectile_0.7(u_pi), by hand


def test_value_loss_lambda_zero_is_expectile():
    assert torch.allclose(losses.value_loss(V, Q_DATA, None, 0.0, TAU), DATA_TERM)
    # q_pi=None ignores λ: it is IQL's value loss whatever λ says.
    assert torch.allclose(losses.value_loss(V, Q_DATA, None, 0.5, TAU), DATA_TERM)
    # With q_pi given and λ = 0, the policy term has weight 0.
    assert torch.allclose(losses.value_loss(V, Q_DATA, Q_PI, 0.0, TAU), DATA_TERM)


def test_value_loss_expectation_mse_hand_values():
    # λ = 0.25: 0.75·[0.7, 0.3, 0.175] + 0.25·[4, 1, 1] = [1.525, 0.475, 0.38125]
    out = losses.value_loss(V, Q_DATA, Q_PI, 0.25, TAU)
    assert torch.allclose(out, t(1.525, 0.475, 0.38125))
    assert torch.allclose(out, 0.75 * DATA_TERM + 0.25 * PI_MSE)


def test_value_loss_expectation_expectile_policy_term():
    # λ = 0.25: 0.75·[0.7, 0.3, 0.175] + 0.25·[2.8, 0.3, 0.3] = [1.225, 0.3, 0.20625]
    out = losses.value_loss(V, Q_DATA, Q_PI, 0.25, TAU, policy_term="expectile")
    assert torch.allclose(out, t(1.225, 0.3, 0.20625))


def test_value_loss_per_sample_lambda_tensor():
    lam = t(0.0, 0.5, 1.0)
    out = losses.value_loss(V, Q_DATA, Q_PI, lam, TAU)
    assert torch.allclose(out, t(0.7, 0.5 * 0.3 + 0.5 * 1.0, 1.0))


@pytest.mark.parametrize("policy_term,pi_term", [("mse", PI_MSE), ("expectile", PI_EXPECTILE)])
def test_value_loss_gate_all_true_all_false(policy_term, pi_term):
    ones = torch.ones(3, dtype=torch.bool)
    out_pi = losses.value_loss(V, Q_DATA, Q_PI, 0.3, TAU, policy_term, gate=ones)
    out_data = losses.value_loss(V, Q_DATA, Q_PI, 0.3, TAU, policy_term, gate=~ones)
    assert torch.allclose(out_pi, pi_term)
    assert torch.allclose(out_data, DATA_TERM)
    mixed = losses.value_loss(V, Q_DATA, Q_PI, 0.3, TAU, policy_term, gate=torch.tensor([True, False, True]))
    assert torch.allclose(mixed, torch.stack([pi_term[0], DATA_TERM[1], pi_term[2]]))


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.8])
def test_value_loss_bernoulli_gate_matches_expectation_on_average(lam):
    gen = torch.Generator().manual_seed(0)
    n = 40_000
    gates = torch.rand(n, 3, generator=gen) < lam
    per_draw = torch.stack([losses.value_loss(V, Q_DATA, Q_PI, lam, TAU, gate=g) for g in gates[:2000]])
    # (the full 40k draws, broadcast in one call, must agree with the loop on its first rows)
    broadcast = losses.value_loss(V, Q_DATA, Q_PI, lam, TAU, gate=gates)
    assert torch.allclose(broadcast[:2000], per_draw)
    expected = (1 - lam) * DATA_TERM + lam * PI_MSE
    # std of the mean ≤ |4 − 0.7|·0.5/√40000 ≈ 0.008
    assert torch.allclose(broadcast.mean(0), expected, atol=0.04)


# -- critic loss (Eq. 3) ------------------------------------------------------------------------


def test_critic_loss_hand_values_and_done_cuts_bootstrap():
    q = torch.tensor([[1.0, 2.0], [0.0, 3.0]], requires_grad=True)  # (twins, B)
    rewards, dones = t(1.0, 0.5), t(0.0, 1.0)
    next_v = torch.tensor([2.0, 10.0], requires_grad=True)
    # targets: 1 + 0.9·2 = 2.8 ; 0.5 (done: V(s') = 10 is ignored)
    out = losses.critic_loss(q, rewards, dones, next_v, 0.9)
    assert torch.allclose(out, t((1 - 2.8) ** 2 + (0 - 2.8) ** 2, (2 - 0.5) ** 2 + (3 - 0.5) ** 2))
    out.sum().backward()
    assert next_v.grad is None or torch.all(next_v.grad == 0)
    assert torch.allclose(q.grad, torch.tensor([[2 * (1 - 2.8), 2 * (2 - 0.5)], [2 * (0 - 2.8), 2 * (3 - 0.5)]]))


def test_critic_loss_with_a_run_dimension():
    q = torch.tensor([[[1.0, 2.0], [0.0, 3.0]], [[0.0, 0.0], [1.0, 1.0]]])  # (runs, twins, B)
    rewards, dones, next_v = t(1.0, 0.5).expand(2, 2), t(0.0, 1.0).expand(2, 2), torch.tensor([[2.0, 10.0], [0.0, 0.0]])
    out = losses.critic_loss(q, rewards, dones, next_v, 0.9)
    run0 = losses.critic_loss(q[0], rewards[0], dones[0], next_v[0], 0.9)
    run1 = losses.critic_loss(q[1], rewards[1], dones[1], next_v[1], 0.9)
    assert torch.allclose(out, torch.stack([run0, run1]))
    assert torch.allclose(run1, t(1.0 + 0.0, 0.25 + 0.25))


def test_critic_loss_gamma_zero_is_reward_regression():
    q = torch.tensor([[1.0], [-1.0]])
    out = losses.critic_loss(q, t(2.0), t(0.0), t(100.0), 0.0)
    assert torch.allclose(out, t(1.0 + 9.0))


# -- AWR (Eq. 5) --------------------------------------------------------------------------------


def test_awr_weight_hand_values_cap_and_detach():
    adv = torch.tensor([0.0, 1.0, -2.0, 10.0], requires_grad=True)
    w = losses.awr_weight(adv, 0.5)
    assert torch.allclose(w, t(1.0, math.exp(0.5), math.exp(-1.0), 100.0))  # e^5 ≈ 148 → 100
    assert not w.requires_grad
    w2 = losses.awr_weight(adv, 0.5, max_weight=2.0)
    assert torch.allclose(w2, t(1.0, math.exp(0.5), math.exp(-1.0), 2.0))


def test_awr_loss_hand_values_and_gradient_only_through_log_prob():
    log_prob = torch.tensor([-1.0, -2.0], requires_grad=True)
    weight = torch.tensor([2.0, 0.5], requires_grad=True)
    out = losses.awr_loss(log_prob, weight)
    assert torch.allclose(out, t(2.0, 1.0))
    out.sum().backward()
    assert torch.allclose(log_prob.grad, t(-2.0, -0.5))
    assert weight.grad is None or torch.all(weight.grad == 0)


def _toy_log_prob(mean: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """log N(a; mean, I), summed over action dimensions."""
    return (-0.5 * (actions - mean).pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.75])
def test_awr_loss_with_select_actions_expectation_over_gates(lam):
    gen = torch.Generator().manual_seed(1)
    b, a_dim = 3, 2
    mean = torch.randn(b, a_dim, generator=gen)
    a_data = torch.rand(b, a_dim, generator=gen) * 2 - 1
    a_pi = torch.rand(b, a_dim, generator=gen) * 2 - 1
    adv_data, adv_pi = torch.randn(b, generator=gen), torch.randn(b, generator=gen)
    w_data, w_pi = losses.awr_weight(adv_data, 3.0), losses.awr_weight(adv_pi, 3.0)

    expected = torch.zeros(b)
    for bits in itertools.product([False, True], repeat=b):
        gate = torch.tensor(bits)
        a1 = losses.select_actions(a_data, a_pi, gate)
        w1 = torch.where(gate, w_pi, w_data)
        per_sample = losses.awr_loss(_toy_log_prob(mean, a1), w1)
        prob = torch.tensor([lam if bit else 1 - lam for bit in bits]).prod()
        expected += prob * per_sample
    reference = (1 - lam) * w_data * -_toy_log_prob(mean, a_data) + lam * w_pi * -_toy_log_prob(mean, a_pi)
    assert torch.allclose(expected, reference, rtol=1e-5, atol=1e-6)


def test_select_actions_picks_per_sample():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    a_pi = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    out = losses.select_actions(a, a_pi, torch.tensor([True, False]))
    assert torch.equal(out, torch.tensor([[-1.0, -2.0], [3.0, 4.0]]))


# -- Appendix B and CFGRL labels ----------------------------------------------------------------


def test_interpolate_actions_hand_values():
    a = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    a_pi = torch.tensor([[4.0, -2.0], [-1.0, 1.0]])
    assert torch.allclose(losses.interpolate_actions(a, a_pi, 0.25), torch.tensor([[1.0, 1.0], [0.5, -0.5]]))
    assert torch.allclose(losses.interpolate_actions(a, a_pi, 0.0), a)
    assert torch.allclose(losses.interpolate_actions(a, a_pi, 1.0), a_pi)


def test_optimality_labels():
    assert len({NULL, NEGATIVE, POSITIVE}) == 3
    adv = t(1.0, 0.0, -1.0, 2.0, -3.0, 1e-6)
    drop = torch.tensor([False, False, False, True, True, False])
    labels = losses.optimality_labels(adv, drop)
    assert labels.dtype == torch.long
    assert labels.tolist() == [POSITIVE, NEGATIVE, NEGATIVE, NULL, NULL, POSITIVE]


# -- flow matching (Eq. 6) ----------------------------------------------------------------------


def test_flow_interpolant_endpoints_and_midpoint():
    x0 = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    a1 = torch.tensor([[4.0, -2.0], [-1.0, 1.0]])
    assert torch.allclose(losses.flow_interpolant(x0, a1, torch.zeros(2)), x0)
    assert torch.allclose(losses.flow_interpolant(x0, a1, torch.ones(2)), a1)
    out = losses.flow_interpolant(x0, a1, t(0.25, 0.5))
    assert torch.allclose(out, torch.tensor([[1.0, 1.0], [0.0, 0.0]]))


def test_flow_matching_loss_zero_at_target_velocity_and_hand_value():
    x0 = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    a1 = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    assert torch.allclose(losses.flow_matching_loss(a1 - x0, x0, a1), torch.zeros(2))
    # the velocity x0 − a1 is the wrong sign: not zero
    assert torch.all(losses.flow_matching_loss(x0 - a1, x0, a1) > 0)
    v = torch.zeros(2, 2, requires_grad=True)
    out = losses.flow_matching_loss(v, x0, a1)
    # target velocity a1 − x0 = [[1, 2], [−1, 1]]; mean over dims of the squares: [2.5, 1.0]
    assert torch.allclose(out, t(2.5, 1.0))
    out.sum().backward()
    # d/dv mean((v − target)²) = 2(v − target)/A: points at the target a1 − x0
    assert torch.allclose(v.grad, -(a1 - x0))


# -- guided sampler (Eq. 7) ---------------------------------------------------------------------


def _field(seed: int = 0, bias: float = 0.0) -> VelocityField:
    torch.manual_seed(seed)
    field = VelocityField(1, obs_dim=3, act_dim=2, hidden=(16, 16), embed_dim=4)
    with torch.no_grad():
        field.embed.mul_(3.0)  # make the ∅ and positive branches clearly different
        field.net.layers[-1].bias.add_(bias)
    return field


def _euler(field, obs, noise, steps, label=None, guidance=None, low=-1.0, high=1.0):
    """Reference: plain Euler integration of one branch (label) or of the guided field, one run (B, ·)."""
    b = obs.shape[0]
    x = noise.clone()
    dt = 1.0 / steps

    def v(label_value, tk):
        return field(x[None], tk[None], obs[None], torch.full((1, b), label_value, dtype=torch.long))[0]

    for k in range(steps):
        tk = torch.full((b,), k * dt)
        if label is not None:
            vel = v(label, tk)
        else:
            v_null, v_pos = v(NULL, tk), v(POSITIVE, tk)
            vel = v_null + guidance * (v_pos - v_null)
        x = x + dt * vel
    return torch.clamp(x, low, high)


def _sample(field, obs, steps, guidance, **kw):
    """`guided_sample` on one run's (B, ·) inputs."""
    if "noise" in kw:
        kw["noise"] = kw["noise"][None]
    return guided_sample(field, obs[None], steps, guidance, **kw)[0]


@torch.no_grad()
def test_guided_sample_guidance_zero_and_one_are_single_branches():
    field = _field()
    obs = torch.randn(8, 3)
    noise = 0.3 * torch.randn(8, 2)
    noise_copy = noise.clone()
    steps = 5
    null_only = _euler(field, obs, noise, steps, label=NULL)
    pos_only = _euler(field, obs, noise, steps, label=POSITIVE)
    assert not torch.allclose(null_only, pos_only, atol=1e-4)  # the branches differ: the test can fail
    assert torch.allclose(_sample(field, obs, steps, 0.0, noise=noise), null_only, atol=1e-5)
    assert torch.allclose(_sample(field, obs, steps, 1.0, noise=noise), pos_only, atol=1e-5)
    w3 = _euler(field, obs, noise, steps, guidance=3.0)
    assert torch.allclose(_sample(field, obs, steps, 3.0, noise=noise), w3, atol=1e-5)
    # the noise argument is not modified in place
    assert torch.equal(noise, noise_copy)


@torch.no_grad()
def test_guided_sample_clips_to_bounds():
    field = _field(seed=1, bias=5.0)  # drifts far beyond +1
    obs = torch.randn(16, 3)
    noise = torch.randn(16, 2)
    out = _sample(field, obs, 4, 1.0, noise=noise)
    unclipped = _euler(field, obs, noise, 4, label=POSITIVE, low=-math.inf, high=math.inf)
    assert (unclipped.abs() > 1).any()
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert torch.allclose(out, unclipped.clamp(-1.0, 1.0), atol=1e-5)
    low, high = t(-0.5, -0.2), t(0.5, 0.3)
    out2 = _sample(field, obs, 4, 1.0, noise=noise, low=low, high=high)
    assert torch.all(out2 >= low) and torch.all(out2 <= high)
    assert torch.allclose(out2, torch.maximum(torch.minimum(unclipped, high), low), atol=1e-5)


def test_guided_sample_default_noise_shape_and_seeded_draw():
    field = _field()
    obs = torch.randn(5, 3)
    torch.manual_seed(7)
    out = _sample(field, obs, 3, 2.0)
    torch.manual_seed(7)
    noise = torch.randn(5, 2)
    with torch.no_grad():
        ref = _euler(field, obs, noise, 3, guidance=2.0)
    assert out.shape == (5, 2)
    assert torch.allclose(out, ref, atol=1e-5)


@torch.no_grad()
def test_guided_sample_per_run_guidance_of_a_stack():
    """Two runs with the same weights and noise but w = 0 and w = 3 give each run's own integral."""
    field = _field()
    two = VelocityField(2, obs_dim=3, act_dim=2, hidden=(16, 16), embed_dim=4)
    for p2, p1 in zip(two.parameters(), field.parameters()):
        p2.copy_(p1.expand_as(p2))
    obs, noise = torch.randn(6, 3), torch.randn(6, 2)
    out = guided_sample(two, obs.expand(2, 6, 3), 4, torch.tensor([0.0, 3.0]).view(2, 1, 1), noise=noise.expand(2, 6, 2))
    assert torch.allclose(out[0], _euler(field, obs, noise, 4, label=NULL), atol=1e-5)
    assert torch.allclose(out[1], _euler(field, obs, noise, 4, guidance=3.0), atol=1e-5)


def test_value_loss_fixed_points_of_each_policy_term():
    """What V each `value_policy_loss` converges to (the minimiser of Eq. 2's expected loss over V),
    against independent roots: neither is Appendix A's (1 − λ)·expectile_τ(Q̂|D) + λ·E_π[Q̂]."""
    from scipy.optimize import brentq, minimize_scalar

    q_data, q_pi = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0], dtype=torch.float64), torch.tensor([1.0, 1.5], dtype=torch.float64)
    lam, tau = 0.5, 0.8

    def minimiser(policy_term: str) -> float:
        def expected(v: float) -> float:  # every (data, policy) pair: the two expectations of Eq. 2
            per = losses.value_loss(torch.tensor(v, dtype=torch.float64), q_data[:, None], q_pi[None, :], lam, tau, policy_term)
            return float(per.mean())

        return minimize_scalar(expected, bounds=(-1, 3), method="bounded", options={"xatol": 1e-7}).x

    qd, qp = q_data.double().numpy(), q_pi.double().numpy()
    weight = lambda q, v: abs(tau - (q < v))  # noqa: E731
    expectile_data = brentq(lambda v: (weight(qd, v) * (qd - v)).sum(), -1, 3)
    appendix_a = (1 - lam) * expectile_data + lam * qp.mean()
    mse_root = brentq(lambda v: (1 - lam) * (weight(qd, v) * (qd - v)).mean() + lam * (qp - v).mean(), -1, 3)
    mixture = brentq(lambda v: (1 - lam) * (weight(qd, v) * (qd - v)).mean() + lam * (weight(qp, v) * (qp - v)).mean(), -1, 3)
    assert minimiser("mse") == pytest.approx(mse_root, abs=1e-5)
    assert minimiser("expectile") == pytest.approx(mixture, abs=1e-5)
    assert (round(appendix_a, 3), round(mse_root, 3), round(mixture, 3)) == (1.330, 1.299, 1.404)
    assert abs(mse_root - appendix_a) > 0.02 and abs(mixture - appendix_a) > 0.05
