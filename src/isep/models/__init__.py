"""Networks: MLPs, twin critic, value, Gaussian actor, velocity field and its guided sampler."""

from isep.models.critics import TwinQ, ValueFunction
from isep.models.flow import NEGATIVE, NULL, POSITIVE, VelocityField, guided_sample
from isep.models.gaussian import GaussianActor
from isep.models.mlp import EnsembleMLP, mlp

__all__ = [
    "EnsembleMLP",
    "GaussianActor",
    "NEGATIVE",
    "NULL",
    "POSITIVE",
    "TwinQ",
    "ValueFunction",
    "VelocityField",
    "guided_sample",
    "mlp",
]
