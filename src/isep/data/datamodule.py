"""`D4RLDataModule`: D4RL task names, Minari ids or toy bandits → a device-resident transition buffer."""

from __future__ import annotations

from typing import Literal

import lightning as L
import numpy as np
import torch

from isep.data.buffer import FixedBatches, TransitionBuffer, UpdateClock, state_normalizer
from isep.data.minari_source import (
    DatasetError,
    ResolvedDataset,
    ensure_available,
    env_id_of,
    load_transitions,
    resolve,
    select_keys,
)
from isep.data.registry import RewardTransform, TaskSpec, default_reward_transform
from isep.data.toy import TOY_BANDITS
from isep.params import PositiveInt
from isep.data.transitions import Transitions, reward_scale
from isep.rng import Draws, run_keys

VAL_SEED = 12345  # validation/test batches are the same for every run and every call


def action_bounds(space) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(low, high) of a Box action space, float32 as the actions are stored; ±1 where unbounded."""
    low = np.where(np.isfinite(space.low), space.low, -1.0).astype(np.float32).reshape(-1)
    high = np.where(np.isfinite(space.high), space.high, 1.0).astype(np.float32).reshape(-1)
    return tuple(low.tolist()), tuple(high.tolist())


class D4RLDataModule(L.LightningDataModule):
    """Offline RL data for `ISEPModule`.

    Args:
        dataset: a D4RL task name of the paper (`walker2d-medium-v2`), a Minari id
            (`mujoco/walker2d/medium-v0`), a toy bandit (`toy/sparse-optimum`, `toy/danger-zone`),
            or a list of Minari ids combined row-wise (medium-expert = medium + expert).
        batch_size: transitions per gradient step and run (paper: 256).
        steps_per_epoch: gradient steps per epoch (paper: 1000).
        normalize_states: standardize states with the dataset's mean/std; the statistics are
            copied into the model, so they travel with its checkpoint.
        reward_transform: `auto` = IQL's `r * 1000 / (max - min episode return)` for locomotion,
            raw rewards elsewhere.
        obs_keys: for dict observations (Kitchen), the keys to keep, flattened in this order;
            all keys when unset.
        download: let Minari download a dataset missing from the local store.
        toy_size: size of a toy bandit's dataset (transitions).
        toy_seed: seed of a toy bandit's dataset.
        val_batches: batches in the (fixed) validation/test set.

    Training batches are drawn by the model's update itself, on the device, from the buffer this
    module builds (each run from its own seed); Lightning iterates over an `UpdateClock`.
    """

    def __init__(
        self,
        dataset: str | list[str] = "toy/sparse-optimum",
        batch_size: PositiveInt = 256,
        steps_per_epoch: PositiveInt = 1000,
        normalize_states: bool = False,
        reward_transform: Literal["auto", "iql_locomotion", "none"] = "auto",
        obs_keys: list[str] | None = None,
        download: bool = False,
        toy_size: PositiveInt = 10_000,
        toy_seed: int = 0,
        val_batches: PositiveInt = 10,
    ) -> None:
        super().__init__()
        if batch_size < 1 or steps_per_epoch < 1:
            raise ValueError("data.batch_size and data.steps_per_epoch must be positive")
        self.save_hyperparameters(logger=False)  # the CLI logs the resolved config itself
        self.dataset = dataset
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.normalize_states, self.obs_keys, self.download = normalize_states, obs_keys, download
        self.toy_size, self.toy_seed, self.val_batches = toy_size, toy_seed, val_batches
        self.updates_per_call = 1  # set by the model at setup (its fast path may group updates)

        self.toy = TOY_BANDITS.get(dataset) if isinstance(dataset, str) else None
        self.resolved: list[ResolvedDataset] = []
        if self.toy is None:
            names = [dataset] if isinstance(dataset, str) else list(dataset)
            if not names:
                raise DatasetError("data.dataset is an empty list: name at least one dataset")
            self.resolved = [resolve(n) for n in names]
            for ids in self.resolved:
                for dataset_id in ids.minari_ids:
                    ensure_available(dataset_id, download)
        self.task: TaskSpec | None = self.resolved[0].task if len(self.resolved) == 1 else None
        self.env_id: str | None = self.task.env_id if self.task else self._dataset_env_id()
        self.reward_transform: RewardTransform = (
            default_reward_transform(self.env_id) if reward_transform == "auto" else reward_transform
        )
        self.action_low, self.action_high = -torch.ones(2), torch.ones(2)  # the toy bandits' square
        self.obs_dim, self.act_dim = self._space_dims()

        self.transitions: Transitions | None = None
        self.buffer: TransitionBuffer | None = None
        self.obs_mean = torch.zeros(self.obs_dim)
        self.obs_std = torch.ones(self.obs_dim)
        self.reward_scale = 1.0

    # -- what the model and the evaluation need to know ---------------------------------------

    @property
    def minari_ids(self) -> list[str]:
        return [i for r in self.resolved for i in r.minari_ids]

    def _dataset_env_id(self) -> str | None:
        return env_id_of(self.minari_ids[0]) if self.resolved else None

    def _space_dims(self) -> tuple[int, int]:
        """Observation and action sizes, read from the dataset's spaces without loading its data."""
        if self.toy is not None:
            return 1, 2
        import gymnasium as gym
        import minari

        dims, bounds = set(), set()
        for dataset_id in self.minari_ids:
            try:
                ds = minari.load_dataset(dataset_id)
            except Exception as err:
                raise DatasetError(
                    f"Dataset '{dataset_id}' could not be opened ({type(err).__name__}: {err}); "
                    "the file may be corrupt: delete its folder and download or import it again."
                ) from err
            obs_space = select_keys(ds.observation_space, self.obs_keys)
            dims.add((gym.spaces.flatdim(obs_space), gym.spaces.flatdim(ds.action_space)))
            bounds.add(action_bounds(ds.action_space))
        if len(dims) != 1:
            raise DatasetError(f"datasets {self.minari_ids} have different observation/action sizes: {sorted(dims)}")
        if len(bounds) != 1:
            raise DatasetError(f"datasets {self.minari_ids} have different action bounds: {sorted(bounds)}")
        low, high = bounds.pop()
        self.action_low, self.action_high = torch.tensor(low), torch.tensor(high)
        return dims.pop()

    @property
    def ref_scores(self) -> tuple[float, float] | None:
        """D4RL reference returns (min, max) for the normalized score, when known."""
        if self.task is not None:
            return self.task.ref_min_score, self.task.ref_max_score
        if self.transitions is not None:
            lo, hi = self.transitions.meta.get("ref_min_score"), self.transitions.meta.get("ref_max_score")
            if lo is not None and hi is not None:
                return float(lo), float(hi)
        return None

    def data_stats(self) -> dict[str, torch.Tensor]:
        """Statistics the model keeps as buffers (and so in its checkpoint)."""
        assert self.buffer is not None, "call setup() first"
        return {
            "obs_mean": self.obs_mean,
            "obs_std": self.obs_std,
            "max_reward": self.buffer.rewards.max().detach().cpu(),
            "max_abs_reward": self.buffer.rewards.abs().max().detach().cpu(),
            "action_low": self.action_low,
            "action_high": self.action_high,
        }

    # -- Lightning hooks -----------------------------------------------------------------------

    def load_transitions(self) -> Transitions:
        """Read (once) the raw transitions of every named dataset, host side."""
        if self.transitions is None:
            if self.toy is not None:
                self.transitions = self.toy.transitions(self.toy_size, self.toy_seed)
            else:
                self.transitions = Transitions.concatenate(
                    [load_transitions(i, self.obs_keys) for i in self.minari_ids]
                )
        return self.transitions

    def setup(self, stage: str | None = None) -> None:
        if self.buffer is not None:
            return
        data = self.load_transitions()
        for name in ("observations", "actions", "rewards", "next_observations"):
            if not np.isfinite(getattr(data, name)).all():
                raise DatasetError(f"dataset {self.dataset!r} has non-finite values in '{name}'")
        if self.normalize_states:
            self.obs_mean, self.obs_std = state_normalizer(data.observations)
        self.reward_scale = reward_scale(data, self.reward_transform)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.buffer = TransitionBuffer.from_transitions(
            data,
            device,
            self.reward_scale,
            self.obs_mean if self.normalize_states else None,
            self.obs_std if self.normalize_states else None,
        )

    def train_dataloader(self) -> UpdateClock:
        assert self.buffer is not None, "call setup() first"
        return UpdateClock(self.steps_per_epoch, self.updates_per_call)

    def _fixed_batches(self) -> FixedBatches:
        """`val_batches` batches drawn once with a fixed key: the same for every run and call."""
        assert self.buffer is not None
        keys = run_keys([VAL_SEED], self.buffer.device)
        batches = []
        for i in range(self.val_batches):
            batch = self.buffer.sample(Draws(keys, torch.tensor(i, device=self.buffer.device)), self.batch_size)
            batches.append({k: v[0] for k, v in batch.items()})
        return FixedBatches(batches)

    def val_dataloader(self) -> FixedBatches:
        return self._fixed_batches()

    def test_dataloader(self) -> FixedBatches:
        return self._fixed_batches()
