"""Callbacks: cross-cutting work around the update (target EMA; evaluation and sweeps later)."""

from isep.callbacks.target_ema import TargetEMA

__all__ = ["TargetEMA"]
