"""Reference scores printed beside the measured cells: the paper's Tables 1-2 (`paper_tables.csv`,
shipped in the package, its source in its header) or one's own table in the same form.

The form: a CSV with columns `task`, `method`, `score` and optionally `pm` (the ± the source
gives), `table` and `label` (the row's name in the source); lines starting with `#` are comments.
A measured task matches a reference task of the same name, or one of the same environment and
dataset kind: D4RL's `halfcheetah-medium-replay-v2`, Minari's `mujoco/halfcheetah/medium-v0` and a
local `local/halfcheetah/medium-replay-v0` all name (environment, kind). Such a match is by name:
Minari's locomotion datasets are recorded on Gymnasium's v5 envs, not on D4RL's v2 data, so the
paper's numbers set the scale, not a value the runs must reproduce.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from isep.errors import CompareError

PAPER = "paper"
REQUIRED = ("task", "method", "score")
OPTIONAL = ("pm", "table", "label")
PAPER_SOURCE = "the paper's Tables 1-2 (D4RL v2 datasets, 5 seeds, 2000 epochs × 1000 updates on Gym)"
D4RL_NAME = re.compile(r"^(?P<env>[a-z0-9]+)-(?P<kind>[a-z-]+?)-v\d+$")
MINARI_ID = re.compile(r"^[^/]+/(?P<env>[^/]+)/(?P<kind>[^/]+?)-v\d+$")


def paper_file() -> Path:
    from importlib.resources import files

    return Path(str(files("isep.results") / "paper_tables.csv"))


def load_reference(spec: str) -> pd.DataFrame:
    """The reference table named by `--reference` (`paper` or a CSV path), checked; `attrs["source"]`
    says where it comes from."""
    path = paper_file() if spec == PAPER else Path(spec)
    if not path.is_file():
        raise CompareError(f"--reference {spec}: no such file; pass `paper` (the paper's Tables 1-2) or a CSV "
                           f"with columns {', '.join(REQUIRED)} (and optionally {', '.join(OPTIONAL)})")
    try:
        table = pd.read_csv(path, comment="#", dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CompareError(f"--reference {spec}: not a readable CSV ({first})") from None
    table.columns = [str(c).strip() for c in table.columns]
    unknown = [c for c in table.columns if c not in REQUIRED + OPTIONAL]
    missing = [c for c in REQUIRED if c not in table.columns]
    if unknown or missing:
        problem = f"unknown column(s) {', '.join(unknown)}" if unknown else f"no column(s) {', '.join(missing)}"
        raise CompareError(f"--reference {spec}: {problem}; a reference table has the columns "
                           f"{', '.join(REQUIRED)} and optionally {', '.join(OPTIONAL)}")
    if table.empty:
        raise CompareError(f"--reference {spec}: the table has no rows")
    for column in ("score", "pm"):
        if column not in table.columns:
            table[column] = ""
        values = pd.to_numeric(table[column].replace("", None), errors="coerce")
        bad = table[values.isna() & (table[column] != "")] if column == "pm" else table[values.isna()]
        if len(bad):
            line = int(bad.index[0]) + 2
            raise CompareError(f"--reference {spec}: row {line} (after the header): {column} "
                               f"{bad[column].iloc[0]!r} is not a number")
        table[column] = values.astype(float)
    for column in OPTIONAL[1:]:
        if column not in table.columns:
            table[column] = ""
    table.attrs["source"] = PAPER_SOURCE if spec == PAPER else str(path)
    return table


def task_key(name: str) -> tuple[str, str] | None:
    """(environment, dataset kind) of a D4RL task name or a Minari-style id; None otherwise."""
    for pattern in (MINARI_ID, D4RL_NAME):
        m = pattern.match(name.strip().lower())
        if m:
            return m.group("env"), m.group("kind")
    return None


def match_tasks(measured: list[str], reference: pd.DataFrame) -> dict[str, str]:
    """Measured task → the reference task it matches (same name, else same environment and kind)."""
    ref_tasks = list(dict.fromkeys(reference["task"]))
    by_key = {task_key(t): t for t in ref_tasks if task_key(t)}
    out = {}
    for task in measured:
        if task in ref_tasks:
            out[task] = task
        elif task_key(task) in by_key:
            out[task] = by_key[task_key(task)]
    return out
