"""Data: task registry, Minari and D4RL sources, toy bandits, and the device-resident buffer.

`D4RLDataModule` is imported lazily (it needs Lightning, whose import is slow), so that
`isep data ...` stays fast.
"""

from isep.data.minari_source import DatasetError
from isep.data.registry import TASKS, TaskSpec, get_task

__all__ = ["D4RLDataModule", "DatasetError", "TASKS", "TaskSpec", "get_task"]


def __getattr__(name: str):
    if name == "D4RLDataModule":
        from isep.data.datamodule import D4RLDataModule

        return D4RLDataModule
    raise AttributeError(name)
