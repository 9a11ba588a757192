"""The targets an update regresses on: Q̂ at the data and policy actions (Eq. 2), and the actor's
target actions for each `policy_mix` (Eqs. 5-6, Appendix B).

All of it is detached: targets come from the target critics and the current policy, and no
gradient flows into them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from isep import losses
from isep.rng import Draws, Stream


class ValueTargets(NamedTuple):
    """Q̂(s, a) (R, B); a_π (R, B, A) and Q̂(s, a_π) (R, B) when some run has λ > 0, else None."""

    q_data: torch.Tensor
    a_pi: torch.Tensor | None
    q_pi: torch.Tensor | None


class ActorTargets(NamedTuple):
    """What the actor loss fits: states, target actions a₁, Q̂(s, a₁), and per-row weights.

    `weight` is None except for `weighted_sum` (Eq. 26), whose rows are doubled — the B data rows
    with weight 1 − λ, then the B policy rows with weight λ — and summed back per sample.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    q: torch.Tensor
    weight: torch.Tensor | None = None


def actor_targets(agent, obs: torch.Tensor, act: torch.Tensor, value: ValueTargets, draws: Draws) -> ActorTargets:
    """The actor's targets of every run: the data (λ = 0), a Bernoulli(λ) selection of a or a_π
    (Eqs. 5-6), the interpolation ā = (1 − λ)a + λa_π with Q̂(s, ā) (the deterministic baseline of
    Section 5.3.3: one term at ā), or both actions as two weighted terms (Eq. 26)."""
    q_data, a_pi, q_pi = value
    if a_pi is None or q_pi is None:  # λ = 0 in every run: IQL / CFGRL
        return ActorTargets(obs, act, q_data)
    lam = agent.lam
    if agent.mixes == {"weighted_sum"}:  # a stack of these holds only weighted_sum runs with λ > 0
        rows = lambda x, y: torch.cat([x, y], 1)  # noqa: E731
        weight = rows((1 - lam).expand_as(q_data), lam.expand_as(q_pi))
        return ActorTargets(rows(obs, obs), rows(act, a_pi), rows(q_data, q_pi), weight)
    picked = {}
    if "stochastic" in agent.mixes:
        gate = draws.bernoulli(Stream.ACTOR_GATE, q_data.shape[1:], lam)
        picked["stochastic"] = (losses.select_actions(act, a_pi, gate), torch.where(gate, q_pi, q_data))
    if "deterministic" in agent.mixes:
        a_bar = losses.interpolate_actions(act, a_pi, lam.unsqueeze(-1))
        picked["deterministic"] = (a_bar, agent.clip_q(agent.target_critic.min(obs, a_bar, agent.precision.target)))
    if len(picked) == 1:
        targets, q_targets = next(iter(picked.values()))
    else:
        (a_s, q_s), (a_d, q_d) = picked["stochastic"], picked["deterministic"]
        det = agent.deterministic
        targets, q_targets = torch.where(det.unsqueeze(-1), a_d, a_s), torch.where(det, q_d, q_s)
    # A λ = 0 run of a stack trains on the data exactly as it would alone (no clip of Q̂(s, a)).
    data_only = lam == 0
    return ActorTargets(obs, torch.where(data_only.unsqueeze(-1), act, targets), torch.where(data_only, q_data, q_targets))
