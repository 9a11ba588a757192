"""`TargetEMA`: moves the target critics towards the online ones after every gradient update."""

from __future__ import annotations

from typing import Any

import lightning as L


class TargetEMA(L.Callback):
    """Calls `pl_module.update_targets()` after each training batch (Q̂ ← (1 − ρ)Q̂ + ρQ).

    The rate ρ is the module's `target_update_rate`, so it is saved with the run's config. The
    module adds this callback itself (`configure_callbacks`): a run can never forget it.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        pl_module.update_targets()
