"""The agent's three losses, one per network, each a method returning `(loss, info)`.

`loss` is per run, (R,) (the update sums it: runs share no parameter); `info` holds (R,) tensors
named `value/…`, `actor/…`, `critic/…` so that logging needs no glue, and the same methods compute
the validation metrics on fixed batches. Gradients reach only the loss's own network: every target
is computed under `no_grad` (tested). The per-sample formulas are `isep.losses`.
"""

from __future__ import annotations

import torch

from isep import losses
from isep.agent.targets import ActorTargets, ValueTargets, actor_targets
from isep.rng import Draws, Stream

Info = dict[str, torch.Tensor]


class LossesMixin:
    """Eqs. 2, 3, 5 and 6 on the agent's networks (`ISEPAgent` provides them)."""

    def clip_q(self, q: torch.Tensor) -> torch.Tensor:
        """Appendix A's optional crop of Q̂ at actions off the data (a_π, or ā in the ablation)."""
        return torch.minimum(q, self.q_bound) if self.config.clip_policy_q else q

    def targets(self, batch: dict, draws: Draws) -> ValueTargets:
        """Q̂(s, a), a_π and Q̂(s, a_π) (optionally clipped), all detached; a_π only when some λ > 0."""
        obs = batch["observations"]
        with torch.no_grad():
            q_data = self.target_critic.min(obs, batch["actions"], self.precision.target)
            if not self.draws_policy:
                return ValueTargets(q_data, None, None)
            a_pi = self.policy_actions(obs, draws.normal(Stream.POLICY_NOISE, batch["actions"].shape[1:]))
            q_pi = self.clip_q(self.target_critic.min(obs, a_pi, self.precision.target))
        return ValueTargets(q_data, a_pi, q_pi)

    def value_loss(self, batch: dict, targets: ValueTargets, draws: Draws) -> tuple[torch.Tensor, Info]:
        """Eq. 2: (1 − λ)·L₂^τ(Q̂(s,a) − V(s)) + λ·ℓ(Q̂(s,a_π) − V(s)) (`AgentConfig` says what each ℓ
        converges to); IQL's expectile regression at λ = 0."""
        v = self.value(batch["observations"], self.precision.value)
        q_data, _, q_pi = targets
        gate = None
        if q_pi is not None and self.config.value_mix == "bernoulli":
            gate = draws.bernoulli(Stream.VALUE_GATE, v.shape[1:], self.lam)
        per_sample = losses.value_loss(v, q_data, q_pi, self.lam, self.expectile, self.config.value_policy_loss, gate)
        loss = per_sample.mean(-1)
        v = v.detach()
        info = {"value/loss": loss.detach(), "v/mean": v.mean(-1), "v/max": v.amax(-1)}
        if q_pi is not None:
            info["q_pi/mean"] = q_pi.mean(-1)
            info["q_pi/minus_q_data"] = (q_pi - q_data).mean(-1)
        return loss, info

    def actor_loss(self, batch: dict, targets: ValueTargets, draws: Draws) -> tuple[torch.Tensor, Info]:
        """Eq. 5 (Gaussian: advantage-weighted log-likelihood) or Eq. 6 (flow: flow matching with
        CFGRL's optimality token), on each run's targets (`isep.agent.targets`).

        The advantage is Q̂(s, a₁) − V(s) with the target critics and the V this update just
        stepped (IQL's choice, also for the flow actor); CFGRL's own code uses the online critic
        and V before its step."""
        fit = actor_targets(self, batch["observations"], batch["actions"], targets, draws)
        with torch.no_grad():
            adv = fit.q - self.value(fit.obs, self.precision.value)
        info: Info = {"adv/mean": adv.mean(-1), "adv/std": adv.std(-1), "adv/positive_frac": (adv > 0).float().mean(-1)}
        if self.actor_kind == "gaussian":
            w = losses.awr_weight(adv, self.beta, self.config.max_weight)
            per_sample = losses.awr_loss(self.actor.log_prob(fit.obs, fit.actions, draws, self.precision.actor), w)
            info["actor/weight_mean"] = w.mean(-1)
            info["actor/log_std_mean"] = self.actor.log_std.detach().mean((-2, -1))
        else:
            per_sample = self._flow_matching(fit, adv, draws)
        if fit.weight is not None:  # Eq. 26: the data row and the policy row of each sample, weighted
            per_sample = (fit.weight * per_sample).unflatten(-1, (2, -1)).sum(-2)
        loss = per_sample.mean(-1)
        info["actor/loss"] = loss.detach()
        return loss, info

    def _flow_matching(self, fit: ActorTargets, adv: torch.Tensor, draws: Draws) -> torch.Tensor:
        """Eq. 6 per sample: ‖v(x_t, t, s, o) − (a₁ − x₀)‖², o = + where A(s, a₁) > 0, else −, ∅ with
        CFGRL's label dropout."""
        shape = fit.actions.shape[1:]
        x0 = draws.normal(Stream.FLOW_NOISE, shape)
        t = draws.uniform(Stream.FLOW_TIME, shape[:1])
        drop = draws.bernoulli(Stream.LABEL_DROP, shape[:1], self.config.label_dropout)
        labels = losses.optimality_labels(adv, drop)
        velocity = self.actor(losses.flow_interpolant(x0, fit.actions, t), t, fit.obs, labels, self.precision.actor)
        return losses.flow_matching_loss(velocity, x0, fit.actions)

    def critic_loss(self, batch: dict) -> tuple[torch.Tensor, Info]:
        """Eq. 3: Bellman regression of both twins on the online V(s')."""
        with torch.no_grad():
            next_v = self.value(batch["next_observations"], self.precision.value)
        q = self.critic(batch["observations"], batch["actions"], self.precision.critic)  # (R, 2, B)
        loss = losses.critic_loss(q, batch["rewards"], batch["dones"], next_v, self.gamma).mean(-1)
        q = q.detach()
        return loss, {"critic/loss": loss.detach(), "q/mean": q.mean((1, 2)), "q/max": q.amax((1, 2)), "q/min": q.amin((1, 2))}

    @torch.no_grad()
    def evaluation_info(self, batch: dict) -> Info:
        """Every loss and statistic of every run on one fixed (B, ·) batch, nothing updated; its draws
        are validation draws, which no training update draws (`Draws(validation=True)`)."""
        batch = {k: v.expand(self.runs, *v.shape) for k, v in batch.items()}
        draws = Draws(self.keys, torch.zeros((), dtype=torch.int64, device=self.device), validation=True)
        targets = self.targets(batch, draws)
        _, info = self.value_loss(batch, targets, draws)
        _, a_info = self.actor_loss(batch, targets, draws)
        _, c_info = self.critic_loss(batch)
        return {**info, **a_info, **c_info}
