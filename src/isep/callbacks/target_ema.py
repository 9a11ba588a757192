"""`TargetEMA`: the target critics' exponential moving average, as a callback that costs nothing per update.

A callback's Python hook cannot run inside a replayed CUDA graph, so this one does not run per
update at all: before training starts it installs its update (`isep.agent.TargetEMAUpdate`, an
in-place lerp) as a per-update hook of the agent, which the agent's step calls at the end of every
update, so it is compiled and captured with the update. Swap it for another callback with the same
`install` pattern to change what happens per update (`ISEPAgent.set_update_hook`).
"""

from __future__ import annotations

import lightning as L

from isep.agent import TargetEMAUpdate


class TargetEMA(L.Callback):
    """Q̂ ← (1 − ρ)·Q̂ + ρ·Q after every update.

    Args:
        rate: ρ; default the model's `target_update_rate` (IQL: 0.005). A rate given here wins.
    """

    def __init__(self, rate: float | None = None) -> None:
        super().__init__()
        self.rate = rate

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        rate = self.rate if self.rate is not None else pl_module.agent.config.target_update_rate
        pl_module.agent.set_update_hook("target_ema", TargetEMAUpdate(rate))
