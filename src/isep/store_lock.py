"""One process at a time creates, migrates or adds an experiment to a local sqlite MLflow store.

MLflow does each of these in several statements; fits started together on a fresh store otherwise
fail inside its migrations ("duplicate column name: step", "table latest_metrics already exists").
The lock is an `flock` (as the run folders' `.isep.lock`) on the store's folder itself, so nothing
is written for it. Other stores (servers, databases) serialise themselves: no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Held around the first use of the store at `uri` (a resolved tracking URI)."""
    folder = Path(uri[len("sqlite:///"):].split("?", 1)[0]).absolute().parent if uri.startswith("sqlite:///") else None
    try:
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)  # (MLflow makes it too, unlocked)
    except OSError:
        folder = None  # an unwritable place: MLflow's own error says so
    if folder is None:
        yield
        return
    handle = os.open(folder, os.O_RDONLY | os.O_CLOEXEC)  # not inherited by the processes a fit starts
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)
