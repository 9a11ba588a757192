"""The MLflow store, opened read-only, through MLflow's public client (`MlflowClient`).

A report never writes to the store. Opening a sqlite file with MLflow creates the tables it
lacks, migrates an older schema and re-creates a missing default experiment, so a local sqlite
store is first checked through a read-only sqlite connection (`mode=ro`: is it an MLflow store at
all?) and then copied with sqlite's online backup into a temporary file, which is what
`MlflowClient` opens: whatever MLflow does on opening happens to the copy, which is deleted
afterwards. The backup is one consistent snapshot, also while a sweep is writing to the store.
A file store is opened only when MLflow would not add to it; a tracking server is only read
(REST). A database server (postgresql://, mysql://) is opened by MLflow as it is: point compare
at it with a read-only database user.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from isep.errors import CompareError

DEFAULT_STORE = "sqlite:///mlflow.db"
# The tables every MLflow sqlite store has had since MLflow 1.x: a file without them is no store.
MLFLOW_TABLES = ("alembic_version", "experiments", "runs", "metrics", "params", "tags")


def resolve_tracking_uri(arg: str | None) -> str:
    """--tracking_uri, else $MLFLOW_TRACKING_URI, else ./mlflow.db; a local store must exist."""
    uri = arg or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE
    local = local_store_path(uri)
    if local is not None and not local.exists():
        where = "" if arg else " (from $MLFLOW_TRACKING_URI)" if os.environ.get("MLFLOW_TRACKING_URI") else \
            " (the default: run from the directory holding mlflow.db, or pass --tracking_uri)"
        raise CompareError(f"no MLflow store at {local.absolute()} for tracking URI {uri}{where}")
    return uri


def local_store_path(uri: str) -> Path | None:
    """The file or directory a local tracking URI points at (None for servers and databases)."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        return None if path in ("", ":memory:") else Path(path)
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" not in uri and ":" not in uri[:2]:
        return Path(uri)  # a bare path is MLflow's file store
    return None


def check_sqlite_store(path: Path, uri: str) -> None:
    """Refuse a file that is not an MLflow sqlite store, read through a read-only connection."""
    try:
        con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error as err:
        raise CompareError(f"{path.absolute()} ({uri}) is not a readable MLflow sqlite store: {err}; "
                           "pass the mlflow.db that `isep fit` wrote") from None
    missing = [t for t in MLFLOW_TABLES if t not in tables]
    if missing:
        raise CompareError(f"{path.absolute()} ({uri}) is not an MLflow store (tables are missing: "
                           f"{', '.join(missing)}); compare never creates a store: pass the mlflow.db that "
                           "`isep fit` wrote")


def snapshot(path: Path, copy: Path) -> None:
    """A consistent copy of a sqlite file, read through a read-only connection (sqlite's backup)."""
    src = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    dst = sqlite3.connect(copy)
    try:
        src.backup(dst)
    except sqlite3.Error as err:
        raise CompareError(f"cannot read the MLflow store {path.absolute()}: {err}") from None
    finally:
        dst.close()
        src.close()


@contextmanager
def open_store(uri: str) -> Iterator:
    """An `MlflowClient` that reads the store of `uri` without writing to it (see the module)."""
    from mlflow.tracking import MlflowClient

    local = local_store_path(uri)
    if uri.startswith("sqlite:///") and local is not None:
        check_sqlite_store(local, uri)
        with tempfile.TemporaryDirectory(prefix="isep-compare-") as tmp:
            copy = Path(tmp) / "snapshot.db"
            snapshot(local, copy)
            yield MlflowClient(tracking_uri=f"sqlite:///{copy}")
        return
    if local is not None and not (local / ".trash").is_dir():
        raise CompareError(f"{local.absolute()} is not an MLflow file store (no .trash folder): MLflow would add "
                           "one on opening it, and compare does not write to a store")
    yield MlflowClient(tracking_uri=uri)


def paged(fetch) -> list:
    """Every page of an MLflow search: `fetch(page_token)` returns one page (with `.token`)."""
    out, token = [], None
    while True:
        page = fetch(token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def list_experiments(client) -> list:
    from mlflow.entities import ViewType

    return paged(lambda t: client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=t))


def select_experiments(all_exps: list, requested: list[str] | None) -> list:
    """The experiments named by --experiment (repeated or comma-separated), else all of them."""
    if not requested:
        return sorted(all_exps, key=lambda e: e.name)
    by_name = {e.name: e for e in all_exps}
    names: list[str] = []
    for item in requested:
        parts = [item] if item in by_name else [s.strip() for s in item.split(",") if s.strip()]
        names.extend(p for p in parts if p not in names)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        known = ", ".join(sorted(by_name)) or "(none)"
        raise CompareError(f"unknown experiment {', '.join(repr(n) for n in unknown)}; known experiments: {known}")
    return [by_name[n] for n in names]


def search_runs(client, exps: list, filter_string: str) -> list:
    from mlflow.entities import ViewType

    ids = [e.experiment_id for e in exps]
    return paged(lambda t: client.search_runs(ids, filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                                               max_results=1000, page_token=t))


def metric_history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one metric of a run, by step; a step logged twice keeps its latest value."""
    by_step: dict[int, float] = {}
    for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
        by_step[int(m.step)] = float(m.value)
    return sorted(by_step.items())
