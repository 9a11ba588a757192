"""Other packages' noise off the console, each at its source and by its text (never a blanket
`ignore`), so that isep's own lines — where a run lives, what it resumed, how it ended — stand out."""

from __future__ import annotations

import logging
import re
import sys
import warnings

# Lightning's INFO lines that isep's start and summary lines replace, and its advertisements.
LIGHTNING_INFO = re.compile(
    r"^(💡 Tip: |GPU available: |TPU available: |HPU available: |Loading `train_dataloader` to estimate|"
    r"`Trainer\.(fit|validate|test)` stopped: |Restored all states from the checkpoint|Seed set to |"
    r"Experiment with name .* not found\. Creating it\.|Using (bfloat16|16bit) Automatic Mixed Precision|"
    r"Restoring states from the checkpoint path at |\s*Detected KeyboardInterrupt, attempting graceful shutdown|"
    r"\[rank: \d+\] Received SIGTERM)"  # (isep's own line says what a stop kept)
)
WARNINGS = (  # (message regex, module regex) of warnings that say nothing to an isep user
    (r"LightningCLI's args parameter is intended to run from within Python", r"lightning\.pytorch\.cli"),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", r"lightning\.pytorch\.utilities\._pytree"),
    (r"Checkpoint directory .* exists and is not empty", r"lightning\.pytorch\.callbacks\.model_checkpoint"),
    (r"The dirpath has changed from", r"lightning\.pytorch\.callbacks\.model_checkpoint"),
    (r"Experiment logs directory .* exists and is not empty", r"lightning\.fabric\.loggers\.csv_logs"),
    # isep's training loader yields update ticks only (the agent draws each batch keyed by the update
    # count), so a resume inside an epoch continues exactly (tested): the warning does not apply
    (r"You're resuming from a checkpoint that ended before the epoch ended", r"lightning\.pytorch\.loops\.training_epoch_loop"),
    (r"`code_permalink` is set to None|`author_email` is set to None|`eval_env` is set to None|env_spec is None",
     r"minari\.utils"),
)
MUJOCO_DEPRECATIONS = re.compile(r"compiler attribute '\w+' is deprecated")


class _DropLines(logging.Filter):
    def __init__(self, pattern: re.Pattern) -> None:
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def _mujoco_warning(text: str) -> None:
    """MuJoCo's warnings to stderr as MuJoCo prints them, but for the deprecations of the model
    files that ship with Gymnasium (`settotalmass`), which no user can act on."""
    if not MUJOCO_DEPRECATIONS.search(text):
        print(f"WARNING: {text}", file=sys.stderr)


def quiet() -> None:
    """Install the filters (idempotent)."""
    drop = _DropLines(LIGHTNING_INFO)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.fabric.utilities.seed", "lightning.pytorch.loggers.mlflow",
                 "lightning.pytorch.trainer.connectors.signal_connector"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(drop)
    for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # "Creating initial MLflow database tables"
        logging.getLogger(name).setLevel(logging.WARNING)
    for message, module in WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    try:
        import mujoco

        mujoco.set_mju_user_warning(_mujoco_warning)
    except (ImportError, AttributeError):  # MuJoCo not installed, or an older binding
        pass
