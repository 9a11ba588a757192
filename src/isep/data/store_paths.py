"""Where a new dataset may be written in the local Minari store, and undoing only what a write made.

A failed import must never remove anything the command did not create: Minari refuses an id whose
folder exists only *after* it was asked to write, and a clean-up of "the dataset's folder" is a
clean-up of a namespace (`local/halfcheetah` holds datasets), of the store (`.`), or of the
store's parent (`..`) when the id is not checked first.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path, PurePosixPath

from isep.errors import DatasetError

# Minari's `namespace/name-vN` form (namespace parts and name: letters, digits, `_`, `-`).
_PART = re.compile(r"^[\w-]+$")
_VERSIONED = re.compile(r"^[\w-]+-v\d+$")


def check_new_dataset_id(dataset_id: str, root: Path) -> Path:
    """The folder `dataset_id` would occupy in the store `root`, after checking that it is a
    well-formed id (`namespace/name-vN`, no `.`/`..` parts, not absolute), that it stays inside
    the store, and that nothing is there yet (a dataset, a namespace, or anyone's files)."""
    example = "e.g. d4rl/hopper/medium-replay-v2"
    path = PurePosixPath(dataset_id)
    if not dataset_id or dataset_id != dataset_id.strip() or path.is_absolute() or "\\" in dataset_id:
        raise DatasetError(f"--id {dataset_id!r} is not a Minari dataset id: use namespace/name-vN ({example})")
    parts = dataset_id.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise DatasetError(f"--id {dataset_id!r} has an empty, '.' or '..' part: use namespace/name-vN ({example})")
    if len(parts) < 2:
        raise DatasetError(f"--id {dataset_id!r} has no namespace: use namespace/name-vN ({example})")
    bad = [p for p in parts if not _PART.match(p)]
    if bad:
        raise DatasetError(f"--id {dataset_id!r}: {bad[0]!r} may hold only letters, digits, '_' and '-' ({example})")
    if not _VERSIONED.match(parts[-1]):
        raise DatasetError(f"--id {dataset_id!r} does not end in a version (-vN): use namespace/name-vN ({example})")
    target = root.absolute() / Path(*parts)
    if root.absolute().resolve() not in target.resolve().parents:
        raise DatasetError(f"--id {dataset_id!r} points outside the Minari store {root} (through a link)")
    if target.exists():
        what = "a dataset" if (target / "data" / "metadata.json").is_file() else "a folder (a namespace, or other files)"
        raise DatasetError(f"{target} already exists and holds {what}; nothing was written. Choose another --id.")
    return target


NAMESPACE_FILE = "namespace_metadata.json"  # what Minari writes into a namespace folder it adopts


class CreatedPaths:
    """Remembers which folders on the way to `target` did not exist yet (and which existing
    namespace folders had no `namespace_metadata.json`), so that `undo` removes exactly what was
    made for `target` and nothing that was there before."""

    def __init__(self, target: Path) -> None:
        self.target = target.absolute()
        missing = [p for p in (self.target, *self.target.parents) if not p.exists()]
        self.top = missing[-1] if missing else None  # the highest folder this write will create
        self.new_files = [p / NAMESPACE_FILE for p in self.target.parents if p.is_dir() and not (p / NAMESPACE_FILE).exists()]

    def undo(self) -> None:
        """Remove the highest folder the write created (it did not exist before: all of it is
        ours) and the namespace files it added to folders that existed."""
        if self.top is not None and self.top.exists():
            shutil.rmtree(self.top, ignore_errors=True)
        for file in self.new_files:
            file.unlink(missing_ok=True)
