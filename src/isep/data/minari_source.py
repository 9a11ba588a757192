"""Resolve dataset names (D4RL task, Minari id) against the local Minari store and read them.

Every failure a user can cause (unknown id, dataset not downloaded, unpublished task, wrong
`MINARI_DATASETS_PATH`, unreadable file) raises `DatasetError` with a message that says what to do.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from isep.data.registry import TASKS, TaskSpec, get_task, suggest, task_for_minari_id
from isep.data.transitions import Transitions, episode_returns_from_flags
from isep.errors import DatasetError

MINARI_ID = re.compile(r"^[\w.-]+(/[\w.-]+)*/[\w.-]+-v\d+$")


def minari_root() -> Path:
    """The local Minari store (`MINARI_DATASETS_PATH`, else Minari's default `~/.minari/datasets`)."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env).expanduser() if env else Path.home() / ".minari" / "datasets"


def local_dataset_ids(root: Path | None = None) -> list[str]:
    """Ids of the datasets in the local store, found by their `data/metadata.json` files.

    Read from the folder tree rather than with `minari.list_local_datasets`, which imports every
    dataset and creates a mistyped store folder silently.
    """
    root = root or minari_root()
    if not root.is_dir():
        return []
    ids = []
    for meta in root.glob("**/data/metadata.json"):
        ids.append(meta.parent.parent.relative_to(root).as_posix())
    return sorted(ids)


def is_local(dataset_id: str, root: Path | None = None) -> bool:
    return ((root or minari_root()) / dataset_id / "data" / "metadata.json").is_file()


@dataclass(frozen=True)
class ResolvedDataset:
    """What a user's dataset name resolved to: the Minari ids to read and the task (if any)."""

    name: str
    minari_ids: tuple[str, ...]
    task: TaskSpec | None


def resolve(name: str, root: Path | None = None) -> ResolvedDataset:
    """Map a D4RL task name or a Minari id onto Minari ids; no file is read."""
    root = root or minari_root()
    task = get_task(name)
    if task is not None:
        if task.import_id and is_local(task.import_id, root):
            return ResolvedDataset(name, (task.import_id,), task)
        if not task.published:
            raise DatasetError(
                f"Minari does not publish '{name}', and no imported copy '{task.import_id}' is in the "
                f"local store {root}. Download D4RL's file ({task.d4rl_file}) and convert it:\n"
                f"  isep data import-d4rl {Path(task.d4rl_file or 'FILE.hdf5').name} "
                f"--id {task.import_id} --task {name}"
            )
        return ResolvedDataset(name, task.minari_ids, task)
    if MINARI_ID.match(name):
        return ResolvedDataset(name, (name,), task_for_minari_id(name))
    raise DatasetError(
        f"Unknown dataset '{name}': it is neither a D4RL task of the registry nor a Minari id "
        f"(namespace/name-vN).{suggest(name, list(TASKS) + local_dataset_ids(root))} "
        "`isep data list` shows the registry and the local store."
    )


def ensure_available(dataset_id: str, download: bool, root: Path | None = None) -> None:
    """Make sure `dataset_id` is in the local store, downloading only when allowed."""
    root = root or minari_root()
    if is_local(dataset_id, root):
        return
    env_note = (
        ""
        if os.environ.get("MINARI_DATASETS_PATH")
        else " (MINARI_DATASETS_PATH is unset, so Minari's default store was used)"
    )
    if not root.is_dir():
        env_note += "; that folder does not exist: is MINARI_DATASETS_PATH mistyped?"
    if not download:
        raise DatasetError(
            f"Dataset '{dataset_id}' is not in the local Minari store {root}{env_note}. Fetch it with\n"
            f"  minari download {dataset_id}\n"
            "(needs network access and `pip install 'minari[hf]'`), or pass `--data.download true`; "
            "or point MINARI_DATASETS_PATH at a store that holds it."
        )
    try:
        import minari

        minari.download_dataset(dataset_id)
    except Exception as err:  # network, unknown remote id, missing minari[hf]
        raise DatasetError(
            f"Could not download '{dataset_id}' into {root}: {type(err).__name__}: {err}. "
            "Check the id with `minari list remote`, the network, and `pip install 'minari[hf]'`."
        ) from err


def flatten_observations(obs, space) -> np.ndarray:
    """(T, ...) Box arrays or dicts of them → (T, D) float32, leaves in the space's key order."""
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return np.concatenate([flatten_observations(obs[k], space[k]) for k in space.keys()], axis=1)
    arr = np.asarray(obs)
    return arr.reshape(arr.shape[0], -1).astype(np.float32)


def select_keys(space, keys: list[str] | None):
    """The part of a Dict observation space that is used (all of it when `keys` is None)."""
    from gymnasium import spaces

    if keys is None or not isinstance(space, spaces.Dict):
        return space
    missing = [k for k in keys if k not in space.keys()]
    if missing:
        raise DatasetError(f"observation keys {missing} not in the dataset's observation space {list(space.keys())}")
    return spaces.Dict({k: space[k] for k in keys})


def load_transitions(dataset_id: str, obs_keys: list[str] | None = None, root: Path | None = None) -> Transitions:
    """Read a local Minari dataset into flat transition arrays.

    An episode holds T+1 observations and T actions; the last step of an episode cut by a time
    limit keeps its real next observation (bootstrapped through), a terminated one is not.
    """
    import minari

    root = root or minari_root()
    path = root / dataset_id
    try:
        dataset = minari.load_dataset(dataset_id)
        space = select_keys(dataset.observation_space, obs_keys)
        cols: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "act", "rew", "next", "term", "trunc")}
        for ep in dataset.iterate_episodes():
            obs = flatten_observations(ep.observations, space)
            cols["obs"].append(obs[:-1])
            cols["next"].append(obs[1:])
            cols["act"].append(np.asarray(ep.actions, dtype=np.float32).reshape(len(ep.rewards), -1))
            cols["rew"].append(np.asarray(ep.rewards, dtype=np.float32))
            cols["term"].append(np.asarray(ep.terminations, dtype=bool))
            trunc = np.asarray(ep.truncations, dtype=bool).copy()
            trunc[-1] = trunc[-1] or not cols["term"][-1][-1]  # an episode that just ends is cut
            cols["trunc"].append(trunc)
        meta = dict(dataset.storage.metadata)
    except DatasetError:
        raise
    except Exception as err:
        raise DatasetError(
            f"Dataset '{dataset_id}' at {path} could not be read ({type(err).__name__}: {err}). "
            "The file may be corrupt or half-written: delete that folder and download or import it again."
        ) from err
    if not cols["rew"]:
        raise DatasetError(f"Dataset '{dataset_id}' at {path} holds no episodes.")
    cat = {k: np.concatenate(v) for k, v in cols.items()}
    ends = cat["term"] | cat["trunc"]
    return Transitions(
        observations=cat["obs"],
        actions=cat["act"],
        rewards=cat["rew"],
        next_observations=cat["next"],
        terminals=cat["term"].astype(np.float32),
        timeouts=cat["trunc"],
        episode_returns=episode_returns_from_flags(cat["rew"], ends),
        meta={
            "dataset_id": dataset_id,
            "env_spec": meta.get("env_spec"),
            "ref_min_score": meta.get("ref_min_score"),
            "ref_max_score": meta.get("ref_max_score"),
        },
    )


def env_id_of(dataset_id: str, root: Path | None = None) -> str | None:
    """The Gymnasium env id recorded in a local dataset's metadata, without loading its data."""
    import json

    meta_file = (root or minari_root()) / dataset_id / "data" / "metadata.json"
    try:
        spec = json.loads(meta_file.read_text()).get("env_spec")
        return json.loads(spec)["id"] if spec else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
