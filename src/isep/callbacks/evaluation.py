"""`RolloutEvaluation`: the D4RL normalized score (or a toy bandit's expected reward) during training."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch

from isep.envs import make_env_fn
from isep.evaluation import NormalizedScore, check_spaces, rollout, toy_expected_reward


class RolloutEvaluation(L.Callback):
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
        every: int = 10,
        episodes: int | None = None,
        num_envs: int = 10,
        seed: int = 100_000,
        env_id: str | None = None,
        max_episode_steps: int | None = None,
        guidance: float | None = None,
    ) -> None:
        super().__init__()
        self.every, self.episodes, self.num_envs, self.seed = every, episodes, num_envs, seed
        self.env_id, self.max_episode_steps, self.guidance = env_id, max_episode_steps, guidance
        self.history: list[dict] = []
        self._env_fn = None
        self._obs_space = None
        self._last_evaluated_step = -1

    # -- set-up: fail at the start of training, not after hours --------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self.every <= 0:
            return
        self.prepare_for(trainer.datamodule, pl_module.hparams.obs_dim, pl_module.hparams.act_dim)

    def prepare_for(self, dm, obs_dim: int, act_dim: int) -> None:
        """Set up the evaluation of a model on `dm`'s task: its env (`env_id`, else the dataset's own
        evaluation env, else the registry's) and its number of episodes (the task's, else 20).
        Nothing to set up for a toy bandit (its expected reward is exact)."""
        if getattr(dm, "toy", None) is not None:
            return
        dataset_id = dm.minari_ids[0] if dm.minari_ids else None
        self.prepare(self.env_id or dm.env_id, None if self.env_id else dataset_id, dm.obs_keys, obs_dim, act_dim)
        if self.episodes is None:
            self.episodes = dm.task.eval_episodes if dm.task is not None else 20

    def prepare(self, env_id: str | None, dataset_id: str | None, obs_keys: list[str] | None, obs_dim: int, act_dim: int) -> None:
        """Build the env factory (the dataset's own evaluation env, else `env_id`) and check that
        its spaces fit the model; fails at once with the fix."""
        self._env_fn = make_env_fn(env_id, dataset_id, self.max_episode_steps)
        self._obs_space = check_spaces(self._env_fn, obs_keys, obs_dim, act_dim)

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
        per_run = self.measure(pl_module, trainer.datamodule)
        seconds = time.perf_counter() - start
        step = trainer.global_step
        metrics = [{**m, "eval/seconds": seconds} for m, _ in per_run]
        # To each run's loggers at step = updates done (as the training metrics); `eval/score`
        # (the mean over the runs still training) also to Lightning's callback metrics, which the
        # best-checkpoint callback ranks by.
        pl_module.log_runs(metrics, step=step)
        live = [m["eval/score"] for r, m in enumerate(metrics) if r not in pl_module.failures] or [metrics[0]["eval/score"]]
        score = sum(live) / len(live)
        pl_module.log("eval/score", score, on_step=False, on_epoch=True, prog_bar=True, logger=False)
        records = [{"step": step, **record} for _, record in per_run]
        for folder, record in zip(pl_module.run_routes().folders, records):
            self._write(folder, record)
        summary = records[0] if len(records) == 1 else {"step": step, "eval/score": score, "runs": records}
        self.history.append(summary)
        self._last_evaluated_step = step
        return summary

    def measure(self, pl_module: L.LightningModule, dm) -> list[tuple[dict, dict]]:
        """Per run: its metrics and its record. A toy bandit's exact expected reward of the policy's
        samples, else `rollouts` (after `prepare_for`). Noise from generators seeded with `seed`."""
        if getattr(dm, "toy", None) is None:
            return self.rollouts(pl_module, dm.ref_scores)
        rewards = toy_expected_reward(pl_module, dm.toy, guidance=self.guidance, generators=pl_module.generators(self.seed))
        return [({"eval/expected_reward": r, "eval/score": r}, {"eval/expected_reward": r, "eval/score": r}) for r in rewards]

    def rollouts(self, pl_module: L.LightningModule, ref_scores: tuple[float, float] | None) -> list[tuple[dict, dict]]:
        """`episodes` rollouts of each run's policy (after `prepare`), all runs stepped in one vector
        of envs: per run, its metrics and its episode record."""
        from isep.data.minari_source import flatten_observations

        runs = pl_module.runs
        generators = pl_module.generators(self.seed)  # the policy's noise: each run's own stream

        def policy(obs):
            if runs > 1:
                obs = obs.reshape(runs, -1, obs.shape[-1])
            actions = pl_module.act(obs, guidance=self.guidance, generators=generators)
            return actions.reshape(-1, pl_module.hparams.act_dim).cpu().numpy()

        flatten = lambda obs: flatten_observations(obs, self._obs_space)  # noqa: E731
        t0 = time.perf_counter()
        results = rollout(policy, self._env_fn, self.episodes, self.seed, self.num_envs, flatten, runs)
        steps_per_s = sum(r.env_steps for r in results) / (time.perf_counter() - t0)
        out = []
        for result in results:
            metrics = {
                "eval/return_mean": float(result.returns.mean()),
                "eval/return_std": float(result.returns.std()),
                "eval/env_steps_per_s": steps_per_s,
            }
            if ref_scores is not None:
                score = NormalizedScore(*ref_scores)
                score.update(torch.as_tensor(result.returns))
                metrics["eval/normalized_score"] = float(score.compute())
                metrics["eval/score"] = metrics["eval/normalized_score"]
            else:
                metrics["eval/score"] = metrics["eval/return_mean"]
            out.append((metrics, {"returns": result.returns.tolist(), "seeds": result.seeds, **metrics}))
        return out

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
