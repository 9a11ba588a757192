"""`ISEPModule`: ISEP (Gaussian actor) and ISEP-FM (flow actor) as one LightningModule.

IQL (Gaussian, λ = 0), CFGRL (flow, λ = 0) and the deterministic-interpolation ablation
(`policy_mix: deterministic`, Appendix B) are configurations of this module, not copies.

One gradient step ("update") is V → actor → twin Q, each network with its own Adam (manual
optimization), followed by the target EMA (the `TargetEMA` callback), as in IQL's code. The update
works on device tensors only: no `.item()`, no Python branch on a tensor value; metrics are
accumulated on the device and logged every `log_every` updates, the only host sync of a step.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Literal, Sequence

import lightning as L
import numpy as np
import torch

from isep import losses
from isep.errors import ConfigError, DivergenceError
from isep.models import GaussianActor, TwinQ, ValueFunction, VelocityField, guided_sample

Info = dict[str, torch.Tensor]




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
        flow_steps: Euler steps of the flow sampler (FQL: 10, CFGRL: 16).
        policy_mix: `stochastic` (Bernoulli action selection, Eq. 5) or `deterministic`
            (interpolated target ā = (1 − λ)a + λa_π, Appendix B).
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
    """

    def __init__(
        self,
        obs_dim: int = 1,
        act_dim: int = 2,
        actor: Literal["gaussian", "flow"] = "flow",
        lam: float = 0.0,
        expectile: float = 0.7,
        beta: float = 3.0,
        guidance: float = 1.0,
        flow_steps: int = 10,
        policy_mix: Literal["stochastic", "deterministic"] = "stochastic",
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
    ) -> None:
        super().__init__()
        if not 0.0 <= lam < 1.0:
            raise ConfigError(f"model.lam must lie in [0, 1) (the paper's λ), got {lam}")
        if not 0.0 < expectile < 1.0:
            raise ConfigError(f"model.expectile must lie in (0, 1), got {expectile}")
        if not 0.0 <= gamma <= 1.0 or not 0.0 < target_update_rate <= 1.0:
            raise ConfigError("model.gamma must lie in [0, 1] and model.target_update_rate in (0, 1]")
        if flow_steps < 1 or log_every < 1:
            raise ConfigError("model.flow_steps and model.log_every must be at least 1")
        if actor_hidden is None:
            actor_hidden = (256, 256) if actor == "gaussian" else (512, 512, 512, 512)
        self.save_hyperparameters()
        self.automatic_optimization = False

        self.critic = TwinQ(obs_dim, act_dim, critic_hidden)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = ValueFunction(obs_dim, critic_hidden)
        if actor == "gaussian":
            self.actor: torch.nn.Module = GaussianActor(obs_dim, act_dim, actor_hidden, dropout=actor_dropout)
        elif actor == "flow":
            self.actor = VelocityField(obs_dim, act_dim, actor_hidden, embed_dim=label_embed_dim)
        else:
            raise ConfigError(f"model.actor must be 'gaussian' or 'flow', got {actor!r}")

        # Data statistics: filled from the DataModule at setup, saved with the checkpoint.
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("action_low", -torch.ones(act_dim))
        self.register_buffer("action_high", torch.ones(act_dim))
        self.register_buffer("q_bound", torch.tensor(float("inf")))  # max r / (1 - γ): the clip of Q̂(s, a_π)
        self.register_buffer("value_bound", torch.tensor(float("inf")))  # max |r| / (1 - γ): divergence

        self._metric_names: list[str] | None = None
        self._metric_sum: torch.Tensor | None = None
        self._metric_count = 0

    # -- set-up ---------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Copy the data statistics (state normalizer, reward bound) from the DataModule, which
        Lightning has set up just before."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "data_stats"):
            self.set_data_stats(**dm.data_stats())

    def set_data_stats(
        self, obs_mean: torch.Tensor, obs_std: torch.Tensor, max_reward: torch.Tensor, max_abs_reward: torch.Tensor
    ) -> None:
        self.obs_mean.copy_(obs_mean)
        self.obs_std.copy_(obs_std)
        horizon = 1 / (1 - self.hparams.gamma) if self.hparams.gamma < 1 else float("inf")
        self.q_bound.fill_(float(max_reward) * horizon)
        self.value_bound.fill_(max(float(max_abs_reward), 1e-6) * horizon)

    def configure_optimizers(self):
        hp = self.hparams
        critic_opt = torch.optim.Adam(self.critic.parameters(), lr=hp.critic_lr)
        value_opt = torch.optim.Adam(self.value.parameters(), lr=hp.value_lr)
        actor_opt = torch.optim.Adam(self.actor.parameters(), lr=hp.actor_lr)
        total = self._total_updates()
        if hp.actor_lr_schedule == "cosine" and total:
            # IQL: optax.cosine_decay_schedule(-actor_lr, max_steps) on the actor only.
            sched = torch.optim.lr_scheduler.LambdaLR(
                actor_opt, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
            )
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(actor_opt, lambda step: 1.0)
        return [critic_opt, value_opt, actor_opt], [sched]

    def _total_updates(self) -> int | None:
        if self._trainer is None:
            return None
        total = self.trainer.estimated_stepping_batches
        return int(total) if math.isfinite(total) else None

    def configure_callbacks(self):
        from isep.callbacks import TargetEMA

        return [TargetEMA()]

    # -- policy ---------------------------------------------------------------------------------

    def _policy_actions(self, obs: torch.Tensor) -> torch.Tensor:
        """a_π ~ π(·|s) from the current actor (normalized states in, clipped actions out, detached)."""
        with torch.no_grad():
            if self.hparams.actor == "gaussian":
                a = self.actor.sample(obs)
                return torch.maximum(torch.minimum(a, self.action_high), self.action_low)
            return guided_sample(
                self.actor, obs, self.hparams.flow_steps, self.hparams.guidance, low=self.action_low, high=self.action_high
            )

    @torch.no_grad()
    def act(self, observations: Any, guidance: float | None = None, stochastic: bool = False) -> torch.Tensor:
        """Actions for raw (unnormalized) observations, batched, clipped to the action bounds.

        Gaussian actor: the mean (IQL evaluates deterministically), or a draw with `stochastic`.
        Flow actor: a guided sample (Eq. 7) with `guidance` (the trained w by default).
        """
        obs = observations if torch.is_tensor(observations) else torch.as_tensor(np.asarray(observations))
        obs = obs.to(self.device, torch.float32)
        squeeze = obs.dim() == 1
        obs = ((obs.reshape(1, -1) if squeeze else obs) - self.obs_mean) / self.obs_std
        was_training = self.training
        self.eval()
        try:
            if self.hparams.actor == "gaussian":
                a = self.actor.sample(obs) if stochastic else self.actor.mode(obs)
            else:
                w = self.hparams.guidance if guidance is None else guidance
                a = guided_sample(self.actor, obs, self.hparams.flow_steps, w)
            a = torch.maximum(torch.minimum(a, self.action_high), self.action_low)
        finally:
            self.train(was_training)
        return a[0] if squeeze else a

    # -- losses (one per network; each returns (loss, info)) --------------------------------------

    def _gate(self, like: torch.Tensor) -> torch.Tensor:
        """b ~ Bernoulli(λ), one per sample, drawn on the device."""
        return torch.rand(like.shape[0], device=like.device) < self.hparams.lam

    def value_loss(self, batch: dict, q_data: torch.Tensor, q_pi: torch.Tensor | None) -> tuple[torch.Tensor, Info]:
        """Eq. 2 on a batch; Q̂ values given (target critics, detached)."""
        hp = self.hparams
        v = self.value(batch["observations"])
        gate = self._gate(v) if (q_pi is not None and hp.value_mix == "bernoulli") else None
        loss = losses.value_loss(v, q_data, q_pi, hp.lam, hp.expectile, hp.value_policy_loss, gate).mean()
        info = {"value/loss": loss.detach(), "v/mean": v.detach().mean(), "v/max": v.detach().max()}
        if q_pi is not None:
            info["q_pi/mean"] = q_pi.mean()
            info["q_pi/minus_q_data"] = (q_pi - q_data).mean()
        return loss, info

    def actor_loss(
        self, batch: dict, q_data: torch.Tensor, a_pi: torch.Tensor | None, q_pi: torch.Tensor | None
    ) -> tuple[torch.Tensor, Info]:
        """Eq. 5 (Gaussian) or Eq. 6 (flow), with the stochastic or deterministic mix."""
        hp = self.hparams
        obs, act = batch["observations"], batch["actions"]
        with torch.no_grad():
            v = self.value(obs)
            if a_pi is None:  # λ = 0: IQL / CFGRL
                targets, q_targets, gate = act, q_data, None
            elif hp.policy_mix == "deterministic":
                targets = losses.interpolate_actions(act, a_pi, hp.lam)
                q_targets, gate = self._clip_q(self.target_critic.min(obs, targets)), None
            else:
                gate = self._gate(obs)
                targets = losses.select_actions(act, a_pi, gate)
                q_targets = torch.where(gate, q_pi, q_data)
            adv = q_targets - v
        info: Info = {"adv/mean": adv.mean(), "adv/std": adv.std(), "adv/positive_frac": (adv > 0).float().mean()}
        if hp.actor == "gaussian":
            w = losses.awr_weight(adv, hp.beta, hp.max_weight)
            loss = losses.awr_loss(self.actor.log_prob(obs, targets), w).mean()
            info["actor/weight_mean"] = w.mean()
            info["actor/log_std_mean"] = self.actor.log_std.detach().mean()
        else:
            x0 = torch.randn_like(targets)
            t = torch.rand(targets.shape[0], device=targets.device)
            drop = torch.rand(targets.shape[0], device=targets.device) < hp.label_dropout
            labels = losses.optimality_labels(adv, drop)
            velocity = self.actor(losses.flow_interpolant(x0, targets, t), t, obs, labels)
            loss = losses.flow_matching_loss(velocity, x0, targets).mean()
        info["actor/loss"] = loss.detach()
        return loss, info

    def critic_loss(self, batch: dict) -> tuple[torch.Tensor, Info]:
        """Eq. 3: Bellman regression of both twins on the online V(s')."""
        with torch.no_grad():
            next_v = self.value(batch["next_observations"])
        q = self.critic(batch["observations"], batch["actions"])
        loss = losses.critic_loss(q, batch["rewards"], batch["dones"], next_v, self.hparams.gamma).mean()
        q = q.detach()
        return loss, {"critic/loss": loss.detach(), "q/mean": q.mean(), "q/max": q.max(), "q/min": q.min()}

    def _targets(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Q̂(s, a), a_π and Q̂(s, a_π) (optionally clipped), all detached; a_π only when λ > 0."""
        obs = batch["observations"]
        with torch.no_grad():
            q_data = self.target_critic.min(obs, batch["actions"])
            if self.hparams.lam == 0:
                return q_data, None, None
            a_pi = self._policy_actions(obs)
            q_pi = self._clip_q(self.target_critic.min(obs, a_pi))
        return q_data, a_pi, q_pi

    def _clip_q(self, q: torch.Tensor) -> torch.Tensor:
        """Appendix A's optional crop of Q̂ at actions off the data (a_π, or ā in the ablation)."""
        return torch.minimum(q, self.q_bound) if self.hparams.clip_policy_q else q

    # -- the update -------------------------------------------------------------------------------

    @staticmethod
    def _step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def update(
        self,
        batch: dict,
        critic_opt: torch.optim.Optimizer,
        value_opt: torch.optim.Optimizer,
        actor_opt: torch.optim.Optimizer,
    ) -> Info:
        """One gradient step of V, then the actor, then the twin Q (IQL's order); device-only.

        a_π is drawn once from the current actor and serves both the value and the actor loss.
        The target EMA is not part of this method: `update_targets` (the TargetEMA callback).
        """
        q_data, a_pi, q_pi = self._targets(batch)
        v_loss, info = self.value_loss(batch, q_data, q_pi)
        self._step(value_opt, v_loss)
        a_loss, a_info = self.actor_loss(batch, q_data, a_pi, q_pi)
        self._step(actor_opt, a_loss)
        c_loss, c_info = self.critic_loss(batch)
        self._step(critic_opt, c_loss)
        return {**info, **a_info, **c_info}

    @torch.no_grad()
    def update_targets(self) -> None:
        """Q̂ ← (1 − ρ)·Q̂ + ρ·Q, ρ = `target_update_rate` (one fused call over all tensors)."""
        torch._foreach_lerp_(
            list(self.target_critic.parameters()), list(self.critic.parameters()), self.hparams.target_update_rate
        )

    def training_step(self, batch: dict, batch_idx: int) -> None:
        critic_opt, value_opt, actor_opt = self.optimizers()
        info = self.update(batch, critic_opt.optimizer, value_opt.optimizer, actor_opt.optimizer)
        self.lr_schedulers().step()
        # Lightning counts every optimizer.step() as a global step (lightning#17958); the raw
        # optimizers above bypass that count, and this advances it once per update, so that
        # `max_steps`, `global_step` and checkpoints count gradient updates.
        critic_opt._on_before_step()
        critic_opt._on_after_step()
        self._accumulate(info)
        if self.global_step % self.hparams.log_every == 0:
            self._flush_metrics(prefix="train/")

    # -- metrics: device accumulation, logged every `log_every` updates ---------------------------

    def _accumulate(self, info: Info) -> None:
        if self._metric_names is None:
            self._metric_names = list(info)
        values = torch.stack([info[k].float() for k in self._metric_names])
        self._metric_sum = values if self._metric_sum is None else self._metric_sum + values
        self._metric_count += 1

    def _flush_metrics(self, prefix: str) -> None:
        if self._metric_sum is None or self._metric_count == 0:
            return
        means = (self._metric_sum / self._metric_count).tolist()  # the one host sync
        self._metric_sum, self._metric_count = None, 0
        metrics = dict(zip(self._metric_names, means))
        self._check_divergence(metrics)
        metrics = {prefix + k: v for k, v in metrics.items()}
        metrics[prefix + "lr_actor"] = self.lr_schedulers().get_last_lr()[0]
        # Straight to the loggers, once per `log_every` updates: `self.log` would re-log stale
        # step values on every later step and costs ~0.8 ms a call.
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)
        self.log("q", metrics[prefix + "q/mean"], prog_bar=True, logger=False)

    def _check_divergence(self, metrics: dict[str, float]) -> None:
        """Stop on a non-finite metric, or on |Q|, |V| far beyond the largest possible return."""
        bad = [f"{k} = {v}" for k, v in metrics.items() if not math.isfinite(v)]
        limit = self.hparams.divergence_factor * float(self.value_bound)
        bad += [
            f"{k} = {v:.3g} (beyond {limit:.3g} = {self.hparams.divergence_factor:g} × max|r|/(1 − γ))"
            for k, v in metrics.items()
            if k.startswith(("q/", "v/", "q_pi/mean")) and math.isfinite(v) and abs(v) > limit
        ]
        if bad:
            raise DivergenceError(
                f"training diverged at step {self.global_step} with λ = {self.hparams.lam}: {'; '.join(bad)}. "
                "The paper reports divergence for λ ≥ 0.7; try a smaller --model.lam or --model.clip_policy_q true. "
                "The last checkpoint before this step is kept."
            )

    def on_train_epoch_end(self) -> None:
        self._flush_metrics(prefix="train/")

    # -- RNG: part of the checkpoint; validation never consumes the training stream ---------------

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["isep_rng"] = _rng_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "isep_rng" in checkpoint:
            _set_rng_state(checkpoint["isep_rng"])

    def on_validation_start(self) -> None:
        self._rng_outside_validation = _rng_state()

    def on_validation_end(self) -> None:
        _set_rng_state(self._rng_outside_validation)

    # -- validation / test: the same losses on fixed batches, nothing updated ---------------------

    def _eval_losses(self, batch: dict, prefix: str) -> None:
        q_data, a_pi, q_pi = self._targets(batch)
        _, info = self.value_loss(batch, q_data, q_pi)
        _, a_info = self.actor_loss(batch, q_data, a_pi, q_pi)
        _, c_info = self.critic_loss(batch)
        n = batch["rewards"].shape[0]
        self.log_dict({f"{prefix}{k}": v for k, v in {**info, **a_info, **c_info}.items()}, batch_size=n)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        with torch.no_grad():
            self._eval_losses(batch, "val/")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        with torch.no_grad():
            self._eval_losses(batch, "test/")


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
