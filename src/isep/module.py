"""`ISEPModule`: the Lightning shell around `isep.agent.ISEPAgent`.

The agent holds the method (networks, optimizers, losses, the captured update, the policy); this
module holds what Lightning needs around it: the hyper-parameters (every `--model.*` option), the
loop that runs the agent's update as many times as a Lightning step asks, the fast path's
hand-off, metric reads every `log_every` updates, checkpoint hooks and validation/test.

Cross-cutting work is in callbacks, which the module installs itself when the Trainer has none of
that type (`configure_callbacks`): `TargetEMA` (the target critics' EMA, contributed to the
captured update) and `DivergenceGuard` (the bound check, per-run freezing and FAILED records).
Callbacks may define `on_train_metrics(trainer, module, per_run)`, called with each run's averaged
training metrics whenever they reach the host, and `on_run_diverged(trainer, module, run, reason)`.
"""

from __future__ import annotations

import math
import sys
from typing import Callable, Literal, Sequence

import lightning as L
import torch

from isep.agent import AgentConfig, ISEPAgent
from isep.agent.config import PolicyMix
from isep.checkpoint_compat import reopen_stopped_epoch, upgrade_checkpoint
from isep.errors import ConfigError
from isep.fast import choose_mode
from isep.precision import check_device, no_autocast, normalize
from isep.params import (
    ClosedUnitInterval,
    HalfOpenUnitInterval,
    NonNegativeFloat,
    OpenUnitInterval,
    PositiveFloat,
    PositiveInt,
    RateInterval,
)

GRAPH_UPDATES_PER_CALL = 10  # a captured update is faster than one Lightning step (~0.1 ms)


