"""`ISEPModule`: ISEP (Gaussian actor) and ISEP-FM (flow actor) as one LightningModule.

IQL (Gaussian, λ = 0), CFGRL (flow, λ = 0) and the deterministic-interpolation ablation
(`policy_mix: deterministic`, Appendix B) are configurations of this module, not copies.

One gradient step ("update", `train_step`) draws a batch on the device, steps V → actor → twin Q
(IQL's order), each network with its own Adam, then moves the target critics (EMA) and adds the
step's metrics to device sums. It reads and writes device tensors only — no `.item()`, no Python
branch on a tensor value, random numbers from `isep.rng` keyed by the update counter — so the
fast path (`isep.fast`) can compile it and capture it as one CUDA graph. Metrics reach the host
every `log_every` updates, the only synchronisation of training.

Every network and optimizer carries a leading *run* dimension: R runs that differ in λ, τ, β or w,
`policy_mix` and seed train together as one model (a run's numbers depend only on its own seed),
with nothing shared between them. An ordinary run is R = 1.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import lightning as L
import numpy as np
import torch

from isep import losses
from isep.callbacks.tracking import RunLogger
from isep.errors import ConfigError, DivergenceError
from isep.fast import AcceleratedStep, choose_mode
from isep.models import GaussianActor, TwinQ, ValueFunction, VelocityField, guided_sample
from isep.optim import StackedAdam
from isep.rng import Draws, Stream, run_keys
from isep.runs import STACK_FIELDS, stack_length

Info = dict[str, torch.Tensor]
PER_RUN_BUFFERS = ("lam", "expectile", "beta", "guidance", "deterministic", "keys", "active")
VALIDATION_UPDATE = 2**31  # the update number that keys validation draws (never a training one)
GRAPH_UPDATES_PER_CALL = 10  # a captured update is faster than one Lightning step (~0.1 ms)


@dataclass
class RunRoutes:
    """Where each run of a module writes: its loggers and its folder (one run: the Trainer's)."""

    loggers: list[list]
    folders: list[Path]


def _per_run(name: str, value: Any, runs: int) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * runs
    if len(values) != runs:
        raise ConfigError(f"model.{name} has {len(values)} values but the stack has {runs} runs")
    return values


class ISEPModule(L.LightningModule):
    """ISEP / ISEP-FM with twin Q, V and a Gaussian or flow actor.

    Args:
        obs_dim, act_dim: sizes of states and actions (linked from the DataModule by the CLI).
        actor: `gaussian` (ISEP, IQL at λ = 0) or `flow` (ISEP-FM, CFGRL at λ = 0).
        lam: λ ∈ [0, 1), the weight of the policy term in the value loss (Eq. 2) and the
            probability of selecting the policy action in the actor loss (Eqs. 5-6).
        expectile: τ of the expectile loss (Eq. 2; IQL's expectile).
        beta: AWR inverse temperature β of the Gaussian actor (Eq. 5).
        guidance: classifier-free guidance weight w of the flow actor (Eq. 7).
        policy_mix: `stochastic` (Bernoulli action selection, Eq. 5) or `deterministic`
            (interpolated target ā = (1 − λ)a + λa_π, Appendix B).
        seed: the run's seed: its initial weights and every random number of its updates (batch
            indices, gates, noise) derive from it. Default: the global seed (`seed_everything`).
        lam, expectile, beta, guidance, policy_mix and seed also take one value per run: lists
            of one length R train R runs stacked in one model (scalars are shared by all runs).
        flow_steps: Euler steps of the flow sampler (FQL: 10, CFGRL: 16).
        value_policy_loss: ℓ of the value loss's policy term: `mse` (the fixed point of
            Appendix A) or `expectile`.
        value_mix: `expectation` ((1 − λ)·data + λ·policy term) or `bernoulli` (a per-sample
            Bernoulli(λ) gate between the two terms, same expectation; Section 5.3).
        clip_policy_q: clip Q̂(s, a_π) from above at max r / (1 − γ) (Appendix A: "crop Q if it
            ever exceeds the bound").
        gamma: discount; target_update_rate: EMA rate of the target critics (IQL: 0.005).
        critic_hidden, actor_hidden: hidden widths; `actor_hidden` defaults to IQL's (256, 256)
            for the Gaussian actor and CFGRL's (512, 512, 512, 512) for the flow actor.
        actor_dropout: dropout in the Gaussian actor (IQL: 0.1 on Adroit/Kitchen).
        label_dropout: probability of replacing the optimality token by ∅ (CFGRL: 0.1).
        label_embed_dim: size of the optimality-token embedding (CFGRL: 32).
        critic_lr, value_lr, actor_lr: Adam learning rates (IQL: 3e-4).
        actor_lr_schedule: `cosine` decay of the actor's rate over training (IQL) or `constant`.
        max_weight: cap of the AWR weights (IQL: 100).
        log_every: updates between two logged (averaged) metric sets.
        divergence_factor: stop when |Q| or |V| exceeds this many times max |r| / (1 − γ) (values
            can grow to 1e11 while staying finite, so a NaN check alone never fires; DESIGN.md §1).
        fast: the fast path (`isep.fast`): None (auto) = compiled and captured as a CUDA graph on
            a GPU; on the CPU compiled for runs of 20,000 updates or more (where compiling pays),
            else eager. True = compile on the CPU whatever the length; False = always eager.
        updates_per_call: updates per Lightning training step (the DataModule's ticks); None =
            10 when the update is a CUDA graph (a replay is faster than Lightning's per-step
            bookkeeping), else 1. Checkpoints, evaluation and `global_step` still count updates.
    """

    def __init__(
        self,
        obs_dim: int = 1,
        act_dim: int = 2,
        actor: Literal["gaussian", "flow"] = "flow",
        lam: float | list[float] = 0.0,
        expectile: float | list[float] = 0.7,
        beta: float | list[float] = 3.0,
        guidance: float | list[float] = 1.0,
        policy_mix: Literal["stochastic", "deterministic"] | list[Literal["stochastic", "deterministic"]] = "stochastic",
        seed: int | list[int] | None = None,
        flow_steps: int = 10,
        value_policy_loss: Literal["mse", "expectile"] = "mse",
        value_mix: Literal["expectation", "bernoulli"] = "expectation",
        clip_policy_q: bool = False,
        gamma: float = 0.99,
        target_update_rate: float = 0.005,
        critic_hidden: Sequence[int] = (256, 256),
        actor_hidden: Sequence[int] | None = None,
        actor_dropout: float = 0.0,
        label_dropout: float = 0.1,
        label_embed_dim: int = 32,
        critic_lr: float = 3e-4,
        value_lr: float = 3e-4,
        actor_lr: float = 3e-4,
        actor_lr_schedule: Literal["cosine", "constant"] = "cosine",
        max_weight: float = 100.0,
        log_every: int = 100,
        divergence_factor: float = 100.0,
        fast: bool | None = None,
        updates_per_call: int | None = None,
    ) -> None:
        super().__init__()
        runs = stack_length(dict(lam=lam, expectile=expectile, beta=beta, guidance=guidance, policy_mix=policy_mix, seed=seed))
        lams = [float(x) for x in _per_run("lam", lam, runs)]
        taus = [float(x) for x in _per_run("expectile", expectile, runs)]
        mixes = _per_run("policy_mix", policy_mix, runs)
        if not all(0.0 <= x < 1.0 for x in lams):
            raise ConfigError(f"model.lam must lie in [0, 1) (the paper's λ), got {lam}")
        if not all(0.0 < x < 1.0 for x in taus):
            raise ConfigError(f"model.expectile must lie in (0, 1), got {expectile}")
        if not set(mixes) <= {"stochastic", "deterministic"}:
            raise ConfigError(f"model.policy_mix must be 'stochastic' or 'deterministic', got {policy_mix}")
        if not 0.0 <= gamma <= 1.0 or not 0.0 < target_update_rate <= 1.0:
            raise ConfigError("model.gamma must lie in [0, 1] and model.target_update_rate in (0, 1]")
        if flow_steps < 1 or log_every < 1 or (updates_per_call is not None and updates_per_call < 1):
            raise ConfigError("model.flow_steps, model.log_every and model.updates_per_call must be at least 1")
        if actor not in ("gaussian", "flow"):
            raise ConfigError(f"model.actor must be 'gaussian' or 'flow', got {actor!r}")
        if actor_hidden is None:
            actor_hidden = (256, 256) if actor == "gaussian" else (512, 512, 512, 512)
        if seed is None:
            seed = torch.initial_seed()
        seeds = [int(s) for s in _per_run("seed", seed, runs)]
        # The CLI logs the whole resolved config to each run's record (with its section prefixes);
        # Lightning's own copy of the stacked hparams would be a second, differently shaped one.
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False

        # Static structure (Python values: what the compiled update specialises on).
        self.runs = runs
        self.seeds = seeds
        self.actor_kind = actor
        self.draws_policy = any(x > 0 for x in lams)  # a_π is needed (λ > 0 in some run)
        self.mixes = frozenset(m for m, x in zip(mixes, lams) if x > 0)
        self.gamma, self.flow_steps, self.max_weight = gamma, flow_steps, max_weight
        self.value_policy_loss, self.value_mix, self.clip_policy_q = value_policy_loss, value_mix, clip_policy_q
        self.target_update_rate, self.label_dropout = target_update_rate, label_dropout
        self.log_every, self.divergence_factor = log_every, divergence_factor

        # Each run's networks are initialised from its own seed, in the same order whatever the stack.
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        self.critic = TwinQ(runs, obs_dim, act_dim, critic_hidden, generators=gens)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = ValueFunction(runs, obs_dim, critic_hidden, generators=gens)
        if actor == "gaussian":
            self.actor: torch.nn.Module = GaussianActor(runs, obs_dim, act_dim, actor_hidden, actor_dropout, generators=gens)
        else:
            self.actor = VelocityField(runs, obs_dim, act_dim, actor_hidden, label_embed_dim, generators=gens)

        # Per-run values, shaped to broadcast over (R, B).
        self.register_buffer("lam", torch.tensor(lams).view(runs, 1))
        self.register_buffer("expectile", torch.tensor(taus).view(runs, 1))
        self.register_buffer("beta", torch.tensor([float(x) for x in _per_run("beta", beta, runs)]).view(runs, 1))
        self.register_buffer("guidance", torch.tensor([float(x) for x in _per_run("guidance", guidance, runs)]).view(runs, 1, 1))
        self.register_buffer("deterministic", torch.tensor([m == "deterministic" for m in mixes]).view(runs, 1))
        self.register_buffer("keys", run_keys(seeds))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))  # updates done; keys the draws
        self.register_buffer("active", torch.ones(runs, dtype=torch.bool))  # False: the run diverged, frozen
        # Data statistics: filled from the DataModule at setup, saved with the checkpoint.
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("action_low", -torch.ones(act_dim))
        self.register_buffer("action_high", torch.ones(act_dim))
        self.register_buffer("q_bound", torch.tensor(float("inf")))  # max r / (1 - γ): the clip of Q̂(s, a_π)
        self.register_buffer("value_bound", torch.tensor(float("inf")))  # max |r| / (1 - γ): divergence
        self.metric_names = self._metric_names()
        self.register_buffer("metric_sum", torch.zeros(runs, len(self.metric_names)), persistent=False)

        self.buffer = None  # the DataModule's TransitionBuffer, attached at setup
        self.batch_size = 256
        self.planned_updates: int | None = None  # updates of this fit (from the Trainer)
        self.schedule_total: int | None = None  # updates of the cosine schedule
        self.optimizers_: tuple[StackedAdam, StackedAdam, StackedAdam] | None = None
        self._step_fn: AcceleratedStep | None = None
        self._metric_count = 0
        self.failures: dict[int, str] = {}  # run → why it was frozen
        self.routes: RunRoutes | None = None  # each run's loggers and folder (set by the CLI)
        self._val_infos: list[Info] = []

    # -- set-up ---------------------------------------------------------------------------------

    def _metric_names(self) -> list[str]:
        names = ["value/loss", "v/mean", "v/max"]
        if self.draws_policy:
            names += ["q_pi/mean", "q_pi/minus_q_data"]
        names += ["adv/mean", "adv/std", "adv/positive_frac"]
        if self.actor_kind == "gaussian":
            names += ["actor/weight_mean", "actor/log_std_mean"]
        return names + ["actor/loss", "critic/loss", "q/mean", "q/max", "q/min", "lr_actor"]

    def setup(self, stage: str) -> None:
        """Attach the DataModule's resident dataset and statistics (Lightning set it up just before)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and getattr(dm, "buffer", None) is not None:
            self.set_data_stats(**dm.data_stats())
            self.attach_data(dm.buffer, dm.batch_size)
            if stage == "fit":
                dm.updates_per_call = self.updates_per_call(self.trainer.strategy.root_device)

    def attach_data(self, buffer, batch_size: int) -> None:
        """The dataset the update draws its batches from (a `TransitionBuffer` on this device)."""
        self.buffer, self.batch_size = buffer, int(batch_size)
        self._step_fn = None

    def set_data_stats(
        self, obs_mean: torch.Tensor, obs_std: torch.Tensor, max_reward: torch.Tensor, max_abs_reward: torch.Tensor
    ) -> None:
        self.obs_mean.copy_(obs_mean)
        self.obs_std.copy_(obs_std)
        horizon = 1 / (1 - self.gamma) if self.gamma < 1 else float("inf")
        self.q_bound.fill_(float(max_reward) * horizon)
        self.value_bound.fill_(max(float(max_abs_reward), 1e-6) * horizon)

    def configure_optimizers(self):
        hp = self.hparams
        total = self._total_updates()
        self.planned_updates = total
        self.schedule_total = total if hp.actor_lr_schedule == "cosine" and total else None
        self.optimizers_ = (
            StackedAdam(self.critic.parameters(), lr=hp.critic_lr),
            StackedAdam(self.value.parameters(), lr=hp.value_lr),
            StackedAdam(self.actor.parameters(), lr=hp.actor_lr),
        )
        self._step_fn = None
        return list(self.optimizers_)

    def _total_updates(self) -> int | None:
        """Updates this fit will run: the length of the cosine schedule."""
        if self._trainer is None:
            return None
        calls = self.trainer.estimated_stepping_batches  # training_step calls
        if not math.isfinite(calls):
            return None
        dm = getattr(self.trainer, "datamodule", None)
        per_call = getattr(dm, "updates_per_call", 1)
        if per_call == 1:
            return int(calls)
        bounds = [self.trainer.max_steps] if self.trainer.max_steps and self.trainer.max_steps > 0 else []
        if self.trainer.max_epochs and self.trainer.max_epochs > 0:
            bounds.append(self.trainer.max_epochs * dm.steps_per_epoch)
        return min(bounds) if bounds else None

    def fast_mode(self, device: torch.device | None = None) -> str:
        """`eager`, `compile` or `graph` (`isep.fast`) for `device` (default: the module's)."""
        return choose_mode(self.hparams.fast, device or self.device, self.planned_updates)

    def updates_per_call(self, device: torch.device | None = None) -> int:
        if self.hparams.updates_per_call is not None:
            return self.hparams.updates_per_call
        return GRAPH_UPDATES_PER_CALL if self.fast_mode(device) == "graph" else 1

    def step_function(self) -> Callable[[], None]:
        """`train_step` as the fast path runs it on this device (built once, captured lazily)."""
        if self._step_fn is None:
            if self.optimizers_ is None or self.buffer is None:
                raise RuntimeError("call configure_optimizers() and attach_data() before training")
            self._step_fn = AcceleratedStep(self.train_step, self.fast_mode())
        return self._step_fn

    # -- policy ---------------------------------------------------------------------------------

    def _policy_actions(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """a_π ~ π(·|s) from the current actor (normalized states in, clipped actions out, detached)."""
        with torch.no_grad():
            if self.actor_kind == "gaussian":
                a = self.actor.sample(obs, noise)
                return torch.maximum(torch.minimum(a, self.action_high), self.action_low)
            return guided_sample(self.actor, obs, self.flow_steps, self.guidance, noise, self.action_low, self.action_high)

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
        if self.runs == 1:
            lead = obs.shape[:-1]
            obs = obs.reshape(1, -1, obs.shape[-1])
        elif obs.dim() != 3 or obs.shape[0] != self.runs:
            raise ValueError(f"a stack of {self.runs} runs acts on observations of shape ({self.runs}, N, S), got {tuple(obs.shape)}")
        obs = (obs - self.obs_mean) / self.obs_std
        act_dim = self.hparams.act_dim
        noise = None
        if generators is not None and (stochastic or self.actor_kind == "flow"):
            noise = torch.stack([torch.randn(obs.shape[1], act_dim, device=self.device, generator=g) for g in generators])
        if self.actor_kind == "gaussian":
            a = self.actor.sample(obs, noise) if stochastic else self.actor.mode(obs)
        else:
            w = self.guidance if guidance is None else guidance
            a = guided_sample(self.actor, obs, self.flow_steps, w, noise)
        a = torch.maximum(torch.minimum(a, self.action_high), self.action_low)
        return a.reshape(*lead, a.shape[-1]) if self.runs == 1 else a

    def generators(self, seed: int) -> list[torch.Generator]:
        """One generator per run, all seeded with `seed` on this device: the noise a run draws in
        evaluation is the noise it would draw alone."""
        return [torch.Generator(device=self.device).manual_seed(seed) for _ in range(self.runs)]

    # -- losses (one per network; each returns (per-run loss (R,), info of (R,) tensors)) --------

    def value_loss(self, batch: dict, q_data: torch.Tensor, q_pi: torch.Tensor | None, draws: Draws) -> tuple[torch.Tensor, Info]:
        """Eq. 2 on a batch; Q̂ values given (target critics, detached)."""
        v = self.value(batch["observations"])
        gate = None
        if q_pi is not None and self.value_mix == "bernoulli":
            gate = draws.bernoulli(Stream.VALUE_GATE, v.shape[1:], self.lam)
        per_sample = losses.value_loss(v, q_data, q_pi, self.lam, self.expectile, self.value_policy_loss, gate)
        loss = per_sample.mean(-1)
        v = v.detach()
        info = {"value/loss": loss.detach(), "v/mean": v.mean(-1), "v/max": v.amax(-1)}
        if q_pi is not None:
            info["q_pi/mean"] = q_pi.mean(-1)
            info["q_pi/minus_q_data"] = (q_pi - q_data).mean(-1)
        return loss, info

    def actor_loss(
        self, batch: dict, q_data: torch.Tensor, a_pi: torch.Tensor | None, q_pi: torch.Tensor | None, draws: Draws
    ) -> tuple[torch.Tensor, Info]:
        """Eq. 5 (Gaussian) or Eq. 6 (flow), with the stochastic or deterministic mix of each run."""
        obs, act = batch["observations"], batch["actions"]
        with torch.no_grad():
            v = self.value(obs)
            targets, q_targets = self._actor_targets(obs, act, q_data, a_pi, q_pi, draws)
            adv = q_targets - v
        info: Info = {"adv/mean": adv.mean(-1), "adv/std": adv.std(-1), "adv/positive_frac": (adv > 0).float().mean(-1)}
        if self.actor_kind == "gaussian":
            w = losses.awr_weight(adv, self.beta, self.max_weight)
            loss = losses.awr_loss(self.actor.log_prob(obs, targets, draws), w).mean(-1)
            info["actor/weight_mean"] = w.mean(-1)
            info["actor/log_std_mean"] = self.actor.log_std.detach().mean((-2, -1))
        else:
            shape = targets.shape[1:]
            x0 = draws.normal(Stream.FLOW_NOISE, shape)
            t = draws.uniform(Stream.FLOW_TIME, shape[:1])
            drop = draws.bernoulli(Stream.LABEL_DROP, shape[:1], self.label_dropout)
            labels = losses.optimality_labels(adv, drop)
            velocity = self.actor(losses.flow_interpolant(x0, targets, t), t, obs, labels)
            loss = losses.flow_matching_loss(velocity, x0, targets).mean(-1)
        info["actor/loss"] = loss.detach()
        return loss, info

    def _actor_targets(
        self, obs: torch.Tensor, act: torch.Tensor, q_data: torch.Tensor, a_pi: torch.Tensor | None,
        q_pi: torch.Tensor | None, draws: Draws,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The actor's target actions a₁ and Q̂(s, a₁): the data (λ = 0), a Bernoulli(λ) selection
        of a or a_π (Eqs. 5-6), or the interpolation ā (Appendix B), per run."""
        if a_pi is None or q_pi is None:  # λ = 0 in every run: IQL / CFGRL
            return act, q_data
        picked = {}
        if "stochastic" in self.mixes:
            gate = draws.bernoulli(Stream.ACTOR_GATE, q_data.shape[1:], self.lam)
            picked["stochastic"] = (losses.select_actions(act, a_pi, gate), torch.where(gate, q_pi, q_data))
        if "deterministic" in self.mixes:
            a_bar = losses.interpolate_actions(act, a_pi, self.lam.unsqueeze(-1))
            picked["deterministic"] = (a_bar, self._clip_q(self.target_critic.min(obs, a_bar)))
        if len(picked) == 1:
            targets, q_targets = next(iter(picked.values()))
        else:
            (a_s, q_s), (a_d, q_d) = picked["stochastic"], picked["deterministic"]
            det = self.deterministic
            targets, q_targets = torch.where(det.unsqueeze(-1), a_d, a_s), torch.where(det, q_d, q_s)
        # A λ = 0 run of a stack trains on the data exactly as it would alone (no clip of Q̂(s, a)).
        data_only = self.lam == 0
        return torch.where(data_only.unsqueeze(-1), act, targets), torch.where(data_only, q_data, q_targets)

    def critic_loss(self, batch: dict) -> tuple[torch.Tensor, Info]:
        """Eq. 3: Bellman regression of both twins on the online V(s')."""
        with torch.no_grad():
            next_v = self.value(batch["next_observations"])
        q = self.critic(batch["observations"], batch["actions"])  # (R, 2, B)
        loss = losses.critic_loss(q, batch["rewards"], batch["dones"], next_v, self.gamma).mean(-1)
        q = q.detach()
        return loss, {"critic/loss": loss.detach(), "q/mean": q.mean((1, 2)), "q/max": q.amax((1, 2)), "q/min": q.amin((1, 2))}

    def targets(self, batch: dict, draws: Draws) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Q̂(s, a), a_π and Q̂(s, a_π) (optionally clipped), all detached; a_π only when some λ > 0."""
        obs = batch["observations"]
        with torch.no_grad():
            q_data = self.target_critic.min(obs, batch["actions"])
            if not self.draws_policy:
                return q_data, None, None
            a_pi = self._policy_actions(obs, draws.normal(Stream.POLICY_NOISE, batch["actions"].shape[1:]))
            q_pi = self._clip_q(self.target_critic.min(obs, a_pi))
        return q_data, a_pi, q_pi

    def _clip_q(self, q: torch.Tensor) -> torch.Tensor:
        """Appendix A's optional crop of Q̂ at actions off the data (a_π, or ā in the ablation)."""
        return torch.minimum(q, self.q_bound) if self.clip_policy_q else q

    # -- the update -------------------------------------------------------------------------------

    def _actor_lr_factor(self) -> torch.Tensor | float:
        """IQL's cosine decay (optax.cosine_decay_schedule over all updates), from the update counter."""
        if self.schedule_total is None:
            return 1.0
        done = torch.clamp(self.updates.to(torch.float32), max=float(self.schedule_total))
        return 0.5 * (1 + torch.cos(math.pi * done / self.schedule_total))

    @staticmethod
    def _descend(opt: StackedAdam, loss: torch.Tensor, count: torch.Tensor, lr_factor, active: torch.Tensor | None) -> None:
        """Gradients of the runs' summed losses (runs share no parameter, so each run gets its own)."""
        grads = torch.autograd.grad(loss.sum(), opt.params)
        opt.apply(grads, count, lr_factor, active)

    def update(self, batch: dict, draws: Draws) -> Info:
        """One gradient step of V, then the actor, then the twin Q (IQL's order); device-only.

        `batch` holds (R, B, ·) tensors; a_π is drawn once from the current actor and serves both
        the value and the actor loss. Frozen runs (`active` False) compute but do not move.
        """
        if self.optimizers_ is None:
            raise RuntimeError("call configure_optimizers() before update()")
        critic_opt, value_opt, actor_opt = self.optimizers_
        count = (self.updates + 1).to(torch.float32)
        lr_factor = self._actor_lr_factor()
        # Masks only once a run is frozen (a host-side fact: the compiled step specialises on it).
        active, twin_active = (self.active, self._twin_active()) if self.failures else (None, None)
        q_data, a_pi, q_pi = self.targets(batch, draws)
        v_loss, info = self.value_loss(batch, q_data, q_pi, draws)
        self._descend(value_opt, v_loss, count, 1.0, active)
        a_loss, a_info = self.actor_loss(batch, q_data, a_pi, q_pi, draws)
        self._descend(actor_opt, a_loss, count, lr_factor, active)
        c_loss, c_info = self.critic_loss(batch)
        self._descend(critic_opt, c_loss, count, 1.0, twin_active)
        lr = actor_opt.param_groups[0]["lr"] * lr_factor
        lr = lr.expand(self.runs) if torch.is_tensor(lr) else torch.full((self.runs,), lr, device=self.device)
        return {**info, **a_info, **c_info, "lr_actor": lr}

    def _twin_active(self) -> torch.Tensor:
        """`active` per critic member (2 per run), as views (no data-dependent sizes)."""
        return self.active.unsqueeze(1).expand(self.runs, 2).reshape(-1)

    @torch.no_grad()
    def update_targets(self) -> None:
        """Q̂ ← (1 − ρ)·Q̂ + ρ·Q, ρ = `target_update_rate`, for the active runs."""
        targets, online = list(self.target_critic.parameters()), list(self.critic.parameters())
        if not self.failures:
            torch._foreach_lerp_(targets, online, self.target_update_rate)
            return
        rate = (self.target_update_rate * self._twin_active().to(torch.float32)).view(-1, 1, 1)
        for target, source in zip(targets, online):
            target.lerp_(source, rate)

    def train_step(self) -> None:
        """One update of every run: a batch drawn on the device, V → actor → twin Q, the target
        EMA, metric sums, and the update counter. What the fast path compiles and captures."""
        draws = Draws(self.keys, self.updates)
        batch = self.buffer.sample(draws, self.batch_size)
        info = self.update(batch, draws)
        self.update_targets()
        with torch.no_grad():
            self.metric_sum.add_(torch.stack([info[k].float() for k in self.metric_names], -1))
            self.updates.add_(1)

    def training_step(self, batch: int, batch_idx: int) -> None:
        """`batch` updates (the DataModule's tick), each one a call of the fast-path step."""
        step = self.step_function()
        lightning_opt = self.optimizers()[0]
        todo = int(batch)
        if self.trainer.max_steps is not None and self.trainer.max_steps > 0:
            todo = min(todo, self.trainer.max_steps - self.global_step)
        for _ in range(todo):
            step()
            # Lightning counts optimizer.step() calls as global steps (lightning#17958); the update
            # steps its own optimizers, and this advances Lightning's count once per update, so
            # that `max_steps`, `global_step` and checkpoints count gradient updates.
            lightning_opt._on_before_step()
            lightning_opt._on_after_step()
            self._metric_count += 1
            if self.global_step % self.log_every == 0:
                self._flush_metrics()

    # -- metrics: device sums, read and logged every `log_every` updates --------------------------

    def _flush_metrics(self) -> None:
        if self._metric_count == 0:
            return
        means = (self.metric_sum / self._metric_count).tolist()  # the one host sync of training
        self.metric_sum.zero_()
        self._metric_count = 0
        per_run = [dict(zip(self.metric_names, row)) for row in means]
        for r, metrics in enumerate(per_run):
            if r in self.failures:
                continue
            problems = self._divergence(metrics)
            if problems:
                self._diverged(r, problems)
        self.log_runs([{f"train/{k}": v for k, v in m.items()} for m in per_run])
        live = [m["q/mean"] for r, m in enumerate(per_run) if r not in self.failures]
        if live:
            self.log("q", sum(live) / len(live), prog_bar=True, logger=False)

    def _divergence(self, metrics: dict[str, float]) -> list[str]:
        """A non-finite metric, or |Q|, |V| far beyond the largest possible return."""
        bad = [f"{k} = {v}" for k, v in metrics.items() if not math.isfinite(v)]
        limit = self.divergence_factor * float(self.value_bound)
        bad += [
            f"{k} = {v:.3g} (beyond {limit:.3g} = {self.divergence_factor:g} × max|r|/(1 − γ))"
            for k, v in metrics.items()
            if k.startswith(("q/", "v/", "q_pi/mean")) and math.isfinite(v) and abs(v) > limit
        ]
        return bad

    def _diverged(self, run: int, problems: list[str]) -> None:
        """One run diverged: alone it stops training; in a stack it is frozen and the others go on."""
        lam = float(self.lam[run])
        message = (
            f"training diverged at step {self.global_step} with λ = {lam:g}: {'; '.join(problems)}. "
            "The paper reports divergence for λ ≥ 0.7; try a smaller --model.lam or --model.clip_policy_q true."
        )
        if self.runs == 1:
            raise DivergenceError(message + " The last checkpoint before this step is kept.")
        self.failures[run] = f"run {run} (seed {self.seeds[run]}): {message}"
        self.active[run] = False
        self._report_failures()
        if self._step_fn is not None:
            self._step_fn.reset()  # the step now masks the frozen run: capture it again
        if len(self.failures) == self.runs:
            raise DivergenceError("every run of the stack diverged: " + " | ".join(self.failures.values()))

    def _report_failures(self) -> None:
        """Mark the frozen runs' records failed (their loggers that can: `RunLogger.fail`)."""
        if self.routes is None:  # no records of their own (only a stack has frozen runs)
            return
        for run, reason in self.failures.items():
            for logger in self.routes.loggers[run]:
                if isinstance(logger, RunLogger):
                    logger.fail(reason)

    def on_fit_start(self) -> None:
        self._report_failures()  # a resumed stack: its frozen runs stay failed

    def log_runs(self, per_run: list[dict[str, float]], step: int | None = None) -> None:
        """Send each run's metrics to its loggers (one run: every logger), at step = updates done.

        Straight to the loggers: `self.log` would re-log stale step values on every later step
        and costs ~0.8 ms a call."""
        step = self.global_step if step is None else step
        routes = self.run_routes()
        for r, metrics in enumerate(per_run):
            if r in self.failures and self.runs > 1:
                continue
            for logger in routes.loggers[r]:
                logger.log_metrics(metrics, step=step)

    def run_routes(self) -> RunRoutes:
        """Each run's loggers and folder (evaluation returns, CSV, config): those the CLI set (a
        stack's runs each have a sub-folder and loggers of their own), else, for one run, the
        Trainer's loggers and folder."""
        if self.routes is not None:
            return self.routes
        if self.runs > 1:
            raise RuntimeError(f"a stack of {self.runs} runs writes each run to its own folder and loggers: train it "
                               "with `isep fit`, or set `module.routes` (a RunRoutes) before fitting")
        return RunRoutes([list(self.loggers)], [Path(self.trainer.default_root_dir)])

    # -- one run out of a stack ---------------------------------------------------------------------

    def select_run(self, run: int) -> "ISEPModule":
        """Run `run` of the stack as a module of its own (R = 1): its hyper-parameters, weights,
        targets, statistics and update count; what a separate run would have been."""
        if not 0 <= run < self.runs:
            raise IndexError(f"run {run} out of range: this module holds {self.runs} runs (0..{self.runs - 1})")
        hparams = dict(self.hparams)
        for name in STACK_FIELDS:
            value = hparams.get(name)
            hparams[name] = value[run] if isinstance(value, (list, tuple)) else value
        hparams["seed"] = self.seeds[run]
        single = ISEPModule(**hparams)
        state = {}
        for name, tensor in self.state_dict().items():
            network = name.split(".")[0]
            if network in ("critic", "target_critic"):
                state[name] = tensor[2 * run : 2 * run + 2]
            elif network in ("value", "actor") or name in PER_RUN_BUFFERS:
                state[name] = tensor[run : run + 1]
            else:
                state[name] = tensor
        single.load_state_dict(state)
        if run in self.failures:
            single.failures = {0: self.failures[run]}
        return single.to(self.device)

    def on_train_epoch_end(self) -> None:
        self._flush_metrics()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["isep_failures"] = dict(self.failures)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.failures = dict(checkpoint.get("isep_failures", {}))
        self._step_fn = None  # a captured graph would point at the tensors the load replaces

    # -- validation / test: the same losses on fixed batches, nothing updated ---------------------

    def _eval_info(self, batch: dict) -> Info:
        """Losses and statistics of every run on one fixed (B, ·) batch, shared by the runs."""
        batch = {k: v.expand(self.runs, *v.shape) for k, v in batch.items()}
        draws = Draws(self.keys, torch.tensor(VALIDATION_UPDATE, device=self.device))
        q_data, a_pi, q_pi = self.targets(batch, draws)
        _, info = self.value_loss(batch, q_data, q_pi, draws)
        _, a_info = self.actor_loss(batch, q_data, a_pi, q_pi, draws)
        _, c_info = self.critic_loss(batch)
        return {**info, **a_info, **c_info}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        with torch.no_grad():
            self._val_infos.append(self._eval_info(batch))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def _log_eval(self, prefix: str) -> None:
        if not self._val_infos or self.trainer.sanity_checking:
            self._val_infos = []
            return
        keys = list(self._val_infos[0])
        means = torch.stack([torch.stack([i[k] for k in keys], -1) for i in self._val_infos]).mean(0).tolist()
        self._val_infos = []
        self.log_runs([{f"{prefix}{k}": v for k, v in zip(keys, row)} for row in means])

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val/")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test/")
