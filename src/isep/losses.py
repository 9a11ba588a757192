"""ISEP's losses as pure, per-sample functions (no reduction, no networks, no optimizers).

Equation numbers refer to the paper (`paper/ISEP.txt`); DESIGN.md section 1 writes them out.
Every function returns one value per sample so that tests can inspect them and callers choose
the reduction. Tensors may carry a leading run dimension (R, B, ·); λ, τ and β may be floats or
tensors that broadcast (one value per sample, or per run as (R, 1)).
"""

from __future__ import annotations

import torch

from isep.models.flow import NEGATIVE, NULL, POSITIVE

Tensorish = float | torch.Tensor


def expectile(u: torch.Tensor, tau: Tensorish) -> torch.Tensor:
    """L₂^τ(u) = |τ − 1(u < 0)| · u² (IQL's asymmetric loss, Section 3.2)."""
    return torch.abs(tau - (u < 0).to(u.dtype)) * u.pow(2)


def value_loss(
    v: torch.Tensor,
    q_data: torch.Tensor,
    q_pi: torch.Tensor | None,
    lam: Tensorish,
    tau: Tensorish,
    policy_term: str = "mse",
    gate: torch.Tensor | None = None,
) -> torch.Tensor:
    """Interpolated value loss with implicit support expansion (Eq. 2), per sample.

    (1 − λ)·L₂^τ(Q̂(s,a) − V(s)) + λ·ℓ(Q̂(s,a_π) − V(s)), ℓ = squared error (`mse`, the fixed
    point of Appendix A) or the expectile loss (`expectile`). With a Bernoulli(λ) `gate`, each
    sample takes one of the two terms instead (Section 5.3's "Bernoulli-gated" form, same
    expectation). With `q_pi=None` (λ = 0) this is exactly IQL's value loss.
    """
    data_term = expectile(q_data - v, tau)
    if q_pi is None:
        return data_term
    u = q_pi - v
    pi_term = expectile(u, tau) if policy_term == "expectile" else u.pow(2)
    if gate is not None:
        return torch.where(gate, pi_term, data_term)
    return (1 - lam) * data_term + lam * pi_term


def critic_loss(q: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor, next_v: torch.Tensor, gamma: float):
    """In-sample Bellman regression (Eq. 3): Σᵢ (r + γ(1 − done)V(s') − Qᵢ(s,a))², per sample.

    `q` is (..., n_critics, B) and the rest (..., B) (a leading run dimension is optional); the
    target is detached. Summed over the twins as in IQL's code.
    """
    target = (rewards + gamma * (1 - dones) * next_v).detach()
    return (q - target.unsqueeze(-2)).pow(2).sum(-2)


def awr_weight(advantage: torch.Tensor, beta: Tensorish, max_weight: float = 100.0) -> torch.Tensor:
    """w = min(exp(β·A), 100), detached (IQL's AWR weights, Eq. 5)."""
    return torch.clamp(torch.exp(beta * advantage.detach()), max=max_weight)


def awr_loss(log_prob: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """−w · log π(a₁|s), per sample (Eq. 5).

    With a₁ the per-sample selection of `select_actions` and w = w(s, a₁), this is Eq. 5
    exactly: b ∈ {0, 1} keeps one of its two terms. With a₁ = a (λ = 0) it is IQL's AWR loss; with
    a₁ = ā of `interpolate_actions` it is the deterministic interpolation of Appendix B.
    """
    return -weight.detach() * log_prob


def interpolate_actions(actions: torch.Tensor, policy_actions: torch.Tensor, lam: Tensorish) -> torch.Tensor:
    """Appendix B's deterministic target ā = (1 − λ)·a + λ·a_π (Eq. 4 / 29)."""
    return (1 - lam) * actions + lam * policy_actions


def select_actions(actions: torch.Tensor, policy_actions: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Stochastic action selection: a₁ = a_π where b = 1, else the dataset action (Eqs. 5-6)."""
    return torch.where(gate.unsqueeze(-1), policy_actions, actions)


def optimality_labels(advantage: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """CFGRL's token o: positive where A(s, a₁) > 0, else negative; ∅ where `drop` (label dropout)."""
    labels = torch.where(advantage > 0, POSITIVE, NEGATIVE)
    return torch.where(drop, torch.full_like(labels, NULL), labels)


def flow_interpolant(x0: torch.Tensor, a1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − t)·x₀ + t·a₁ (Eq. 6), t of shape (B,)."""
    t = t.unsqueeze(-1)
    return (1 - t) * x0 + t * a1


def flow_matching_loss(velocity: torch.Tensor, x0: torch.Tensor, a1: torch.Tensor) -> torch.Tensor:
    """‖v(x_t, t, s, o) − (a₁ − x₀)‖², averaged over action dimensions (Eq. 6), per sample."""
    return (velocity - (a1 - x0).detach()).pow(2).mean(-1)
