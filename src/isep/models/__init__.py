"""Networks with a leading run dimension: MLPs, twin critic, value, Gaussian actor, velocity field."""

from isep.models.critics import TwinQ, ValueFunction
from isep.models.flow import NEGATIVE, NULL, POSITIVE, VelocityField, guided_sample
from isep.models.gaussian import GaussianActor
from isep.models.mlp import StackedLinear, StackedMLP

__all__ = [
    "GaussianActor",
    "NEGATIVE",
    "NULL",
    "POSITIVE",
    "StackedLinear",
    "StackedMLP",
    "TwinQ",
    "ValueFunction",
    "VelocityField",
    "guided_sample",
]
