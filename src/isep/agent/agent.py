"""`ISEPAgent`: ISEP (Gaussian actor) and ISEP-FM (flow actor) in plain PyTorch, no framework.

IQL (Gaussian, λ = 0), CFGRL (flow, λ = 0), BC (Gaussian, λ = 0, β = 0) and the ablations of
Appendix B (`policy_mix`) are settings of this one agent. Any loop can drive it:

    agent = ISEPAgent(obs_dim, act_dim, actor="flow", lam=0.3)
    agent.set_data_stats(**stats); agent.attach_data(buffer, 256); agent.plan(total_updates)
    for _ in range(total_updates):
        agent.train_step()

One update (`train_step`) draws a batch on the device, steps V → actor → twin Q (IQL's order),
each network with its own Adam, runs the per-update hooks (the target EMA by default), and adds
the step's metrics to device sums. It reads and writes device tensors only — no `.item()`, no
Python branch on a tensor's value, random numbers from `isep.rng` keyed by the update counter —
so `step_function("compile" | "graph")` can compile it and capture it as one CUDA graph.

Every network and optimizer carries a leading *run* dimension: R runs that differ in λ, τ, β or w,
`policy_mix` and seed train together (a run's numbers depend on its own seed only). `state_dict()`
holds everything an exact resume needs: weights, targets, Adam moments, the update counter (which
also keys every draw and the schedule), data statistics, the schedule's length and frozen runs.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from isep.agent.config import AgentConfig
from isep.agent.hooks import TargetEMAUpdate, UpdateHook, twin_active
from isep.agent.losses import LossesMixin
from isep.agent.policy import PolicyMixin
from isep.errors import ConfigError
from isep.fast import AcceleratedStep, Mode
from isep.fast_fallback import ResilientStep
from isep.models import GaussianActor, TwinQ, ValueFunction, VelocityField
from isep.models.flow import one_branch_labels
from isep.optim import AdamMoments, StackedAdam
from isep.precision import plan_for
from isep.rng import Draws, run_keys

Info = dict[str, torch.Tensor]
# Buffers with one row per run (a stack's run r is row r; the critics have two rows per run).
PER_RUN_BUFFERS = ("lam", "expectile", "beta", "guidance", "deterministic", "keys", "active")
NETWORKS = ("critic", "value", "actor")  # each with its optimizer and moments


class ISEPAgent(LossesMixin, PolicyMixin, nn.Module):
    """Twin Q, V and a Gaussian or flow actor, their three optimizers and the update.

    Args:
        obs_dim: size of states.
        act_dim: size of actions.
        config: the hyper-parameters (`AgentConfig`); or give its fields as keywords.
    """

    def __init__(self, obs_dim: int, act_dim: int, config: AgentConfig | None = None, **settings: Any) -> None:
        super().__init__()
        if config is not None and settings:
            raise TypeError("give either a config or its fields as keywords, not both")
        config = config if config is not None else AgentConfig(**settings)
        self.config, self.runs, self.obs_dim, self.act_dim = config, config.runs, obs_dim, act_dim
        lams = [float(x) for x in config.per_run("lam")]
        self.seeds = config.seeds()
        self.actor_kind = config.actor
        self.draws_policy = any(x > 0 for x in lams)  # a_π is needed (λ > 0 in some run)
        self.mixes = frozenset(m for m, x in zip(config.per_run("policy_mix"), lams) if x > 0)
        self.gamma = config.gamma

        # Each run's networks are initialised from its own seed, in the same order whatever the stack.
        gens = [torch.Generator().manual_seed(s) for s in self.seeds]
        self.critic = TwinQ(self.runs, obs_dim, act_dim, config.critic_hidden, generators=gens)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = ValueFunction(self.runs, obs_dim, config.critic_hidden, generators=gens)
        if config.actor == "gaussian":
            self.actor: nn.Module = GaussianActor(self.runs, obs_dim, act_dim, config.actor_hidden, config.actor_dropout,
                                                  generators=gens)
        else:
            self.actor = VelocityField(self.runs, obs_dim, act_dim, config.actor_hidden, config.label_embed_dim,
                                       generators=gens)
        self._register_run_values(config, lams)
        self._register_data_stats(obs_dim, act_dim)
        self.moments = nn.ModuleDict({name: AdamMoments(list(getattr(self, name).parameters())) for name in NETWORKS})
        rates = {"critic": config.critic_lr, "value": config.value_lr, "actor": config.actor_lr}
        self.optimizers = tuple(StackedAdam(getattr(self, n).parameters(), self.moments[n], lr=rates[n]) for n in NETWORKS)
        self.metric_names = self._metric_names()
        self.register_buffer("metric_sum", torch.zeros(self.runs, len(self.metric_names)), persistent=False)

        self.precision = plan_for(config.precision, config.bf16_parts)  # which parts multiply in bf16
        self.update_hooks: dict[str, UpdateHook] = {"target_ema": TargetEMAUpdate(config.target_update_rate)}
        self.buffer = None  # a TransitionBuffer on this device (`attach_data`)
        self.batch_size = 256
        self.schedule_total: int | None = None  # updates of the actor's cosine schedule (`plan`)
        self.failures: dict[int, str] = {}  # frozen runs (they diverged) → why
        self._read_at = 0  # the update count at the last metric read (host side: never inside the step)
        self._step_fn: AcceleratedStep | ResilientStep | None = None
        self.fast_failures: dict[str, str] = {}  # fast paths that failed in this process → why (`isep.fast_fallback`)

    def _register_run_values(self, config: AgentConfig, lams: list[float]) -> None:
        """Per-run settings as buffers shaped to broadcast over (R, B), the run keys and the counter."""
        r = self.runs
        floats = lambda name: torch.tensor([float(x) for x in config.per_run(name)])  # noqa: E731
        self.register_buffer("lam", torch.tensor(lams).view(r, 1))
        self.register_buffer("expectile", floats("expectile").view(r, 1))
        self.register_buffer("beta", floats("beta").view(r, 1))
        self.register_buffer("guidance", floats("guidance").view(r, 1, 1))
        # The a_π draw (flow actor): its guidance per run and, when every run's is 0 or 1, the one
        # branch each run needs (host-side facts from the config: the step specialises on them);
        # the same branches of the trained w, for `act`.
        draw_weights = config.draw_guidance()
        self.draw_steps = config.draw_steps()
        self.register_buffer("draw_guidance", torch.tensor(draw_weights).view(r, 1, 1), persistent=False)
        self.register_buffer("draw_labels", self._labels(draw_weights), persistent=False)
        self.register_buffer("act_labels", self._labels(config.per_run("guidance")), persistent=False)
        self.register_buffer("deterministic", torch.tensor([m == "deterministic" for m in config.per_run("policy_mix")]).view(r, 1))
        self.register_buffer("keys", run_keys(self.seeds))
        self.register_buffer("updates", torch.zeros((), dtype=torch.int64))  # updates done; keys the draws
        self.register_buffer("active", torch.ones(r, dtype=torch.bool))  # False: the run diverged, frozen

    def _register_data_stats(self, obs_dim: int, act_dim: int) -> None:
        """Statistics of the data (`set_data_stats`), kept so that they travel with the state."""
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        self.register_buffer("action_low", -torch.ones(act_dim))
        self.register_buffer("action_high", torch.ones(act_dim))
        self.register_buffer("q_bound", torch.tensor(float("inf")))  # max r / (1 - γ): the clip of Q̂(s, a_π)
        self.register_buffer("value_bound", torch.tensor(float("inf")))  # max |r| / (1 - γ): divergence

    def _metric_names(self) -> list[str]:
        names = ["value/loss", "v/mean", "v/max"]
        if self.draws_policy:
            names += ["q_pi/mean", "q_pi/minus_q_data"]
        names += ["adv/mean", "adv/std", "adv/positive_frac"]
        if self.actor_kind == "gaussian":
            names += ["actor/weight_mean", "actor/log_std_mean"]
        return names + ["actor/loss", "critic/loss", "q/mean", "q/max", "q/min", "lr_actor"]

    @staticmethod
    def _labels(weights: Sequence[float]) -> torch.Tensor | None:
        """(R, 1) long: each run's one sampler branch when every w is 0 or 1 (`one_branch_labels`)."""
        labels = one_branch_labels(weights)
        return None if labels is None else torch.tensor(labels).view(-1, 1)

    @property
    def device(self) -> torch.device:
        return self.updates.device

    # -- set-up ---------------------------------------------------------------------------------

    def set_data_stats(
        self, obs_mean: torch.Tensor | None = None, obs_std: torch.Tensor | None = None, max_reward: float = 1.0,
        max_abs_reward: float = 1.0, action_low: torch.Tensor | None = None, action_high: torch.Tensor | None = None,
    ) -> None:
        """The bounds of Q̂ (clip and divergence; from the data's rewards), the action bounds (the
        dataset's action space; ±1 when not given) and, optionally, the state statistics. These are
        the buffer's to give (`TransitionBuffer.normalized`; `attach_data` takes them from it):
        given here, they must be the buffer's, else `attach_data` refuses the pair."""
        if obs_mean is not None and obs_std is not None:
            self.obs_mean.copy_(torch.as_tensor(obs_mean))
            self.obs_std.copy_(torch.as_tensor(obs_std))
        if action_low is not None and action_high is not None:
            self.action_low.copy_(torch.as_tensor(action_low))
            self.action_high.copy_(torch.as_tensor(action_high))
        self._sync_bounds()
        horizon = 1 / (1 - self.gamma) if self.gamma < 1 else float("inf")
        self.q_bound.fill_(float(max_reward) * horizon)
        self.value_bound.fill_(max(float(max_abs_reward), 1e-6) * horizon)

    def _sync_bounds(self) -> None:
        """The Gaussian actor's mean spans the action bounds (the flow sampler clips to them)."""
        if self.actor_kind == "gaussian":
            self.actor.set_bounds(self.action_low, self.action_high)

    def attach_data(self, buffer, batch_size: int) -> None:
        """The dataset the update draws its batches from (a `TransitionBuffer` on this device), and
        its state statistics for `act()`; anything else, fields of other shapes than the agent's,
        or statistics that disagree with the buffer's, is a one-line `ConfigError`."""
        from isep.data.buffer import adopt_statistics, check_buffer

        check_buffer(buffer, self.obs_dim, self.act_dim, batch_size)
        mean, std = adopt_statistics(buffer, self.obs_mean, self.obs_std)  # act() sees the states training saw
        self.obs_mean.copy_(mean)
        self.obs_std.copy_(std)
        self.buffer, self.batch_size = buffer, int(batch_size)
        self.reset_step()

    def plan(self, total_updates: int | None) -> None:
        """The training length: the actor's cosine schedule (IQL) decays over it; None = no schedule."""
        cosine = self.config.actor_lr_schedule == "cosine"
        self.schedule_total = int(total_updates) if cosine and total_updates else None
        self.reset_step()

    def set_precision(self, precision: str = "32-true", parts: str | None = None) -> None:
        """Run the update, validation and the policy in `precision` (`32-true`, `bf16-mixed`) with
        the bf16 rule `parts` (`isep.precision`; default: the config's). Weights, moments, targets
        and losses stay float32, so a run can change precision between two updates."""
        self.precision = plan_for(precision, parts or self.config.bf16_parts)
        self.reset_step()

    def set_update_hook(self, name: str, hook: UpdateHook | None) -> None:
        """Install (or with None remove) per-update work run at the end of every update, inside the
        compiled / captured step (`isep.agent.hooks`); `target_ema` is the target critics' EMA."""
        if hook is None:
            self.update_hooks.pop(name, None)
        else:
            self.update_hooks[name] = hook
        self.reset_step()

    # -- the update -------------------------------------------------------------------------------

    def actor_lr_factor(self) -> torch.Tensor | float:
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
        critic_opt, value_opt, actor_opt = self.optimizers
        count = (self.updates + 1).to(torch.float32)
        lr_factor = self.actor_lr_factor()
        # Masks only once a run is frozen (a host-side fact: the compiled step specialises on it).
        active, twins = (self.active, twin_active(self.active)) if self.failures else (None, None)
        targets = self.targets(batch, draws)
        v_loss, info = self.value_loss(batch, targets, draws)
        self._descend(value_opt, v_loss, count, 1.0, active)
        a_loss, a_info = self.actor_loss(batch, targets, draws)
        self._descend(actor_opt, a_loss, count, lr_factor, active)
        c_loss, c_info = self.critic_loss(batch)
        self._descend(critic_opt, c_loss, count, 1.0, twins)
        lr = actor_opt.param_groups[0]["lr"] * lr_factor
        lr = lr.expand(self.runs) if torch.is_tensor(lr) else torch.full((self.runs,), lr, device=self.device)
        return {**info, **a_info, **c_info, "lr_actor": lr}

    def train_step(self) -> None:
        """One update of every run: a batch drawn on the device, V → actor → twin Q, the per-update
        hooks (the target EMA), metric sums and the update counter. What the fast path captures."""
        if self.buffer is None:
            raise RuntimeError("attach_data(buffer, batch_size) before training")
        draws = Draws(self.keys, self.updates)
        info = self.update(self.buffer.sample(draws, self.batch_size), draws)
        for hook in self.update_hooks.values():
            hook(self)
        with torch.no_grad():
            self.metric_sum.add_(torch.stack([info[k].float() for k in self.metric_names], -1))
            self.updates.add_(1)

    def step_function(self, mode: Mode = "eager", fallback: bool = False, check: bool = False,
                      report: Callable[[str], None] = print) -> Callable[[], None]:
        """`train_step` as `mode` runs it (`isep.fast`: eager, compile, graph); built once, captured
        lazily, rebuilt after anything that changes what the step does (hooks, data, a frozen run).
        `check`: compare the path once with the eager update; `fallback`: on a failure of the path
        (building, running or the check) go one step down graph → compile → eager and `report` it,
        else raise `FastPathError` (`isep.fast_fallback`)."""
        built = self._step_fn
        if built is None or getattr(built, "requested", built.mode) != mode:
            if fallback or check:
                self._step_fn = ResilientStep(self, mode, explicit=not fallback, check=check,
                                              low_precision=self.precision.name != "32-true" or torch.backends.cuda.matmul.allow_tf32,
                                              report=report)
            else:
                self._step_fn = AcceleratedStep(self.train_step, mode)
        return self._step_fn

    def reset_step(self) -> None:
        self._step_fn = None

    def read_metrics(self) -> list[dict[str, float]]:
        """Each run's metrics averaged over the updates since the last read (the one host sync of
        training); empty when no update ran since."""
        done = int(self.updates)
        if done <= self._read_at:
            return []
        means = (self.metric_sum / (done - self._read_at)).tolist()
        self.metric_sum.zero_()
        self._read_at = done
        return [dict(zip(self.metric_names, row)) for row in means]

    def freeze(self, run: int, reason: str) -> None:
        """Stop run `run` (it diverged): its parameters and targets stop moving, the others go on."""
        self.failures[run] = reason
        self.active[run] = False
        self.reset_step()  # the step now masks the frozen run: compile / capture it again

    # -- state: one run out of a stack; what the state_dict carries besides tensors --------------

    def select_run(self, run: int) -> "ISEPAgent":
        """Run `run` of the stack as an agent of its own (R = 1): its settings, weights, targets,
        moments, statistics and update count; what a separate run would have been."""
        if not 0 <= run < self.runs:
            raise IndexError(f"run {run} out of range: this agent holds {self.runs} runs (0..{self.runs - 1})")
        single = ISEPAgent(self.obs_dim, self.act_dim, self.config.select(run))
        state = {}
        for name, tensor in self.state_dict().items():
            network = name.split(".")[1] if name.startswith("moments.") else name.split(".")[0]
            if network in ("critic", "target_critic"):
                state[name] = tensor[2 * run : 2 * run + 2]
            elif network in ("value", "actor") or name in PER_RUN_BUFFERS:
                state[name] = tensor[run : run + 1]
            elif name == "_extra_state":
                state[name] = {**tensor, "failures": {0: tensor["failures"][run]} if run in tensor["failures"] else {}}
            else:
                state[name] = tensor
        single.load_state_dict(state)
        return single.to(self.device)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As `nn.Module.load_state_dict`, but a state trained with other per-run settings (λ, τ, β,
        w, policy_mix) is refused with each difference named: the agent's config would otherwise
        disagree with the values it computes with. Build the agent with the state's settings."""
        differences = []
        for name in ("lam", "expectile", "beta", "guidance", "deterministic"):
            theirs, mine = state_dict.get(name), getattr(self, name)
            if torch.is_tensor(theirs) and theirs.shape == mine.shape and not torch.equal(theirs.to(mine.device), mine):
                shown = lambda t: [round(float(v), 6) for v in t.flatten().tolist()]  # noqa: E731
                differences.append(f"{name} {shown(theirs)} in the state, {shown(mine)} here")
        if differences:
            raise ConfigError("the state was trained with other settings than this agent's: " + "; ".join(differences)
                              + " (build the agent with the state's settings)")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def get_extra_state(self) -> dict:
        return {"failures": dict(self.failures), "schedule_total": self.schedule_total,
                "precision": self.precision.name, "bf16_parts": self.precision.parts}

    def set_extra_state(self, state: dict) -> None:
        self.failures = {int(k): v for k, v in state.get("failures", {}).items()}
        self.schedule_total = state.get("schedule_total")
        self.precision = plan_for(state.get("precision", "32-true"), state.get("bf16_parts", "safe"))
        self._sync_bounds()  # (the action bounds were loaded with the buffers, before this)
        self._read_at = int(self.updates)  # (loaded before the extra state) metrics count from here
        self.metric_sum.zero_()
        self.reset_step()  # a captured graph would point at the tensors the load replaces
