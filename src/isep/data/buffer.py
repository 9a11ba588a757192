"""Device-resident transitions and the sampler that draws training batches on that device."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from isep.data.transitions import Transitions

Batch = dict[str, torch.Tensor]


@dataclass
class TransitionBuffer:
    """All transitions as one tensor per field on the training device.

    `dones` is 1 only at true terminations: time-limit ends are bootstrapped through (Eq. 3).
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    dones: torch.Tensor

    @classmethod
    def from_transitions(
        cls,
        data: Transitions,
        device: torch.device | str = "cpu",
        reward_scale: float = 1.0,
        obs_mean: torch.Tensor | None = None,
        obs_std: torch.Tensor | None = None,
    ) -> "TransitionBuffer":
        """Copy host arrays to `device` once, scaling rewards and normalizing states there."""
        to = lambda x: torch.as_tensor(x, dtype=torch.float32).to(device)  # noqa: E731
        obs, next_obs = to(data.observations), to(data.next_observations)
        if obs_mean is not None and obs_std is not None:
            mean, std = obs_mean.to(device), obs_std.to(device)
            obs, next_obs = (obs - mean) / std, (next_obs - mean) / std
        return cls(
            observations=obs,
            actions=to(data.actions),
            rewards=to(data.rewards) * reward_scale,
            next_observations=next_obs,
            dones=to(data.terminals),
        )

    def __len__(self) -> int:
        return self.rewards.shape[0]

    @property
    def device(self) -> torch.device:
        return self.rewards.device

    def gather(self, idx: torch.Tensor) -> Batch:
        """The transitions at `idx` (a device tensor), as a batch dict."""
        return {
            "observations": self.observations[idx],
            "actions": self.actions[idx],
            "rewards": self.rewards[idx],
            "next_observations": self.next_observations[idx],
            "dones": self.dones[idx],
        }


def state_normalizer(observations, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the dataset's states (std floored at `eps`, as in CORL/D4RL practice)."""
    obs = torch.as_tensor(observations, dtype=torch.float64)
    return obs.mean(0).float(), (obs.std(0) + eps).float()


class DeviceSampler:
    """An epoch of uniformly sampled batches, drawn on the buffer's device with its own generator.

    Iterating yields `steps` batches; nothing leaves the device. The generator's state is part of
    the DataModule's checkpoint state, so a resumed run draws the same batches.
    """

    def __init__(self, buffer: TransitionBuffer, batch_size: int, steps: int, generator: torch.Generator):
        self.buffer, self.batch_size, self.steps, self.generator = buffer, batch_size, steps, generator

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[Batch]:
        n, dev = len(self.buffer), self.buffer.device
        for _ in range(self.steps):
            idx = torch.randint(n, (self.batch_size,), device=dev, generator=self.generator)
            yield self.buffer.gather(idx)


class FixedBatches:
    """A fixed, re-iterable set of batches (validation/test); one loader, not a list of loaders."""

    def __init__(self, batches: list[Batch]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)
