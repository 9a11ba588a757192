"""One process at a time creates, migrates or adds an experiment to a local sqlite MLflow store.

MLflow does each of these in several statements; fits started together on a fresh store otherwise
fail inside its migrations ("duplicate column name: step", "table latest_metrics already exists").
The lock is a file in the temporary directory named by the store's absolute path, so nothing is
written beside the store. Other stores (servers, databases) serialise themselves: no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Held around the first use of the store at `uri` (a resolved tracking URI)."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = Path(uri[len("sqlite:///"):].split("?", 1)[0]).absolute()
    key = hashlib.sha1(str(path).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"isep-mlflow-{key}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # (as the run folders' `.isep.lock`; released when closed)
        yield
