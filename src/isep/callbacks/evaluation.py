"""`RolloutEvaluation`: the D4RL normalized score (or a toy bandit's expected reward) during training."""

from __future__ import annotations

import json
import time
from pathlib import Path

import lightning as L
import torch

from isep.evaluation import NormalizedScore, check_spaces, make_env_fn, rollout, toy_expected_reward


class RolloutEvaluation(L.Callback):
    """Every `every` epochs and at the end of training, roll out the actor's `act` in vectorized envs.

    Logs `eval/return_mean`, `eval/return_std`, `eval/normalized_score` (D4RL's reference returns)
    and `eval/score` (the normalized score, or a toy bandit's `eval/expected_reward`, which
    checkpoints rank by), plus `eval/env_steps_per_s`; keeps the per-episode returns in
    `history` and in `<run dir>/eval_returns.jsonl`. Episode i uses seed `seed + i`. The global
    RNG is forked around evaluation, so evaluating never changes what training draws.

    Args:
        every: epochs between evaluations (0 = never, not even at the end).
        episodes: episodes per evaluation; default the task's (20 Gym-MuJoCo, 50 Adroit/Kitchen).
        num_envs: synchronous envs stepped together (one batched `act` call per step).
        seed: seed of the first episode.
        env_id: override the evaluation env (default: the dataset's, else the registry's).
        max_episode_steps: cap episode length (default: the env's own time limit).
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
        dm = trainer.datamodule
        if getattr(dm, "toy", None) is not None:
            return
        dataset_id = dm.minari_ids[0] if dm.minari_ids else None
        self.prepare(self.env_id or dm.env_id, None if self.env_id else dataset_id, dm.obs_keys,
                     pl_module.hparams.obs_dim, pl_module.hparams.act_dim)
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
        dm = trainer.datamodule
        start = time.perf_counter()
        with torch.random.fork_rng(devices=[pl_module.device] if pl_module.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            if getattr(dm, "toy", None) is not None:
                reward = toy_expected_reward(pl_module, dm.toy)
                metrics = {"eval/expected_reward": reward, "eval/score": reward}
                record = dict(metrics)
            else:
                metrics, record = self.rollouts(pl_module, dm.ref_scores)
        metrics["eval/seconds"] = time.perf_counter() - start
        # To the loggers at step = updates done (as the training metrics); `eval/score` also to
        # Lightning's callback metrics, which the best-checkpoint callback ranks by.
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        pl_module.log("eval/score", metrics["eval/score"], on_step=False, on_epoch=True, prog_bar=True, logger=False)
        record = {"step": trainer.global_step, **record}
        self.history.append(record)
        self._last_evaluated_step = trainer.global_step
        self._write(trainer, record)
        return record

    def rollouts(self, pl_module: L.LightningModule, ref_scores: tuple[float, float] | None) -> tuple[dict, dict]:
        """`episodes` rollouts of the module's policy (after `prepare`): metrics and the episode record."""
        from isep.data.minari_source import flatten_observations

        policy = lambda obs: pl_module.act(obs, guidance=self.guidance).cpu().numpy()  # noqa: E731
        flatten = lambda obs: flatten_observations(obs, self._obs_space)  # noqa: E731
        t0 = time.perf_counter()
        result = rollout(policy, self._env_fn, self.episodes, self.seed, self.num_envs, flatten)
        elapsed = time.perf_counter() - t0
        metrics = {
            "eval/return_mean": float(result.returns.mean()),
            "eval/return_std": float(result.returns.std()),
            "eval/env_steps_per_s": result.env_steps / elapsed,
        }
        if ref_scores is not None:
            score = NormalizedScore(*ref_scores)
            score.update(torch.as_tensor(result.returns))
            metrics["eval/normalized_score"] = float(score.compute())
            metrics["eval/score"] = metrics["eval/normalized_score"]
        else:
            metrics["eval/score"] = metrics["eval/return_mean"]
        record = {"returns": result.returns.tolist(), "seeds": result.seeds, **metrics}
        return metrics, record

    def _write(self, trainer: L.Trainer, record: dict) -> None:
        path = Path(trainer.default_root_dir) / "eval_returns.jsonl"
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

