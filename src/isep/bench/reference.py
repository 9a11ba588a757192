"""The ISEP / ISEP-FM update written the plain way, as single-file offline-RL code does (CORL's style).

Separate `nn.Sequential` twins and targets, one `torch.optim.Adam` per network, batch indices from
`torch.randint` on the device, eager execution, and `.item()` on every logged loss. It computes
the same math as `ISEPModule.update` (Eqs. 2, 3, 5-7, V → actor → Q → target EMA) and is the
baseline `isep bench` measures the module against; it is not used for training.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn


def _mlp(in_dim: int, hidden: Sequence[int], out_dim: int, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), act()]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


class ReferenceISEP:
    """One object, three optimizers, a `step(batch)` that returns host floats."""

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        actor: str = "gaussian",
        lam: float = 0.0,
        expectile: float = 0.7,
        beta: float = 3.0,
        guidance: float = 1.0,
        flow_steps: int = 10,
        policy_guidance: float | None = None,
        policy_flow_steps: int | None = None,
        hidden: Sequence[int] = (256, 256),
        actor_hidden: Sequence[int] | None = None,
        gamma: float = 0.99,
        tau: float = 0.005,
        lr: float = 3e-4,
        device: str = "cpu",
    ) -> None:
        self.actor_kind, self.lam, self.expectile, self.beta, self.guidance = actor, lam, expectile, beta, guidance
        self.flow_steps, self.gamma, self.tau, self.act_dim, self.device = flow_steps, gamma, tau, act_dim, device
        # the a_π draw's guidance and Euler steps (default: the trained ones)
        self.draw_guidance = guidance if policy_guidance is None else policy_guidance
        self.draw_steps = policy_flow_steps or flow_steps
        self.q1 = _mlp(obs_dim + act_dim, hidden, 1).to(device)
        self.q2 = _mlp(obs_dim + act_dim, hidden, 1).to(device)
        self.q1_target, self.q2_target = copy.deepcopy(self.q1), copy.deepcopy(self.q2)
        self.v = _mlp(obs_dim, hidden, 1).to(device)
        if actor == "gaussian":
            self.pi = _mlp(obs_dim, actor_hidden or (256, 256), act_dim).to(device)
            self.log_std = nn.Parameter(torch.zeros(act_dim, device=device))
            actor_params = [*self.pi.parameters(), self.log_std]
        else:
            self.embed = nn.Embedding(3, 32).to(device)
            self.pi = _mlp(act_dim + 1 + obs_dim + 32, actor_hidden or (512,) * 4, act_dim, nn.Mish).to(device)
            actor_params = [*self.pi.parameters(), *self.embed.parameters()]
        self.q_opt = torch.optim.Adam([*self.q1.parameters(), *self.q2.parameters()], lr=lr)
        self.v_opt = torch.optim.Adam(self.v.parameters(), lr=lr)
        self.pi_opt = torch.optim.Adam(actor_params, lr=lr)

    # -- the actor ------------------------------------------------------------------------------

    def _velocity(self, x, t, obs, label):
        return self.pi(torch.cat([x, t[:, None], obs, self.embed(label)], -1))

    @torch.no_grad()
    def sample(self, obs: torch.Tensor) -> torch.Tensor:
        """a_π: a Gaussian draw, or the guided Euler sampler at the draw's guidance (at w = 1 or 0
        only the + or the ∅ velocity, the other term being multiplied by zero)."""
        if self.actor_kind == "gaussian":
            mean = torch.tanh(self.pi(obs))
            return (mean + torch.randn_like(mean) * self.log_std.clamp(-5, 2).exp()).clamp(-1, 1)
        b, w, steps = obs.shape[0], self.draw_guidance, self.draw_steps
        x = torch.randn(b, self.act_dim, device=obs.device)
        null = torch.zeros(b, dtype=torch.long, device=obs.device)
        pos = torch.full((b,), 2, dtype=torch.long, device=obs.device)
        for k in range(steps):
            t = torch.full((b,), k / steps, device=obs.device)
            if w == 1.0:
                v = self._velocity(x, t, obs, pos)
            elif w == 0.0:
                v = self._velocity(x, t, obs, null)
            else:
                v_null, v_pos = self._velocity(x, t, obs, null), self._velocity(x, t, obs, pos)
                v = v_null + w * (v_pos - v_null)
            x = x + v / steps
        return x.clamp(-1, 1)

    def _q_target(self, obs, act):
        sa = torch.cat([obs, act], -1)
        return torch.min(self.q1_target(sa), self.q2_target(sa)).squeeze(-1)

    # -- one update ------------------------------------------------------------------------------

    def step(self, obs, act, rew, next_obs, done) -> dict[str, float]:
        with torch.no_grad():
            q_data = self._q_target(obs, act)
            if self.lam > 0:
                a_pi = self.sample(obs)
                q_pi = self._q_target(obs, a_pi)

        # V (Eq. 2)
        v = self.v(obs).squeeze(-1)
        u = q_data - v
        v_loss = (torch.abs(self.expectile - (u < 0).float()) * u**2).mean()
        if self.lam > 0:
            v_loss = (1 - self.lam) * v_loss + self.lam * ((q_pi - v) ** 2).mean()
        self.v_opt.zero_grad()
        v_loss.backward()
        self.v_opt.step()

        # actor (Eq. 5 / Eq. 6), Bernoulli(λ) selection of the target action
        with torch.no_grad():
            target_a, target_q = act, q_data
            if self.lam > 0:
                gate = torch.rand(obs.shape[0], device=obs.device) < self.lam
                target_a = torch.where(gate[:, None], a_pi, act)
                target_q = torch.where(gate, q_pi, q_data)
            adv = target_q - self.v(obs).squeeze(-1)
        if self.actor_kind == "gaussian":
            weight = torch.clamp(torch.exp(self.beta * adv), max=100.0)
            mean = torch.tanh(self.pi(obs))
            log_std = self.log_std.clamp(-5, 2)
            log_prob = (-0.5 * ((target_a - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
            pi_loss = -(weight * log_prob).mean()
        else:
            x0 = torch.randn_like(target_a)
            t = torch.rand(obs.shape[0], device=obs.device)
            label = torch.where(adv > 0, 2, 1)
            label = torch.where(torch.rand(obs.shape[0], device=obs.device) < 0.1, 0, label)
            x_t = (1 - t[:, None]) * x0 + t[:, None] * target_a
            pi_loss = ((self._velocity(x_t, t, obs, label) - (target_a - x0)) ** 2).mean()
        self.pi_opt.zero_grad()
        pi_loss.backward()
        self.pi_opt.step()

        # twin Q (Eq. 3)
        with torch.no_grad():
            y = rew + self.gamma * (1 - done) * self.v(next_obs).squeeze(-1)
        sa = torch.cat([obs, act], -1)
        q_loss = ((self.q1(sa).squeeze(-1) - y) ** 2).mean() + ((self.q2(sa).squeeze(-1) - y) ** 2).mean()
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()

        # target EMA
        with torch.no_grad():
            for net, target in ((self.q1, self.q1_target), (self.q2, self.q2_target)):
                for p, tp in zip(net.parameters(), target.parameters()):
                    tp.mul_(1 - self.tau).add_(self.tau * p)
        return {"value_loss": v_loss.item(), "actor_loss": pi_loss.item(), "critic_loss": q_loss.item()}
