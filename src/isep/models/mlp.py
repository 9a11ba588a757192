"""Multi-layer perceptrons with a leading *member* dimension: M independent networks run as one.

Every network of isep is stacked: its weights have shape (M, in, out) and its activations
(M, B, features). M is the number of runs trained together (1 for an ordinary run), times 2 for the
twin critics. Each layer is one batched matmul whatever M is, so the twins, and many runs of a
λ × seed grid, cost the launches of one network. Members never mix: nothing is reduced over M.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from isep.precision import Layers
from isep.rng import MAX_DROPOUT_LAYERS, Draws, Stream


def mish(x: torch.Tensor) -> torch.Tensor:
    """Mish, x·tanh(softplus(x)) (the flow field's activation). Compiled, it is written as
    x·n/(n + 2) with n = eˣ(eˣ + 2), the same function with one exp (tanh(log(1 + eˣ)) =
    ((1 + eˣ)² − 1)/((1 + eˣ)² + 1)); exact to float32 rounding (max |Δ| 2.4e-7 on N(0, 1)), and
    eˣ is clamped at e²⁰, where the ratio is 1 in float32. Inductor lowers `F.mish` to tanh, log1p
    and exp: on this project's CPU 4.5× slower than the fused one-exp kernel (512 × 512, 1.07 →
    0.26 ms), which made Mish as costly as the bf16 matrix products of ISEP-FM's sampler. Eager
    keeps ATen's `mish` kernel (faster there than the four-op formula)."""
    if torch.compiler.is_compiling():
        e = torch.exp(x.clamp(max=20.0))
        n = e * (e + 2.0)
        return x * (n / (n + 2.0))
    return nn.functional.mish(x)


ACTIVATIONS = {"relu": nn.functional.relu, "mish": mish, "gelu": nn.functional.gelu, "silu": nn.functional.silu}


def member_generators(members: int, generators: Sequence[torch.Generator] | None) -> list[torch.Generator | None]:
    """One generator (or None: torch's default) per member, checked against the member count."""
    if generators is None:
        return [None] * members
    if len(generators) != members:
        raise ValueError(f"need one generator per member ({members}), got {len(generators)}")
    return list(generators)


class StackedLinear(nn.Module):
    """M independent linear layers: (M, B, in) → (M, B, out) as one `baddbmm`.

    Initialised as `nn.Linear` (U(±1/√in) for weights and biases), member m from `generators[m]`
    when given, so that a member's weights depend on its own seed only.
    """

    def __init__(self, members: int, in_dim: int, out_dim: int, generators: Sequence[torch.Generator] | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim))
        bound = 1 / math.sqrt(in_dim)
        with torch.no_grad():
            for m, gen in enumerate(member_generators(members, generators)):
                self.weight[m].uniform_(-bound, bound, generator=gen)
                self.bias[m].uniform_(-bound, bound, generator=gen)

    def forward(self, x: torch.Tensor, dtype: torch.dtype | None = None,
                cast: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """In float32, or with `dtype` (bf16) copies of the weights and the input (fp32 accumulation);
        `cast`: those copies made once beforehand (`StackedMLP.cast`), e.g. for the sampler's steps."""
        if dtype is None:
            return torch.baddbmm(self.bias, x, self.weight)
        bias, weight = cast if cast is not None else (self.bias.to(dtype), self.weight.to(dtype))
        return torch.baddbmm(bias, x.to(dtype), weight)


class StackedMLP(nn.Module):
    """M MLPs of the same shape: linear → activation → (dropout) per hidden layer, then a linear head.

    Dropout masks come from counter-based draws (`isep.rng`), not from torch's global generator, so
    that a run's masks do not depend on the other runs of its stack and the update stays capturable.
    """

    def __init__(
        self,
        members: int,
        in_dim: int,
        hidden: Sequence[int],
        out_dim: int,
        activation: str = "relu",
        dropout: float = 0.0,
        generators: Sequence[torch.Generator] | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if dropout > 0 and len(hidden) > MAX_DROPOUT_LAYERS:
            raise ValueError(f"dropout draws have streams for {MAX_DROPOUT_LAYERS} hidden layers, got {len(hidden)}")
        dims = [in_dim, *hidden, out_dim]
        gens = member_generators(members, generators)
        self.layers = nn.ModuleList(
            StackedLinear(members, a, b, gens) for a, b in zip(dims[:-1], dims[1:])
        )
        self.members, self.activation, self.dropout = members, activation, dropout

    def cast(self, layers: Layers | None) -> list | None:
        """Each layer's (bias, weight) in the dtype `layers` gives it (None: float32), for a caller
        that runs the network several times on the same weights (the sampler's Euler steps)."""
        if layers is None or not layers.low:
            return None
        dtypes = [layers.hidden] * (len(self.layers) - 1) + [layers.head]
        return [None if d is None else (l.bias.to(d), l.weight.to(d)) for l, d in zip(self.layers, dtypes)]

    def forward(self, x: torch.Tensor, draws: Draws | None = None, layers: Layers | None = None,
                cast: list | None = None) -> torch.Tensor:
        """(M, B, in) → (M, B, out), float32. With `draws` and `dropout > 0`, hidden units are dropped
        (inverted dropout); without `draws` the network is deterministic (evaluation). `layers`
        (`isep.precision`): the dtype of the hidden layers' and of the head's matrix products;
        `cast`: their weights already in those dtypes (`cast(layers)`)."""
        act = ACTIVATIONS[self.activation]
        *hidden, head = self.layers
        low = layers.hidden if layers is not None else None
        cast = cast if cast is not None else [None] * len(self.layers)
        for i, layer in enumerate(hidden):
            x = act(layer(x, low, cast[i]))
            if draws is not None and self.dropout > 0:
                keep = draws.uniform(Stream.DROPOUT + i, tuple(x.shape[1:])) >= self.dropout
                x = x * keep.view_as(x).to(x.dtype) / (1 - self.dropout)
        if layers is None or not layers.low:
            return head(x)
        return head(x if layers.head is not None else x.float(), layers.head, cast[-1]).float()
