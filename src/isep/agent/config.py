"""`AgentConfig`: the hyper-parameters of ISEP / ISEP-FM, checked once, with per-run values for stacks.

The defaults are IQL's and CFGRL's public code where the paper is silent (DESIGN.md §1); the task
configs (`configs/*.yaml`) set Appendix C's λ, τ and β or w per task.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Sequence

from isep.errors import ConfigError

Actor = Literal["gaussian", "flow"]
# How the actor's targets combine a and a_π (Eqs. 5-6, Appendix B): a Bernoulli(λ) selection, the
# interpolated target ā (one term at ā, the Figure 7 baseline), or Eq. 26's weighted sum of the
# two log-likelihood terms.
PolicyMix = Literal["stochastic", "deterministic", "weighted_sum"]
POLICY_MIXES = ("stochastic", "deterministic", "weighted_sum")
# The fields a stack of runs may vary (one value per run); `seed` is the run's seed.
STACK_FIELDS = ("lam", "expectile", "beta", "guidance", "policy_guidance", "policy_mix", "seed")
# The a_π draw's guidance lies in this range (w = 10 already extrapolates far past the data).
POLICY_GUIDANCE_RANGE = (0.0, 10.0)


def stack_length(values: dict[str, Any]) -> int:
    """R: the common length of the lists among `values` (per-run settings; 1 when none is a list)."""
    sizes = {len(v) for v in values.values() if isinstance(v, (list, tuple))}
    if len(sizes) > 1:
        listed = ", ".join(f"{k}: {len(v)}" for k, v in values.items() if isinstance(v, (list, tuple)))
        raise ConfigError(f"per-run lists must have one length (the number of runs); got {listed}")
    size = sizes.pop() if sizes else 1
    if size < 1:
        raise ConfigError("a per-run list is empty: give at least one value")
    return size


def _per_run(name: str, value: Any, runs: int) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * runs
    if len(values) != runs:
        raise ConfigError(f"model.{name} has {len(values)} values but the stack has {runs} runs")
    return values


@dataclass
class AgentConfig:
    """ISEP's settings. `lam`, `expectile`, `beta`, `guidance`, `policy_mix` and `seed` take one
    value per run (lists of one length R train R runs in one agent) or one value for all.

    Args:
        actor: `gaussian` (ISEP; IQL at λ = 0) or `flow` (ISEP-FM; CFGRL at λ = 0).
        lam: λ ∈ [0, 1), the policy's share in the value target (Eq. 2) and in the actor's targets (Eqs. 5-6).
        expectile: τ of the expectile loss (Eq. 2; IQL's expectile).
        beta: AWR inverse temperature β of the Gaussian actor (Eq. 5); 0 with λ = 0 is BC.
        guidance: classifier-free guidance weight w of the flow actor (Eq. 7).
        policy_guidance: guidance w of the training-time a_π draw (None: the trained `guidance`). The
            paper says only "sampled from the current policy" (Eqs. 2, 5-6). At 1 (the + branch
            alone) or 0 (∅ alone) the sampler runs one branch: half the products.
        policy_flow_steps: Euler steps of the training-time a_π draw (None: `flow_steps`).
        policy_mix: how the actor's targets combine a and a_π: `stochastic` (a Bernoulli(λ) selection,
            Eq. 5), `deterministic` (one term at ā = (1 − λ)a + λa_π, Figure 7's baseline) or
            `weighted_sum` (Eq. 26: both terms, weighted 1 − λ and λ).
        seed: the run's initial weights and every draw of its updates (default: the global seed).
        flow_steps: Euler steps of the flow sampler (FQL: 10, CFGRL: 16).
        value_policy_loss: ℓ of Eq. 2's policy term, `mse` or `expectile`. Neither has Appendix A's
            fixed point V = (1 − λ)·expectile_τ(Q̂|D) + λ·E_π[Q̂]: with `mse` V solves
            (1 − λ)·E_D[|τ − 1(Q̂ < V)|·(Q̂ − V)] + λ·E_π[Q̂ − V] = 0 (a mean in which the data's Q̂
            weigh τ above V and 1 − τ below it, the policy's 1); with `expectile` V is the
            τ-expectile of the mixture (1 − λ)·Q̂|D + λ·Q̂|π. (Q̂|D uniform on {0, 0.5, 1, 1.5, 2},
            Q̂|π on {1, 1.5}, λ 0.5, τ 0.8: Appendix A's formula 1.330, mse 1.299, expectile 1.404; tested.)
        value_mix: `expectation` ((1 − λ)·data term + λ·policy term) or `bernoulli` (a per-sample
            Bernoulli(λ) gate between the terms, Section 5.3; same expectation).
        clip_policy_q: clip Q̂(s, a_π) at max r / (1 − γ) (Appendix A: "crop Q if it ever exceeds the bound").
        gamma: the discount (IQL: 0.99).
        target_update_rate: EMA rate of the target critics (IQL: 0.005); a `TargetEMA` callback's rate wins.
        critic_hidden: hidden widths of the twin critics and of V (IQL: 256, 256).
        actor_hidden: hidden widths of the actor (default: IQL's 256×2 Gaussian, CFGRL's 512×4 flow field).
        actor_dropout: dropout in the Gaussian actor (IQL: 0.1 on Adroit/Kitchen).
        label_dropout: probability of replacing the optimality token by ∅ (CFGRL: 0.1).
        label_embed_dim: size of the optimality-token embedding (CFGRL: 32).
        critic_lr: Adam learning rate of the twin critics (IQL: 3e-4).
        value_lr: Adam learning rate of V (IQL: 3e-4).
        actor_lr: Adam learning rate of the actor (IQL, CFGRL: 3e-4).
        actor_lr_schedule: `cosine` decay of the actor's rate over training (IQL) or `constant` (CFGRL).
        max_weight: cap of the AWR weights (IQL: 100).
        precision: `32-true` or `bf16-mixed` (`isep fit` takes it from `--trainer.precision`).
        bf16_parts: under bf16-mixed, which parts multiply in bf16 (`isep.precision`): `safe` (all but
            the heads of the critics and V), `sampler` (only the a_π sampler) or `all`.
    """

    actor: Actor = "flow"
    lam: float | list[float] = 0.0
    expectile: float | list[float] = 0.7
    beta: float | list[float] = 3.0
    guidance: float | list[float] = 1.0
    policy_guidance: float | None | list[float | None] = None
    policy_mix: PolicyMix | list[PolicyMix] = "stochastic"
    seed: int | list[int] | None = None
    flow_steps: int = 10  # FQL: 10, CFGRL: 16
    policy_flow_steps: int | None = None
    value_policy_loss: Literal["mse", "expectile"] = "mse"
    value_mix: Literal["expectation", "bernoulli"] = "expectation"
    clip_policy_q: bool = False
    gamma: float = 0.99  # IQL
    target_update_rate: float = 0.005  # IQL's EMA rate of the target critics
    critic_hidden: Sequence[int] = (256, 256)  # IQL
    actor_hidden: Sequence[int] | None = None  # None: IQL's (256, 256) / CFGRL's (512,) * 4
    actor_dropout: float = 0.0  # IQL: 0.1 on Adroit/Kitchen
    label_dropout: float = 0.1  # CFGRL
    label_embed_dim: int = 32  # CFGRL
    critic_lr: float = 3e-4
    value_lr: float = 3e-4
    actor_lr: float = 3e-4
    actor_lr_schedule: Literal["cosine", "constant"] = "cosine"  # IQL: cosine decay of the actor
    max_weight: float = 100.0  # IQL's cap of the AWR weights
    precision: str = "32-true"
    bf16_parts: Literal["safe", "sampler", "all"] = "safe"
    runs: int = field(init=False)

    def __post_init__(self) -> None:
        self.runs = stack_length({f: getattr(self, f) for f in STACK_FIELDS})
        self._check()
        if self.actor_hidden is None:
            self.actor_hidden = (256, 256) if self.actor == "gaussian" else (512, 512, 512, 512)
        if self.seed is None:
            import torch

            self.seed = torch.initial_seed()

    def _check(self) -> None:
        lams, taus, mixes = self.per_run("lam"), self.per_run("expectile"), self.per_run("policy_mix")
        if not all(0.0 <= float(x) < 1.0 for x in lams):  # NaN fails too
            raise ConfigError(f"model.lam must lie in [0, 1) (the paper's λ), got {self.lam}")
        if not all(0.0 < float(x) < 1.0 for x in taus):
            raise ConfigError(f"model.expectile must lie in (0, 1), got {self.expectile}")
        if not set(mixes) <= set(POLICY_MIXES):
            raise ConfigError(f"model.policy_mix must be one of {', '.join(POLICY_MIXES)}, got {self.policy_mix}")
        if "weighted_sum" in mixes and self.runs > 1 and (set(mixes) != {"weighted_sum"} or min(map(float, lams)) == 0):
            raise ConfigError("policy_mix weighted_sum doubles the actor's batch (one row per term of Eq. 26), so a "
                              "stack holding it must hold only weighted_sum runs with λ > 0: train the others apart")
        if self.actor not in ("gaussian", "flow"):
            raise ConfigError(f"model.actor must be 'gaussian' or 'flow', got {self.actor!r}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 < self.target_update_rate <= 1.0:
            raise ConfigError("model.gamma must lie in [0, 1] and model.target_update_rate in (0, 1]")
        if self.flow_steps < 1 or (self.policy_flow_steps is not None and self.policy_flow_steps < 1):
            raise ConfigError(f"model.flow_steps and model.policy_flow_steps must be at least 1, got "
                              f"{self.flow_steps}, {self.policy_flow_steps}")
        low, high = POLICY_GUIDANCE_RANGE
        if not all(w is None or low <= float(w) <= high for w in self.per_run("policy_guidance")):
            raise ConfigError(f"model.policy_guidance must lie in [{low:g}, {high:g}] (or be null: the trained "
                              f"guidance), got {self.policy_guidance}")
        if not all(math.isfinite(float(x)) and float(x) >= 0 for x in self.per_run("beta") + self.per_run("guidance")):
            raise ConfigError(f"model.beta and model.guidance must be finite and ≥ 0, got {self.beta}, {self.guidance}")

    @classmethod
    def fields(cls) -> list[str]:
        """The settings' names (what `ISEPModule` passes on from its hyper-parameters)."""
        return [f.name for f in fields(cls) if f.init]

    def per_run(self, name: str) -> list:
        """The value of `name` for each of the `runs` runs."""
        return _per_run(name, getattr(self, name), self.runs)

    def draw_guidance(self) -> list[float]:
        """Per run, the guidance of the a_π draw: `policy_guidance`, else the trained `guidance`."""
        return [float(w if w is not None else g) for w, g in zip(self.per_run("policy_guidance"), self.per_run("guidance"))]

    def draw_steps(self) -> int:
        """Euler steps of the a_π draw: `policy_flow_steps`, else `flow_steps`."""
        return self.policy_flow_steps or self.flow_steps

    def seeds(self) -> list[int]:
        return [int(s) for s in self.per_run("seed")]

    def select(self, run: int) -> "AgentConfig":
        """The settings of run `run` alone (R = 1)."""
        values = {name: getattr(self, name) for name in self.fields()}
        for name in STACK_FIELDS:
            values[name] = self.per_run(name)[run]
        return AgentConfig(**values)

    def as_dict(self) -> dict:
        out = asdict(self)
        out.pop("runs")
        return out