class ISEPModule(L.LightningModule):
    """ISEP / ISEP-FM with twin Q, V and a Gaussian or flow actor: the options of `--model.*`.

    Args:
        obs_dim: size of the states (linked from the DataModule by the CLI).
        act_dim: size of the actions (linked from the DataModule by the CLI).
        log_every: updates between two logged (averaged) metric sets.
        divergence_factor: stop when |Q| or |V| exceeds this many times max |r| / (1 − γ) (values
            can grow to 1e11 while staying finite, so a NaN check alone never fires; DESIGN.md §1).
        fast: the update's path: unset = auto (GPU: graph; CPU: compile from 20,000 updates, else
            eager), falling back graph → compile → eager with one line when a path fails; eager,
            compile, graph or true (the device's fastest) = that path, exit 2 if it fails.
        fast_check: check the fast path once against eager (a few updates; the state is put back).
        updates_per_call: updates per Lightning training step; unset = 10 when the update is a CUDA
            graph (a replay is faster than Lightning's per-step bookkeeping), else 1.
        tf32: on a GPU, let float32 matrix products use TF32 tensor cores
            (`torch.set_float32_matmul_precision("high")`); the 32-true parts only.
    """

    def __init__(
        self,
        obs_dim: int = 1,
        act_dim: int = 2,
        actor: Literal["gaussian", "flow"] = "flow",
        lam: HalfOpenUnitInterval | list[HalfOpenUnitInterval] = 0.0,
        expectile: OpenUnitInterval | list[OpenUnitInterval] = 0.7,
        beta: NonNegativeFloat | list[NonNegativeFloat] = 3.0,
        guidance: NonNegativeFloat | list[NonNegativeFloat] = 1.0,
        policy_guidance: float | None | list[float | None] = None,
        policy_mix: PolicyMix | list[PolicyMix] = "stochastic",
        seed: int | list[int] | None = None,
        flow_steps: PositiveInt = 10,
        policy_flow_steps: int | None = None,
        value_policy_loss: Literal["mse", "expectile"] = "mse",
        value_mix: Literal["expectation", "bernoulli"] = "expectation",
        clip_policy_q: bool = False,
        gamma: ClosedUnitInterval = 0.99,
        target_update_rate: RateInterval = 0.005,
        critic_hidden: Sequence[PositiveInt] = (256, 256),
        actor_hidden: Sequence[PositiveInt] | None = None,
        actor_dropout: HalfOpenUnitInterval = 0.0,
        label_dropout: ClosedUnitInterval = 0.1,
        label_embed_dim: PositiveInt = 32,
        critic_lr: PositiveFloat = 3e-4,
        value_lr: PositiveFloat = 3e-4,
        actor_lr: PositiveFloat = 3e-4,
        actor_lr_schedule: Literal["cosine", "constant"] = "cosine",
        max_weight: PositiveFloat = 100.0,
        log_every: PositiveInt = 100,
        divergence_factor: PositiveFloat = 100.0,
        fast: bool | Literal["eager", "compile", "graph"] | None = None,
        fast_check: bool = True,
        updates_per_call: PositiveInt | None = None,
        bf16_parts: Literal["safe", "sampler", "all"] = "safe",
        tf32: bool = False,
    ) -> None:
        super().__init__()
        if log_every < 1 or (updates_per_call is not None and updates_per_call < 1):
            raise ConfigError("model.log_every and model.updates_per_call must be at least 1")
        # The CLI logs the whole resolved config to each run's record (with its section prefixes);
        # Lightning's own copy of the stacked hparams would be a second, differently shaped one.
        self.save_hyperparameters(logger=False)
        self.automatic_optimization = False
        # (the precision is the Trainer's, `--trainer.precision`: set at `setup`)
        settings = {f: self.hparams[f] for f in AgentConfig.fields() if f in self.hparams}
        self.agent = ISEPAgent(obs_dim, act_dim, AgentConfig(**settings))
        self.log_every, self.divergence_factor = log_every, divergence_factor
        self.planned_updates: int | None = None  # updates of this fit (from the Trainer)
        self.last_metrics: list[dict[str, float]] = []  # each run's latest averaged training metrics
        self.eval_metrics: list[dict[str, float]] = []  # each run's latest validation / test metrics
        self.first_update = 0  # the update this fit started at (a checkpoint's, `on_load_checkpoint`)
        self.routes = None  # each run's loggers and folder (`isep.callbacks.tracking.RunRoutes`; set by the CLI)
        self._val_infos: list[dict[str, torch.Tensor]] = []

    @property
    def runs(self) -> int:
        return self.agent.runs

    # -- set-up ---------------------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """The Trainer's precision, and the DataModule's resident dataset and statistics (Lightning
        set it up just before)."""
        if self._trainer is not None:
            precision = normalize(self.trainer.precision)
            check_device(precision, self.trainer.strategy.root_device)
            self.agent.set_precision(precision, self.hparams.bf16_parts)
            if self.hparams.tf32 and self.trainer.strategy.root_device.type == "cuda":
                torch.set_float32_matmul_precision("high")
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and getattr(dm, "buffer", None) is not None:
            self.agent.set_data_stats(**dm.data_stats())
            self.agent.attach_data(dm.buffer, dm.batch_size)
            if stage == "fit":
                dm.updates_per_call = self.updates_per_call(self.trainer.strategy.root_device)

    def configure_optimizers(self):
        self.planned_updates = self._total_updates()
        self.agent.plan(self.planned_updates)
        return list(self.agent.optimizers)

    def configure_callbacks(self) -> list[L.Callback]:
        """The callbacks a run cannot do without, unless the Trainer already has one of that type."""
        from isep.callbacks.divergence import DivergenceGuard
        from isep.callbacks.target_ema import TargetEMA

        present = list(self.trainer.callbacks) if self._trainer is not None else []
        wanted = [TargetEMA(), DivergenceGuard()]
        return [cb for cb in wanted if not any(isinstance(p, type(cb)) for p in present)]

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

    def fast_mode(self, device: torch.device | None = None, updates: int | None = None) -> str:
        """`eager`, `compile` or `graph` (`isep.fast`) for `device` (default: the module's) and a fit
        of `updates` updates (default: the planned ones, known once the Trainer set the module up)."""
        return choose_mode(self.hparams.fast, device or self.device, updates if updates is not None else self.planned_updates)

    def updates_per_call(self, device: torch.device | None = None) -> int:
        if self.hparams.updates_per_call is not None:
            return self.hparams.updates_per_call
        return GRAPH_UPDATES_PER_CALL if self.fast_mode(device) == "graph" else 1

    def step_function(self) -> Callable[[], None]:
        """The agent's update as the fast path runs it on this device: checked once against eager
        (`fast_check`), falling back one path on a failure unless `--model.fast` chose the path."""
        explicit = self.hparams.fast is not None and self.hparams.fast is not False
        return self.agent.step_function(self.fast_mode(), fallback=not explicit, check=self.hparams.fast_check,
                                       report=lambda line: print(line, file=sys.stderr, flush=True))

    def update_path(self) -> tuple[str, dict[str, str], float]:
        """The path the update runs on now (after any fallback), the paths that failed with why, and
        the seconds the equivalence checks took."""
        built = self.agent._step_fn
        path = built.mode if built is not None else self.fast_mode()
        return path, dict(self.agent.fast_failures), getattr(built, "check_seconds", 0.0)

    # -- training: `batch` updates per Lightning step; metrics read every `log_every` ------------

    def training_step(self, batch: int, batch_idx: int) -> None:
        """`batch` updates (the DataModule's tick), each one a call of the fast-path step."""
        lightning_opt = self.optimizers()[0]
        todo = int(batch)
        if self.trainer.max_steps is not None and self.trainer.max_steps > 0:
            todo = min(todo, self.trainer.max_steps - self.global_step)
        for _ in range(todo):
            with no_autocast(self.device):  # the agent casts per part itself (`isep.precision`)
                self.step_function()()  # the step is rebuilt when a hook or a frozen run changed it
            # Lightning counts optimizer.step() calls as global steps (lightning#17958); the update
            # steps its own optimizers, and this advances Lightning's count once per update, so
            # that `max_steps`, `global_step` and checkpoints count gradient updates.
            lightning_opt._on_before_step()
            lightning_opt._on_after_step()
            if self.global_step % self.log_every == 0:
                self.flush_metrics()

    def flush_metrics(self) -> None:
        """Read each run's averaged metrics, show them to the callbacks (`on_train_metrics`: the
        divergence guard acts here, before anything is logged or saved) and log them."""
        from isep.callbacks.tracking import log_runs

        per_run = self.agent.read_metrics()
        if not per_run:
            return
        for callback in self.trainer.callbacks:
            hook = getattr(callback, "on_train_metrics", None)
            if hook is not None:
                hook(self.trainer, self, per_run)
        self.last_metrics = per_run
        log_runs(self, [{f"train/{k}": v for k, v in m.items()} for m in per_run])

    def on_train_epoch_end(self) -> None:
        self.flush_metrics()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.first_update = int(checkpoint.get("global_step", 0))  # what a resumed fit starts from
        upgrade_checkpoint(checkpoint)  # checkpoints written before the agent split load as they are
        if self._trainer is not None:  # (a resume: the new fit's length decides how Lightning reads its loops)
            reopen_stopped_epoch(checkpoint, iteration_based=self.trainer.max_steps not in (None, -1))
        self.agent.reset_step()  # a captured graph would point at the tensors the load replaces

    # -- validation / test: the same losses on fixed batches, nothing updated ---------------------

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        with no_autocast(self.device):
            self._val_infos.append(self.agent.evaluation_info(batch))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def _log_eval(self, prefix: str) -> None:
        from isep.callbacks.tracking import log_runs

        if not self._val_infos or self.trainer.sanity_checking:
            self._val_infos = []
            return
        keys = list(self._val_infos[0])
        means = torch.stack([torch.stack([i[k] for k in keys], -1) for i in self._val_infos]).mean(0).tolist()
        self._val_infos = []
        per_run = [{f"{prefix}{k}": v for k, v in zip(keys, row)} for row in means]
        log_runs(self, per_run)
        self.eval_metrics = per_run

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val/")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test/")


# `--model.*` help: the method's settings are documented once, on `AgentConfig`.
ISEPModule.__doc__ = ISEPModule.__doc__.rstrip() + "\n" + AgentConfig.__doc__.split("Args:\n", 1)[1]

