"""`--ckpt_path`: a checkpoint file checked before anything runs, and the settings a resume may change.

Lightning would load a missing, truncated or foreign file with a traceback (whose last line
advises `weights_only=False`, unsafe advice), and LightningCLI replaces the command line's model
settings by the checkpoint's without a word (`--model.actor flow` trains the checkpoint's
Gaussian actor). Here a bad file is a one-line error, a changed setting that defines the run is an
error listing every difference, and a changed training length is applied and said.
"""

from __future__ import annotations

import sys
from pathlib import Path

from isep.errors import ConfigError
from isep.runs import ADDED, DRAW_SETTINGS, HASH_EXCLUDE, draws_nothing, flat

# Settings a resumed run may change: how long it trains (the rest defines what the run computes).
LENGTH = ("trainer.max_epochs", "trainer.max_steps")


def load_failure(err: Exception) -> str:
    """Why torch could not load a file, in a few words, without torch's advice to load it unsafely."""
    text = str(err).strip()
    if "Weights only load failed" in text or type(err).__name__ == "UnpicklingError":
        return "its contents are not a torch checkpoint's"
    return f"{type(err).__name__}: {(text.splitlines() or [''])[0][:160]}"


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's dictionary, read as Lightning reads it (`weights_only=True`); a clear
    `ConfigError` for a missing, unreadable, truncated or foreign file (which stays as it is)."""
    import torch

    path = Path(path)
    if not path.is_file():
        what = "a folder" if path.is_dir() else "no such file"
        raise ConfigError(f"--ckpt_path {path}: {what}; pass a .ckpt file (a run's checkpoints/last.ckpt) or `last`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (truncated zip, a pickle of something else, a text file, ...)
        raise ConfigError(f"--ckpt_path {path} is not a readable isep checkpoint ({load_failure(err)}); "
                          "it may be truncated (a copy cut short) or another program's file — it was left as it is") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "hyper_parameters" not in checkpoint:
        raise ConfigError(f"--ckpt_path {path} is a torch file but not a Lightning checkpoint of isep "
                          "(no state_dict / hyper_parameters)")
    return checkpoint


def _differences(mine: dict, theirs: dict, prefix: str) -> list[str]:
    out = []
    for key in sorted(set(mine) | set(theirs)):
        name = f"{prefix}.{key}"
        if name in HASH_EXCLUDE or key in ("_instantiator", "_class_path"):
            continue
        if key not in theirs and ADDED.get(name, object()) == mine.get(key):  # a setting newer than the checkpoint
            continue
        a, b = mine.get(key), theirs.get(key)
        if _normal(a) != _normal(b):
            out.append(f"{name}: the checkpoint has {b!r}, this command {a!r}")
    return out


def _normal(value):
    """Compare as the config writes values: tuples as lists, ints as floats where a float is meant."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


def check_resume(config: dict, checkpoint: dict, path: Path) -> None:
    """The run's settings must be the checkpoint's: any model or data setting that differs is an
    error naming each difference (performance switches excepted: `HASH_EXCLUDE`). A different
    training length (compared with the run folder's config.yaml, when there is one) is applied and
    said."""
    skip = {"obs_dim", "act_dim"}
    if draws_nothing(config.get("model") or {}) and draws_nothing(checkpoint.get("hyper_parameters") or {}):
        skip |= set(DRAW_SETTINGS)  # λ = 0 draws no a_π: its settings are inert
    model = {k: v for k, v in (config.get("model") or {}).items() if k not in skip}
    saved = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if k not in skip}
    problems = _differences(model, saved, "model")
    data = checkpoint.get("datamodule_hyper_parameters")
    if data:
        problems += _differences(config.get("data") or {}, data, "data")
    trained = trained_precision(checkpoint)
    wanted = str((config.get("trainer") or {}).get("precision") or "32-true")
    if wanted != trained:
        problems.append(f"trainer.precision: the checkpoint was trained in {trained!r}, this command {wanted!r}")
    if problems:
        listed = "\n  ".join(problems)
        raise ConfigError(f"--ckpt_path {path} was trained with other settings than this command's:\n  {listed}\n"
                          "Resume with the checkpoint's settings (its run folder's config.yaml), or start a new run "
                          "without --ckpt_path.")
    saved_config = path.parent.parent / "config.yaml"
    if saved_config.is_file():
        import yaml

        before = flat("", yaml.safe_load(saved_config.read_text()) or {})
        now = flat("", config)
        for key in LENGTH:
            if before.get(key) != now.get(key):
                print(f"isep: resuming with {key} = {now.get(key)} (the run had {before.get(key)}): training continues "
                      "to the new end, and the actor's cosine schedule, if any, now spans the new length", file=sys.stderr)


def resume_precision(plain: dict, root: Path, ckpt: str | None, default: str,
                     checkpoint: dict | None = None) -> str | None:
    """The precision a resume continues in when `--trainer.precision` is not given: the checkpoint
    file's (`checkpoint`: that file, already read), or, for `--ckpt_path last`, that of the newest
    run of these settings with a checkpoint (the device's default first). None: nothing to resume,
    the default applies."""
    import copy

    from isep.precision import SUPPORTED
    from isep.runs import choose_run_dir, run_key

    if not ckpt:
        return None
    if ckpt != "last":
        return trained_precision(checkpoint if checkpoint is not None else read_checkpoint(ckpt))
    for precision in dict.fromkeys((default, *SUPPORTED)):
        config = copy.deepcopy(plain)
        config.setdefault("trainer", {})["precision"] = precision
        if (choose_run_dir(root / run_key(config), resume=True) / "checkpoints" / "last.ckpt").is_file():
            return precision
    return None


def trained_precision(checkpoint: dict) -> str:
    """The precision a checkpoint was trained in (`32-true` before precisions existed)."""
    return ((checkpoint.get("state_dict") or {}).get("agent._extra_state") or {}).get("precision", "32-true")
