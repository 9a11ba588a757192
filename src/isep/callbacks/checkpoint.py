"""Checkpoints of a run: `last.ckpt` every epoch, and the best one by evaluation score.

Both save at the end of the training epoch, after `RolloutEvaluation` (Lightning runs checkpoint
callbacks last), and Lightning writes each file through a temporary file that is moved into place,
so a killed run never leaves a half-written checkpoint. A run killed with SIGKILL loses at most the
updates since the end of its last epoch.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint


class LastCheckpoint(ModelCheckpoint):
    """`<dirpath>/last.ckpt`, rewritten at the end of every epoch (what `--ckpt_path last` resumes)."""

    def __init__(self, dirpath: str | Path) -> None:
        # Not `save_last`: Lightning 2.6 writes "last" only in a step where a top-k file was saved.
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            every_n_epochs=1,
            save_on_train_epoch_end=True,
            enable_version_counter=False,
        )


class BestCheckpoint(ModelCheckpoint):
    """`<dirpath>/best-step=N.ckpt`: the run's best `eval/score` (D4RL normalized score)."""

    def __init__(self, dirpath: str | Path, every_n_epochs: int) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="best-step={step}",
            auto_insert_metric_name=False,
            monitor="eval/score",
            mode="max",
            save_top_k=1,
            save_last=False,
            every_n_epochs=max(every_n_epochs, 1),
            save_on_train_epoch_end=True,
        )
