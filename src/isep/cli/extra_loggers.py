"""The user's `--trainer.logger`s (TensorBoard, CSV, W&B, ...) beside isep's own MLflow run and CSV.

isep's records stay the store that `isep compare`, `sweep` and `figure` read; a logger given on
the command line gets the same metrics, under the same names and at the same steps (updates
done), and the run's hyperparameters. A stack's runs each get a stream of their own: a logger
that has a `version` (TensorBoard, CSV) writes each run to `<version>/<run>`, one that has a
name (W&B, MLflow, Comet, ...) names each run `<name>/<run>`.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from isep.errors import ConfigError

# A logger's package, and the isep extra that installs it.
PACKAGES = {
    "TensorBoardLogger": (("tensorboard", "tensorboardX"), "pip install 'isep[tensorboard]'"),
    "WandbLogger": (("wandb",), "pip install 'isep[wandb]'"),
    "CometLogger": (("comet_ml",), "pip install comet-ml"),
    "NeptuneLogger": (("neptune",), "pip install neptune"),
}
# Loggers whose `version` is a sub-folder (one stream per run of a stack); others take a name suffix.
BY_VERSION = ("TensorBoardLogger", "CSVLogger")


def logger_specs(value) -> list[dict]:
    """`trainer.logger` of a plain config (one class spec, a list of them, a bool or None) as a list
    of `{"class_path", "init_args"}` (empty: no logger was given)."""
    if value in (None, True, False):
        return []
    specs = value if isinstance(value, list) else [value]
    return [s for s in specs if isinstance(s, dict) and s.get("class_path")]


def _short(spec: dict) -> str:
    return spec["class_path"].rsplit(".", 1)[-1]


def check_logger_packages(specs: list[dict]) -> None:
    """Each given logger's package imports, else one line naming what to install (before anything
    is written: Lightning's own message comes only once the run has started)."""
    for spec in specs:
        needs = PACKAGES.get(_short(spec))
        if needs is None:
            continue
        modules, install = needs
        for module in modules:
            try:
                importlib.import_module(module)
                break
            except ImportError:
                continue
        else:
            raise ConfigError(f"--trainer.logger {_short(spec)} needs the package {modules[0]!r}, which is not "
                              f"installed: {install}")


def _logger_class(spec: dict) -> type:
    module, _, name = spec["class_path"].rpartition(".")
    return getattr(importlib.import_module(module), name)


def _per_run_kwargs(spec: dict, stack: str, run: str) -> dict:
    """The logger's arguments for one run of a stack: its own stream (see the module's docstring)."""
    cls, name = _logger_class(spec), _short(spec)
    kwargs = {**(spec.get("init_args") or {}), **(spec.get("dict_kwargs") or {})}
    accepted = inspect.signature(cls.__init__).parameters
    if name in BY_VERSION:
        kwargs["version"] = f"{kwargs.get('version') or stack}/{run}"
    elif "run_name" in accepted:  # MLFlowLogger
        kwargs["run_name"] = f"{kwargs.get('run_name') or stack}/{run}"
    elif "name" in accepted:
        kwargs["name"] = f"{kwargs.get('name') or stack}/{run}"
        if name == "WandbLogger":  # one W&B run per run of the stack, grouped; never the process's global run
            kwargs["group"] = kwargs.get("group") or stack  # (jsonargparse lists wandb.init's arguments, as None)
            kwargs["reinit"] = "create_new"
            for resumed_id in ("version", "id"):  # a W&B id names one run, never R of them
                kwargs.pop(resumed_id, None)
    else:
        raise ConfigError(f"--trainer.logger {name} has no version or name to keep a stack's runs apart: "
                          "train the runs apart, or use TensorBoardLogger, CSVLogger, WandbLogger or MLFlowLogger")
    return kwargs


def check_stackable(specs: list[dict]) -> None:
    """Each logger can keep a stack's runs apart (before anything is written)."""
    for spec in specs:
        _per_run_kwargs(spec, "stack", "run0")


def extra_loggers(specs: list[dict], given, folders: list[Path], stack: str) -> list[list]:
    """Per run, the user's loggers: for one run, those LightningCLI made (`given`); for a stack,
    one of each per run, made here with the run's own stream."""
    if len(folders) == 1:
        return [list(given) if isinstance(given, (list, tuple)) else ([given] if given not in (None, True, False) else [])]
    return [[_logger_class(spec)(**_per_run_kwargs(spec, stack, folder.name)) for spec in specs] for folder in folders]
