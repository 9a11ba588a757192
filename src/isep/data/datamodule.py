"""`D4RLDataModule`: D4RL task names, Minari ids or toy bandits → a device-resident transition buffer."""

from __future__ import annotations

from typing import Literal

import lightning as L
import numpy as np
import torch

from isep.data.buffer import DeviceSampler, FixedBatches, TransitionBuffer, state_normalizer
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
from isep.data.transitions import Transitions, reward_scale

VAL_SEED = 12345  # validation/test batches are the same for every run and every call


class D4RLDataModule(L.LightningDataModule):
    """Offline RL data for `ISEPModule`.

    Args:
        dataset: a D4RL task name of the paper (`walker2d-medium-v2`), a Minari id
            (`mujoco/walker2d/medium-v0`), a toy bandit (`toy/sparse-optimum`, `toy/danger-zone`),
            or a list of Minari ids combined row-wise (medium-expert = medium + expert).
        batch_size: transitions per gradient step (paper: 256).
        steps_per_epoch: gradient steps per epoch (paper: 1000).
        normalize_states: standardize states with the dataset's mean/std; the statistics are
            copied into the model, so they travel with its checkpoint.
        reward_transform: `auto` = IQL's `r * 1000 / (max - min episode return)` for locomotion,
            raw rewards elsewhere.
        obs_keys: for dict observations (Kitchen), the keys to keep, flattened in this order;
            all keys when unset.
        download: let Minari download a dataset missing from the local store.
        toy_size, toy_seed: size and seed of a toy bandit's dataset.
        val_batches: batches in the (fixed) validation/test set.
        seed: seed of the batch sampler; by default derived from the global seed.
    """

    def __init__(
        self,
        dataset: str | list[str] = "toy/sparse-optimum",
        batch_size: int = 256,
        steps_per_epoch: int = 1000,
        normalize_states: bool = False,
        reward_transform: Literal["auto", "iql_locomotion", "none"] = "auto",
        obs_keys: list[str] | None = None,
        download: bool = False,
        toy_size: int = 10_000,
        toy_seed: int = 0,
        val_batches: int = 10,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or steps_per_epoch < 1:
            raise ValueError("data.batch_size and data.steps_per_epoch must be positive")
        self.save_hyperparameters()
        self.dataset = dataset
        self.batch_size, self.steps_per_epoch = batch_size, steps_per_epoch
        self.normalize_states, self.obs_keys, self.download = normalize_states, obs_keys, download
        self.toy_size, self.toy_seed, self.val_batches, self.seed = toy_size, toy_seed, val_batches, seed

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
        self.obs_dim, self.act_dim = self._space_dims()

        self.transitions: Transitions | None = None
        self.buffer: TransitionBuffer | None = None
        self.generator: torch.Generator | None = None
        self._pending_generator_state: torch.Tensor | None = None
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

        dims = set()
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
        if len(dims) != 1:
            raise DatasetError(f"datasets {self.minari_ids} have different observation/action sizes: {sorted(dims)}")
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
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed if self.seed is not None else torch.initial_seed() % 2**63)
        if self._pending_generator_state is not None:
            self.generator.set_state(self._pending_generator_state)
            self._pending_generator_state = None

    def train_dataloader(self) -> DeviceSampler:
        assert self.buffer is not None and self.generator is not None
        return DeviceSampler(self.buffer, self.batch_size, self.steps_per_epoch, self.generator)

    def _fixed_batches(self) -> FixedBatches:
        assert self.buffer is not None
        gen = torch.Generator(device=self.buffer.device)
        gen.manual_seed(VAL_SEED)
        return FixedBatches(list(DeviceSampler(self.buffer, self.batch_size, self.val_batches, gen)))

    def val_dataloader(self) -> FixedBatches:
        return self._fixed_batches()

    def test_dataloader(self) -> FixedBatches:
        return self._fixed_batches()

    def state_dict(self) -> dict:
        """The sampler's RNG state, so a resumed run draws the batches an uninterrupted one would."""
        return {"generator_state": self.generator.get_state() if self.generator is not None else None}

    def load_state_dict(self, state_dict: dict) -> None:
        gen_state = state_dict.get("generator_state")
        if gen_state is None:
            return
        if self.generator is not None:
            self.generator.set_state(gen_state)
        else:
            self._pending_generator_state = gen_state
