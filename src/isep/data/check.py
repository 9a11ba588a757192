"""`isep data check`: which of the paper's tasks can be trained and evaluated here, and for each that
cannot, the one command that makes it ready.

A task is ready when its optional extra is installed, its data is in the local Minari store (or
imported from D4RL's file) and a fit would load it — each dataset is read to its end as a fit reads
it, its episodes and steps are there and agree, and its observations and actions have the sizes of
the task's environment — and its evaluation env builds here. Reads only the local store and the
installed packages: never the network.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from isep.data.minari_source import is_local, minari_root, resolve
from isep.data.registry import EXTRAS, TASKS, TaskSpec, suggest
from isep.errors import DatasetError, ISEPError


@dataclass
class Readiness:
    """What one task lacks here (nothing when ready), the commands that supply it, and what no
    command supplies (an env that fails to build for another reason)."""

    task: TaskSpec
    data: str = "ok"
    env: str = "ok"
    extra: str = "ok"
    fixes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    local_ids: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return self.data == self.env == self.extra == "ok"


def _missing_modules(extra: str | None) -> list[str]:
    missing = []
    for module in EXTRAS.get(extra, ()) if extra else ():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    return missing


def _check_data(task: TaskSpec, root: Path, result: Readiness) -> str | None:
    """Fills in the data column; returns the local dataset (whose recorded env is evaluated), if any."""
    try:
        ids = resolve(task.name, root).minari_ids
    except DatasetError:  # not on Minari and not imported: D4RL's own file
        file = Path(task.d4rl_file or "FILE.hdf5").name
        result.data = "not imported"
        result.fixes.append(f"curl -LO {task.d4rl_file} && isep data import-d4rl {file} --id {task.import_id} "
                            f"--task {task.name}")
        return None
    missing = [i for i in ids if not is_local(i, root)]
    if not missing:
        result.local_ids = list(ids)
        return ids[0]
    result.data = "not downloaded"
    if importlib.util.find_spec("huggingface_hub") is None:  # what `minari download` needs (minari[hf])
        result.fixes.append("pip install -e '.[download]'")
    result.fixes += [f"minari download {i}" for i in missing]
    return None


def check_task(task: TaskSpec, root: Path | None = None) -> Readiness:
    """The readiness of one task: extra, data, env (built only when its extra is installed)."""
    from isep.envs import make_env_fn

    root = root or minari_root()
    result = Readiness(task)
    missing = _missing_modules(task.extra)
    if missing:
        result.extra = f"missing ({', '.join(missing)})"
        result.env = "needs the extra"
        result.fixes.append(f"pip install -e '.[{task.extra}]'")
    dataset_id = _check_data(task, root, result) or (task.minari_ids or (task.import_id,))[0]
    if not missing:
        try:
            make_env_fn(task.env_id, dataset_id)  # builds the evaluation env once, under the task's protocol
        except ISEPError as err:
            result.env = "fails"
            result.problems.append(str(err))
    if result.local_ids and result.env == "ok":
        _open_data(task, root, result)
    return result


def _family(env_id: str | None) -> str:
    """`Hopper-v5` → `hopper`: the environment without its version."""
    return (env_id or "").split("/")[-1].rsplit("-v", 1)[0].lower()


def _sizes_of(env_id: str, dataset_id: str) -> tuple[int, int]:
    """(observation, action) sizes of the env a fit would evaluate the dataset in, flattened."""
    import gymnasium as gym

    from isep.envs import make_env_fn

    env = make_env_fn(env_id, dataset_id)()
    try:
        return gym.spaces.flatdim(env.observation_space), gym.spaces.flatdim(env.action_space)
    finally:
        env.close()


def _open_data(task: TaskSpec, root: Path, result: Readiness) -> None:
    """Read each local dataset of `task` as a fit does; its recorded env must be the task's, and its
    sizes those of the env a fit evaluates it in."""
    from isep.data.minari_source import env_id_of, load_transitions

    for dataset_id in result.local_ids:
        again = f"rm -r {root / dataset_id} && " + (f"minari download {dataset_id}" if dataset_id in task.minari_ids
                                                    else f"isep data import-d4rl FILE.hdf5 --id {dataset_id} --task {task.name}")
        try:
            data = load_transitions(dataset_id, None, root)
        except ISEPError as err:
            result.data = "unreadable"
            result.problems.append(f"{dataset_id}: {str(err).split(' (')[0]}: delete it and fetch it again ({again})")
            continue
        rows = {len(data.observations), len(data.actions), len(data.rewards), len(data.next_observations)}
        sizes, recorded = (data.observations.shape[1], data.actions.shape[1]), env_id_of(dataset_id, root)
        if len(rows) != 1 or not rows.pop():
            result.data = "inconsistent"
            result.problems.append(f"{dataset_id}: its observations, actions and rewards do not line up; fetch it again ({again})")
        elif recorded and _family(recorded) != _family(task.env_id):
            result.data = "wrong env"
            result.problems.append(f"{dataset_id}: recorded in {recorded}, but {task.name} is {task.env_id}: another "
                                   f"environment's data is in this slot; replace it ({again})")
        elif sizes != (expected := _sizes_of(task.env_id, dataset_id)):
            result.data = "wrong env"
            result.problems.append(f"{dataset_id}: observation/action sizes {sizes}, but its evaluation env has {expected}; "
                                   f"replace it ({again})")


def format_report(results: list[Readiness], root: Path) -> str:
    note = "MINARI_DATASETS_PATH" if os.environ.get("MINARI_DATASETS_PATH") else "Minari's default; set MINARI_DATASETS_PATH"
    lines = [f"Local Minari store: {root} ({note})", ""]
    lines.append(f"  {'task':30} {'data':16} {'env':16} {'extra':26} ")
    for r in results:
        lines.append(f"  {r.task.name:30} {r.data:16} {r.env:16} {r.extra:26} {'ready' if r.ready else 'NOT READY'}")
    todo = [r for r in results if not r.ready]
    lines += ["", f"{len(results) - len(todo)} of {len(results)} tasks ready."]
    if any(r.fixes for r in todo):
        lines += ["", "To make a task ready, run:"]
        lines += [f"  {r.task.name}: {' && '.join(r.fixes)}" for r in todo if r.fixes]
    lines += [f"  {r.task.name}: {problem}" for r in todo for problem in r.problems]
    return "\n".join(lines)


def check_main(names: list[str]) -> int:
    """`isep data check [TASK ...]`: prints the report; 0 when every named task (default: all 14) is ready."""
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise DatasetError(f"unknown task '{unknown[0]}': `isep data check` takes the paper's D4RL task names "
                           f"(`isep data list`).{suggest(unknown[0], list(TASKS))}")
    root = minari_root()
    results = [check_task(TASKS[n], root) for n in (names or list(TASKS))]
    print(format_report(results, root))
    return 0 if all(r.ready for r in results) else 1
