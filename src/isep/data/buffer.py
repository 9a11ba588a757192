"""Device-resident transitions, the batches drawn from them on that device, and the update clock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from isep.data.transitions import Transitions
from isep.rng import Draws, Stream

Batch = dict[str, torch.Tensor]


def check_buffer(buffer, obs_dim: int, act_dim: int, batch_size: int) -> None:
    """A `TransitionBuffer` of `obs_dim`-sized states and `act_dim`-sized actions, non-empty, and a
    batch size ≥ 1; anything else is a one-line `ConfigError` saying what to build instead."""
    from isep.errors import ConfigError

    if not isinstance(buffer, TransitionBuffer):
        raise ConfigError(f"attach_data takes a TransitionBuffer (isep.data.buffer: observations, actions, rewards, "
                          f"next_observations, dones), got a {type(buffer).__name__}: build one with "
                          "TransitionBuffer(**tensors) or TransitionBuffer.from_transitions(...)")
    n = len(buffer)
    expected = {"observations": (n, obs_dim), "actions": (n, act_dim), "rewards": (n,), "next_observations": (n, obs_dim),
                "dones": (n,)}
    if buffer.obs_mean is not None:
        expected.update(obs_mean=(obs_dim,), obs_std=(obs_dim,))
    wrong = [f"{k} {tuple(getattr(buffer, k).shape)} (expected {v})" for k, v in expected.items()
             if tuple(getattr(buffer, k).shape) != v]
    if wrong or n == 0 or int(batch_size) < 1:
        what = ", ".join(wrong) if wrong else ("no transitions" if n == 0 else f"batch size {batch_size}")
        raise ConfigError(f"attach_data: {what}; the agent has obs_dim {obs_dim}, act_dim {act_dim} "
                          "and needs a batch size ≥ 1")


FIELDS = ("observations", "actions", "rewards", "next_observations", "dones")


@dataclass
class TransitionBuffer:
    """All transitions as one tensor per field on the training device.

    `dones` is 1 only at true terminations: time-limit ends are bootstrapped through (Eq. 3).

    State normalization is the buffer's: `obs_mean` / `obs_std` are the statistics its states were
    standardized with (None: the states are raw). Build a normalized buffer with
    `from_transitions(..., obs_mean=, obs_std=)` or `normalized(mean, std)`, never by hand;
    `ISEPAgent.attach_data` gives the agent the same statistics for `act()` (`adopt_statistics`).
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    dones: torch.Tensor
    obs_mean: torch.Tensor | None = None
    obs_std: torch.Tensor | None = None

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
        buffer = cls(
            observations=to(data.observations),
            actions=to(data.actions),
            rewards=to(data.rewards) * reward_scale,
            next_observations=to(data.next_observations),
            dones=to(data.terminals),
        )
        return buffer.normalized(obs_mean, obs_std) if obs_mean is not None and obs_std is not None else buffer

    def normalized(self, obs_mean: torch.Tensor, obs_std: torch.Tensor) -> "TransitionBuffer":
        """The same transitions with states standardized, (s − mean) / std, and the statistics kept."""
        from isep.errors import ConfigError

        if self.obs_mean is not None:
            raise ConfigError("this buffer's states are normalized already (its obs_mean/obs_std are set): normalize "
                              "the raw transitions once")
        mean, std = (torch.as_tensor(x, dtype=torch.float32).to(self.device) for x in (obs_mean, obs_std))
        fields = {name: getattr(self, name) for name in FIELDS}
        fields["observations"] = (self.observations - mean) / std
        fields["next_observations"] = (self.next_observations - mean) / std
        return TransitionBuffer(**fields, obs_mean=mean, obs_std=std)

    def __len__(self) -> int:
        return self.rewards.shape[0]

    def to(self, device: torch.device | str) -> "TransitionBuffer":
        """The same transitions (and statistics) on `device`."""
        return TransitionBuffer(**{name: None if getattr(self, name) is None else getattr(self, name).to(device)
                                   for name in self.__dataclass_fields__})

    @property
    def device(self) -> torch.device:
        return self.rewards.device

    def gather(self, idx: torch.Tensor) -> Batch:
        """The transitions at `idx` (a device tensor of any shape), as a batch dict."""
        return {
            "observations": self.observations[idx],
            "actions": self.actions[idx],
            "rewards": self.rewards[idx],
            "next_observations": self.next_observations[idx],
            "dones": self.dones[idx],
        }

    def sample(self, draws: Draws, batch_size: int) -> Batch:
        """A uniform batch for each of the draws' R runs, (R, batch_size, ·), drawn on the device."""
        return self.gather(draws.randint(Stream.BATCH, (batch_size,), len(self)))


def adopt_statistics(buffer: TransitionBuffer, obs_mean: torch.Tensor, obs_std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The state statistics an agent must use for `act()` with this buffer: the buffer's own. The
    agent's current ones (`set_data_stats`) must be those, or none (0 and 1); anything else would
    train on one scale and act on another, a one-line `ConfigError`."""
    from isep.errors import ConfigError

    identity = bool((obs_mean == 0).all() and (obs_std == 1).all())
    if buffer.obs_mean is None:
        if not identity:
            raise ConfigError("set_data_stats gave state statistics (obs_mean/obs_std) but the buffer's states are raw: "
                              "the buffer normalizes, so build it with TransitionBuffer.from_transitions(..., obs_mean=, "
                              "obs_std=) or buffer.normalized(mean, std), and leave them out of set_data_stats")
        return obs_mean, obs_std
    mean, std = buffer.obs_mean.to(obs_mean.device), buffer.obs_std.to(obs_std.device)
    if not identity and not (torch.allclose(obs_mean, mean) and torch.allclose(obs_std, std)):
        raise ConfigError("set_data_stats gave other state statistics than the buffer was normalized with: leave "
                          "obs_mean/obs_std out of set_data_stats (the agent takes the buffer's)")
    return mean, std


def state_normalizer(observations, eps: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the dataset's states (std floored at `eps`, as in CORL/D4RL practice)."""
    obs = torch.as_tensor(observations, dtype=torch.float64)
    return obs.mean(0).float(), (obs.std(0) + eps).float()


class UpdateClock:
    """What Lightning's loop iterates over: one epoch of `updates` updates, in ticks of at most
    `per_call` updates each (the tick's value is its number of updates).

    The update draws its own batch on the device from the run's key and the update counter
    (`TransitionBuffer.sample`), so a tick carries no data, and a captured update has no inputs.
    """

    def __init__(self, updates: int, per_call: int = 1):
        self.updates, self.per_call = updates, max(1, per_call)

    def __len__(self) -> int:
        return -(-self.updates // self.per_call)

    def __iter__(self) -> Iterator[int]:
        for start in range(0, self.updates, self.per_call):
            yield min(self.per_call, self.updates - start)


class FixedBatches:
    """A fixed, re-iterable set of batches (validation/test); one loader, not a list of loaders."""

    def __init__(self, batches: list[Batch]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches)
