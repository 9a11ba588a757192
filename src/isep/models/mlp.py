"""Multi-layer perceptrons: a plain one and an ensemble whose members run as one batched network."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "mish": nn.Mish, "gelu": nn.GELU, "silu": nn.SiLU}


def mlp(
    in_dim: int,
    hidden: Sequence[int],
    out_dim: int,
    activation: str = "relu",
    dropout: float = 0.0,
    layer_norm: bool = False,
) -> nn.Sequential:
    """Linear → (LayerNorm) → activation → (Dropout) per hidden layer, then a linear head."""
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    for width in hidden:
        layers.append(nn.Linear(in_dim, width))
        if layer_norm:
            layers.append(nn.LayerNorm(width))
        layers.append(act())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class EnsembleLinear(nn.Module):
    """`members` independent linear layers applied as one batched matmul: (E, B, in) → (E, B, out)."""

    def __init__(self, members: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim))
        bound = 1 / math.sqrt(in_dim)  # nn.Linear's default initialisation, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """E members of the same MLP shape, evaluated together (twin critics in one set of launches)."""

    def __init__(self, members: int, in_dim: int, hidden: Sequence[int], out_dim: int, activation: str = "relu"):
        super().__init__()
        self.members = members
        dims = [in_dim, *hidden]
        self.hidden = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = EnsembleLinear(members, dims[-1], out_dim)
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in) is shared by every member; (E, B, in) gives each member its own input."""
        if x.dim() == 2:
            x = x.unsqueeze(0).expand(self.members, *x.shape)
        for layer in self.hidden:
            x = self.act(layer(x))
        return self.head(x)
