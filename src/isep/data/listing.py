"""`isep data list`: the paper's tasks with where their data comes from, and the local store."""

from __future__ import annotations

import os

from isep.data.minari_source import is_local, local_dataset_ids, minari_root
from isep.data.registry import TASKS
from isep.data.toy import TOY_BANDITS


def format_listing() -> str:
    root = minari_root()
    env_note = "MINARI_DATASETS_PATH" if os.environ.get("MINARI_DATASETS_PATH") else "Minari's default; set MINARI_DATASETS_PATH"
    lines = [f"Paper tasks (D4RL names; local store: {root}, {env_note})", ""]
    lines.append(f"  {'task':32} {'env':18} {'source':58} status")
    for task in TASKS.values():
        if task.import_id and is_local(task.import_id, root):
            source, status = task.import_id, "local (imported)"
        elif task.published:
            source = " + ".join(task.minari_ids)
            status = "local" if all(is_local(i, root) for i in task.minari_ids) else "not downloaded"
        else:
            source, status = "(not on Minari: isep data import-d4rl)", "missing"
        lines.append(f"  {task.name:32} {task.env_id:18} {source:58} {status}")
    lines += ["", "Toy bandits (built in, no download)", ""]
    lines += [f"  {b.name:32} {b.description}" for b in TOY_BANDITS.values()]
    local = local_dataset_ids(root)
    lines += ["", f"Datasets in the local store ({len(local)})", ""]
    lines += [f"  {i}" for i in local] or ["  (none)" if root.is_dir() else f"  (none: {root} does not exist)"]
    return "\n".join(lines)
