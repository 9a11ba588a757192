"""`TuneReport`: the sweep's link from a Lightning run to Ray Tune.

A sweep trial is an ordinary `isep fit`; `isep sweep` adds this callback to it. After each
rollout evaluation it reports the evaluation's metrics to Tune (what its schedulers, e.g. ASHA,
rank trials by) with a checkpoint: a small folder naming the run folder and its `last.ckpt`,
which is where `isep fit --ckpt_path last` resumes from. (The checkpoint files stay in the run
folder, written once; Tune keeps the pointer.)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Checkpoint

POINTER = "isep_checkpoint.json"


class TuneReport(Checkpoint):
    """Reports every new evaluation record (and the run's checkpoint) to the Tune session.

    A `Checkpoint` callback: Lightning runs those last at the end of an epoch, so the report
    comes after the rollout evaluation and after `last.ckpt` is written.
    """

    def __init__(self, command: str | None = None) -> None:
        """`command`: the trial's `isep fit` command line, tagged `isep.command` on its MLflow run
        so that the trial can be re-run by hand."""
        super().__init__()
        self.command = command
        self._reported_step = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.command:
            return
        from lightning.pytorch.loggers import MLFlowLogger

        for logger in trainer.loggers:
            if isinstance(logger, MLFlowLogger):
                logger.experiment.set_tag(logger.run_id, "isep.command", self.command[:5000])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Lightning skips the training loop (and `on_train_end`) when a resumed run was already
        at its last step (killed after its final checkpoint): report its restored last evaluation
        then, or, for a run without any evaluation, a NaN score, since Tune needs one report."""
        if self._reported_step < 0:
            self._report(trainer, final=True)

    def _report(self, trainer: L.Trainer, final: bool = False) -> None:
        from isep.callbacks.evaluation import RolloutEvaluation

        evaluations = [cb for cb in trainer.callbacks if isinstance(cb, RolloutEvaluation)]
        history = evaluations[0].history if evaluations else []
        if not history:
            if final:
                report({"step": trainer.global_step, "evaluations": 0, "eval/score": float("nan")},
                       Path(trainer.default_root_dir))
            return
        record = history[-1]
        if record["step"] == self._reported_step:
            return
        self._reported_step = record["step"]
        metrics = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        # ASHA's clock: evaluations done by the run, restored ones included (Tune's own
        # `training_iteration` restarts at 1 in a resumed trial)
        metrics["step"], metrics["evaluations"] = record["step"], len(history)
        report(metrics, Path(trainer.default_root_dir))


def report(metrics: dict, run_dir: Path) -> None:
    """`ray.tune.report` with a pointer checkpoint to `run_dir`'s `last.ckpt`."""
    from ray import tune

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / POINTER).write_text(json.dumps({"run_dir": str(run_dir), "step": metrics["step"],
                                                        "last": str(run_dir / "checkpoints" / "last.ckpt")}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
