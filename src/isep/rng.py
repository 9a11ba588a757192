"""Counter-based random numbers on the device: a pure function of (run key, update, stream, position).

Every random number of a training update — batch indices, Bernoulli gates, policy noise, flow
times, label dropout, actor dropout — is a hash of the run's key, the update number (a device
tensor), the purpose of the draw (its *stream*) and the element's position. Nothing is stateful:

- the update has no generator to carry, so it can be compiled and captured as one CUDA graph whose
  replays draw new numbers (the update number is a tensor the graph increments);
- a run draws the same numbers whether it trains alone or stacked with others (its key, not its
  place in the stack, decides), and whatever other draws happen in the same update;
- resuming needs no RNG state beyond the update number, which the checkpoint holds.

The hash is Chris Wellons' `lowbias32` (a 32-bit integer mixer) on int64 tensors. A multiplier
c ≥ 2**31 is applied as c − 2**32 (the same product modulo 2**32), so every product stays below
2**63 in magnitude and no signed overflow occurs on any backend.
"""

from __future__ import annotations

import enum
import math

import torch

MASK32 = 0xFFFFFFFF
_TWO_PI = 2 * math.pi


class Stream(enum.IntEnum):
    """What a draw is for. Each stream is an independent sequence; add new ones at the end."""

    BATCH = 0  # indices of the training batch
    VALUE_GATE = 1  # b ~ Bernoulli(λ) of the value loss (`value_mix: bernoulli`)
    ACTOR_GATE = 2  # b ~ Bernoulli(λ) of the actor loss (Eqs. 5-6)
    POLICY_NOISE = 3  # noise of a_π ~ π(·|s): Gaussian draw or the flow sampler's x₀
    FLOW_NOISE = 4  # x₀ of the flow-matching loss (Eq. 6)
    FLOW_TIME = 5  # t ~ U[0, 1] of the flow-matching loss
    LABEL_DROP = 6  # CFGRL's label dropout to ∅
    DROPOUT = 16  # actor dropout; layer i uses DROPOUT + i (i < MAX_DROPOUT_LAYERS)


_STREAMS = 64  # streams per update (update · 64 + stream stays below 2**32 for 6.7e7 updates)
TRAINING_STREAMS = 32  # training draws use streams 0..31; validation the same streams + 32
MAX_DROPOUT_LAYERS = TRAINING_STREAMS - Stream.DROPOUT


_M1, _M2 = 0x7FEB352D, 0x846CA68B - (1 << 32)  # |m| < 2**31: |x · m| < 2**63 for x < 2**32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32: a bijective avalanche mix of 32-bit values (0 ≤ x < 2**32) held in int64 tensors."""
    x = x ^ (x >> 16)
    x = (x * _M1) & MASK32
    x = x ^ (x >> 15)
    x = (x * _M2) & MASK32
    return x ^ (x >> 16)


def run_keys(seeds: list[int] | tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
    """One 32-bit key per run from its integer seed (any size), as an int64 tensor (R,)."""
    keys = []
    for seed in seeds:
        s = int(seed) & ((1 << 64) - 1)
        k = mix32(torch.tensor(s & MASK32) ^ mix32(torch.tensor((s >> 32) ^ 0x5BD1E995)))
        keys.append(int(k))
    return torch.tensor(keys, dtype=torch.int64, device=device)


class Draws:
    """The random numbers of one update for R runs.

    Args:
        keys: (R,) int64 run keys (`run_keys`).
        update: () int64 tensor, the number of updates done so far.
        validation: draw the numbers of validation/test batches instead: stream s is then stream
            s + 32 of `update`, which no training update draws from (training streams are 0..31),
            so no validation number equals a training one by construction.

    Every method returns a tensor of shape (R, *shape): run r's numbers depend only on keys[r],
    `update`, the stream and the position in `shape`.
    """

    def __init__(self, keys: torch.Tensor, update: torch.Tensor, validation: bool = False) -> None:
        self.keys, self.update = keys, update
        self.offset = TRAINING_STREAMS if validation else 0
        self._stream_keys: torch.Tensor | None = None

    def stream_keys(self) -> torch.Tensor:
        """(2, R, streams): two keys per run and stream for this update, hashed once per update."""
        if self._stream_keys is None:
            streams = torch.arange(_STREAMS, device=self.keys.device, dtype=torch.int64)
            counters = mix32((self.update * _STREAMS + streams) & MASK32)  # (streams,)
            k_a = mix32(self.keys.unsqueeze(-1) ^ counters)  # (R, streams)
            self._stream_keys = torch.stack([k_a, mix32(k_a ^ 0x68E31DA4)])
        return self._stream_keys

    def bits(self, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
        """Uniform 32-bit integers in int64, (R, *shape)."""
        if not 0 <= int(stream) < TRAINING_STREAMS:
            raise ValueError(f"stream {int(stream)} outside the training streams 0..{TRAINING_STREAMS - 1}")
        column = int(stream) + self.offset
        k_a, k_b = self.stream_keys()[:, :, column].view(2, -1, *([1] * len(shape))).unbind(0)
        pos = torch.arange(math.prod(shape), device=self.keys.device, dtype=torch.int64).view(1, *shape)
        return mix32((mix32(pos ^ k_a) + k_b) & MASK32)

    def uniform(self, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
        """U[0, 1) in float32 (24 random bits), (R, *shape)."""
        return (self.bits(stream, shape) >> 8).to(torch.float32) * (1.0 / (1 << 24))

    def normal(self, stream: int, shape: tuple[int, ...]) -> torch.Tensor:
        """N(0, 1) in float32 by the Box-Muller transform of two uniforms, (R, *shape)."""
        bits = self.bits(stream, (2, *shape)) >> 8
        u1 = (bits[:, 0].to(torch.float32) + 0.5) * (1.0 / (1 << 24))  # (0, 1): log is finite
        u2 = bits[:, 1].to(torch.float32) * (1.0 / (1 << 24))
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(_TWO_PI * u2)

    def randint(self, stream: int, shape: tuple[int, ...], high: int) -> torch.Tensor:
        """Integers uniform in [0, high), int64, (R, *shape); high < 2**31."""
        if not 0 < high < 2**31:
            raise ValueError(f"randint needs 0 < high < 2**31, got {high}")
        return (self.bits(stream, shape) * high) >> 32

    def bernoulli(self, stream: int, shape: tuple[int, ...], p: torch.Tensor | float) -> torch.Tensor:
        """Booleans that are True with probability p (a float, or a tensor broadcasting to (R, *shape))."""
        return self.uniform(stream, shape) < p
