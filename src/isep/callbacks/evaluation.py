"""`RolloutEvaluation`: the D4RL normalized score (or a toy bandit's expected reward) during training.

What is measured is `isep.evaluation.Evaluator` (no Lightning: a plain loop and `isep evaluate` use
it too); this callback decides when, and sends the results to each run's loggers and folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L

from isep.callbacks.tracking import log_runs, run_routes
from isep.evaluation import Evaluator
from isep.params import NonNegativeFloat, NonNegativeInt, PositiveInt


class RolloutEvaluation(Evaluator, L.Callback):
    """Every `every` epochs and at the end of training, roll out the actor's `act` in vectorized envs.

    Logs `eval/return_mean`, `eval/return_std`, `eval/normalized_score` (D4RL's reference returns)
    and `eval/score` (the normalized score, or a toy bandit's `eval/expected_reward`, which
    checkpoints rank by), plus `eval/env_steps_per_s`; keeps the per-episode returns in
    `history` and in `<run dir>/eval_returns.jsonl`. Episode i uses seed `seed + i`, and the
    policy's noise comes from a generator seeded with `seed` (one per run of a stack: a stacked
    run is evaluated exactly as it would be alone); training's random numbers are untouched.
    A stack's runs step together in one vector of envs, each run's results to its own record.

    Args:
        every: epochs between evaluations (0 = never, not even at the end).
        episodes: episodes per evaluation; default the task's (20 Gym-MuJoCo, 50 Adroit/Kitchen).
        num_envs: synchronous envs stepped together (one batched `act` call per step).
        seed: seed of the first episode.
        env_id: override the evaluation env (default: the dataset's, else the registry's).
        max_episode_steps: cap episode length (default: D4RL's for the task, pen 100 and Kitchen 280
            steps, else the env's own time limit; `isep.envs`).
        guidance: guidance weight for the flow actor (default: the trained w).
    """

    def __init__(
        self,
        every: NonNegativeInt = 10,
        episodes: PositiveInt | None = None,
        num_envs: PositiveInt = 10,
        seed: int = 100_000,
        env_id: str | None = None,
        max_episode_steps: PositiveInt | None = None,
        guidance: NonNegativeFloat | None = None,
    ) -> None:
        Evaluator.__init__(self, episodes, num_envs, seed, env_id, max_episode_steps, guidance)
        self.every = every
        self.history: list[dict] = []
        self._last_evaluated_step = -1

    # -- set-up: fail at the start of training, not after hours --------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.every <= 0 or self._env_fn is not None:  # (`isep fit` prepared it already)
            return
        self.prepare_for(trainer.datamodule, pl_module.agent.obs_dim, pl_module.agent.act_dim)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A resumed run keeps the evaluation records up to its checkpoint (later ones, written before
        an interrupt, go: the resume writes them again), so the file reads like an uninterrupted run's.
        (Not `on_fit_start`: Lightning restores the step counter after it, and before this hook.)"""
        if trainer.global_step == 0:
            return
        for folder in run_routes(pl_module).folders:
            path = Path(folder) / "eval_returns.jsonl"
            if path.is_file():
                kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= trainer.global_step]
                path.write_text("".join(line + "\n" for line in kept))

    # -- when ----------------------------------------------------------------------------------

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every <= 0:
            return
        last = _is_last_epoch(trainer)
        if (trainer.current_epoch + 1) % self.every == 0 or last:
            self.evaluate(trainer, pl_module)

    # -- what ----------------------------------------------------------------------------------

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        if trainer.global_step == self._last_evaluated_step:
            return self.history[-1] if self.history else {}
        start = time.perf_counter()
        per_run = self.measure(pl_module.agent, trainer.datamodule)
        seconds = time.perf_counter() - start
        step = trainer.global_step
        metrics = [{**m, "eval/seconds": seconds} for m, _ in per_run]
        # To each run's loggers at step = updates done (as the training metrics); `eval/score`
        # (the mean over the runs still training) also to Lightning's callback metrics, which the
        # best-checkpoint callback ranks by.
        log_runs(pl_module, metrics, step=step)
        live = [m["eval/score"] for r, m in enumerate(metrics) if r not in pl_module.agent.failures] or [metrics[0]["eval/score"]]
        score = sum(live) / len(live)
        pl_module.log("eval/score", score, on_step=False, on_epoch=True, prog_bar=True, logger=False)
        records = [{"step": step, **record} for _, record in per_run]
        for folder, record in zip(run_routes(pl_module).folders, records):
            self._write(folder, record)
        summary = records[0] if len(records) == 1 else {"step": step, "eval/score": score, "runs": records}
        self.history.append(summary)
        self._last_evaluated_step = step
        return summary

    @staticmethod
    def _write(folder: Path, record: dict) -> None:
        path = Path(folder) / "eval_returns.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))


def _is_last_epoch(trainer: L.Trainer) -> bool:
    """True in the epoch where training stops (max_epochs reached, or max_steps reached)."""
    if trainer.max_steps is not None and trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return True
    return trainer.max_epochs is not None and trainer.max_epochs > 0 and trainer.current_epoch + 1 >= trainer.max_epochs


def planned_evaluations(every: int, max_epochs: int | None, max_steps: int | None, steps_per_epoch: int) -> int:
    """How many evaluations a fit makes (the rule of `on_train_epoch_end`): every `every` epochs
    and at the last one, whether `max_epochs` or `max_steps` ends the training."""
    if every <= 0:
        return 0
    ends = [max_epochs] if max_epochs is not None and max_epochs > 0 else []
    if max_steps is not None and max_steps > 0:
        ends.append(-(-max_steps // steps_per_epoch))
    if not ends:
        return 0
    epochs = min(ends)
    return -(-epochs // every)
