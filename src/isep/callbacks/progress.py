"""`UpdateProgress`: one progress line for a whole fit, in updates, within 80 columns.

Lightning's bars count batches per epoch (`200/1000` and an ETA for 2000 epochs of a run that
`--trainer.max_steps` ends sooner) and show `v_num`. This one shows the update count against the
real end, updates/s, the latest averaged losses (critic, value, actor; from the first logged step
on) and the last evaluation score:

    fit 12000/20000 ██████     105.3 upd/s 01:16, Q 2.31 V 0.84 π -1.92 score 47.3
"""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.callbacks.progress import ProgressBar
from tqdm.auto import tqdm

WIDTH = 80


class UpdateProgress(ProgressBar):
    """The fit's progress in gradient updates (validation and test show nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self._bar: tqdm | None = None
        self._enabled = True

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from isep.cli.summary import planned_updates

        if not self._enabled:
            return
        total = planned_updates(trainer, trainer.datamodule)
        self._bar = tqdm(total=total, initial=trainer.global_step, desc="fit", unit=" upd", ncols=WIDTH, file=sys.stderr,
                         dynamic_ncols=False, leave=True, smoothing=0.1, mininterval=0.5,
                         bar_format="{desc} {n_fmt}/{total_fmt} {bar:10} {rate_fmt} {remaining}{postfix}")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self._bar is None:
            return
        self._bar.update(trainer.global_step - self._bar.n)
        self._bar.set_postfix_str(self.status(trainer, pl_module), refresh=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self.status(trainer, pl_module))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._bar is not None:  # the last evaluation ran after this bar's epoch-end refresh
            self._bar.set_postfix_str(self.status(trainer, pl_module), refresh=False)
            self._bar.update(trainer.global_step - self._bar.n)
            self._bar.close()
            self._bar = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @staticmethod
    def status(trainer: L.Trainer, pl_module: L.LightningModule) -> str:
        """Q/V/π losses of the latest metric read (the mean over the live runs) and the last score."""
        live = [m for r, m in enumerate(pl_module.last_metrics) if r not in pl_module.agent.failures]
        parts = []
        for short, key in (("Q", "critic/loss"), ("V", "value/loss"), ("π", "actor/loss")):
            values = [m[key] for m in live if key in m]
            if values:
                parts.append(f"{short} {sum(values) / len(values):.3g}")
        score = trainer.callback_metrics.get("eval/score")
        if score is not None:
            value = float(score)  # a D4RL score (0-100) to one decimal; a toy bandit's E[r] (-1..1) to 3 digits
            parts.append(f"score {value:.1f}" if abs(value) >= 10 else f"score {value:.3g}")
        return " ".join(parts)
