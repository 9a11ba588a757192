"""The agent's policy: a_π for the update (Eqs. 2, 5–6) and actions for raw states (`act`).

A mixin of `ISEPAgent` (it provides the actor, the statistics, the bounds and the precision plan):
the update draws a_π with the draw's own guidance and Euler steps (`policy_guidance`,
`policy_flow_steps`); evaluation and users act with the trained w and `flow_steps`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from isep.models import guided_sample


class PolicyMixin:
    """Sampling from the current actor, Gaussian or flow (Eq. 7's guided sampler)."""

    def policy_actions(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """a_π ~ π(·|s) from the current actor (normalized states in, clipped actions out, detached)."""
        with torch.no_grad():
            if self.actor_kind == "gaussian":
                a = self.actor.sample(obs, noise, self.precision.sampler)
                return torch.maximum(torch.minimum(a, self.action_high), self.action_low)
            # (the draw's guidance and steps are `policy_guidance` / `policy_flow_steps`, by default the trained ones)
            guidance = self.guidance if self.config.policy_guidance is None else self.draw_guidance
            return guided_sample(self.actor, obs, self.draw_steps, guidance, noise, self.action_low, self.action_high,
                                 self.precision.sampler, self.draw_labels)

    @torch.no_grad()
    def act(
        self, observations: Any, guidance: float | None = None, stochastic: bool = False,
        generators: Sequence[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Actions for raw (unnormalized) observations, batched, clipped to the action bounds.

        One run: observations (..., S) → actions (..., A). A stack of R runs: (R, N, S) → (R, N, A),
        row r acted on by run r. Gaussian actor: the mean (IQL evaluates deterministically), or a
        draw with `stochastic`. Flow actor: a guided sample (Eq. 7) with `guidance` (the trained w
        of each run by default). Noise comes from `generators` (one per run, on this device: a
        run's actions then do not depend on the other runs of its stack), else torch's generator.
        """
        obs = observations if torch.is_tensor(observations) else torch.as_tensor(np.asarray(observations))
        obs = obs.to(self.device, torch.float32)
        if obs.dim() == 0 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"act() takes states of size {self.obs_dim} (the agent's obs_dim) in the last dimension, "
                             f"got shape {tuple(obs.shape)}")
        if self.runs == 1:
            lead = obs.shape[:-1]
            obs = obs.reshape(1, -1, obs.shape[-1])
        elif obs.dim() != 3 or obs.shape[0] != self.runs:
            raise ValueError(f"a stack of {self.runs} runs acts on observations of shape ({self.runs}, N, S), got {tuple(obs.shape)}")
        obs = (obs - self.obs_mean) / self.obs_std
        noise = None
        if generators is not None and (stochastic or self.actor_kind == "flow"):
            noise = torch.stack([torch.randn(obs.shape[1], self.act_dim, device=self.device, generator=g) for g in generators])
        if self.actor_kind == "gaussian":
            a = self.actor.sample(obs, noise, self.precision.sampler) if stochastic else self.actor.mode(obs, self.precision.actor)
        else:
            w = self.guidance if guidance is None else guidance
            labels = self.act_labels if guidance is None else self._labels([guidance] * self.runs)
            a = guided_sample(self.actor, obs, self.config.flow_steps, w, noise, self.action_low, self.action_high,
                              layers=self.precision.sampler, labels=labels)
        a = torch.maximum(torch.minimum(a, self.action_high), self.action_low)
        return a.reshape(*lead, a.shape[-1]) if self.runs == 1 else a

    def generators(self, seed: int) -> list[torch.Generator]:
        """One generator per run, all seeded with `seed` on this device: the noise a run draws in
        evaluation is the noise it would draw alone."""
        return [torch.Generator(device=self.device).manual_seed(seed) for _ in range(self.runs)]
