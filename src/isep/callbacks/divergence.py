"""`DivergenceGuard`: stop a run whose values blow up, before the blown-up state is saved.

At λ > 0 the value can grow without bound while staying finite (DESIGN.md §1: V ≈ 1e11 after
500k updates at λ = 0.5), so a NaN check alone never fires. Each time the runs' averaged training
metrics reach the host (`ISEPModule.flush_metrics`, every `log_every` updates, before anything is
logged or checkpointed) this checks every live run for a non-finite metric, or |Q|, |V| or
|Q̂(s, a_π)| beyond `factor` × max |r| / (1 − γ). A lone run then stops with `DivergenceError`
(the last checkpoint before the step stays, the CLI prints the message, the MLflow run is marked
FAILED); in a stack the run is frozen, its MLflow record marked FAILED with the reason, and the
others go on (all frozen: the fit stops). Every callback with an `on_run_diverged(trainer,
module, run, reason)` method hears of it.
"""

from __future__ import annotations

import math

import lightning as L

from isep.callbacks.tracking import record_failures
from isep.errors import DivergenceError

WATCHED = ("q/", "v/", "q_pi/mean")  # metrics whose size is bounded by the largest possible return


class DivergenceGuard(L.Callback):
    """Stop a run whose values blow up (a non-finite metric, or |Q|, |V| beyond the bound).

    Args:
        factor: the bound's multiple of max |r| / (1 − γ); default the model's `divergence_factor`.
    """

    def __init__(self, factor: float | None = None) -> None:
        super().__init__()
        self.factor = factor

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        record_failures(pl_module)  # a resumed stack: its frozen runs stay failed

    def problems(self, pl_module: L.LightningModule, metrics: dict[str, float]) -> list[str]:
        """A non-finite metric, or |Q|, |V| far beyond the largest possible return."""
        factor = self.factor if self.factor is not None else pl_module.divergence_factor
        limit = factor * float(pl_module.agent.value_bound)
        bad = [f"{k} = {v}" for k, v in metrics.items() if not math.isfinite(v)]
        bad += [f"{k} = {v:.3g} (beyond {limit:.3g} = {factor:g} × max|r|/(1 − γ))"
                for k, v in metrics.items() if k.startswith(WATCHED) and math.isfinite(v) and abs(v) > limit]
        return bad

    def on_train_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule, per_run: list[dict[str, float]]) -> None:
        agent = pl_module.agent
        for run, metrics in enumerate(per_run):
            if run in agent.failures:
                continue
            problems = self.problems(pl_module, metrics)
            if problems:
                self.diverged(trainer, pl_module, run, problems)

    def diverged(self, trainer: L.Trainer, pl_module: L.LightningModule, run: int, problems: list[str]) -> None:
        """Alone, a run stops training; in a stack it is frozen and the others go on."""
        agent = pl_module.agent
        lam = float(agent.lam[run])
        message = (
            f"training diverged at step {trainer.global_step} with λ = {lam:g}: {'; '.join(problems)}. "
            "The paper reports divergence for λ ≥ 0.7; try a smaller --model.lam or --model.clip_policy_q true."
        )
        reason = message if agent.runs == 1 else f"run {run} (seed {agent.seeds[run]}): {message}"
        for callback in trainer.callbacks:
            hook = getattr(callback, "on_run_diverged", None)
            if hook is not None:
                hook(trainer, pl_module, run, reason)
        if agent.runs == 1:
            raise DivergenceError(message + " The last checkpoint before this step is kept.")
        agent.freeze(run, reason)
        record_failures(pl_module)
        if len(agent.failures) == agent.runs:
            raise DivergenceError("every run of the stack diverged: " + " | ".join(agent.failures.values()))
