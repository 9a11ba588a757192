"""`isep data import-d4rl`: convert a legacy D4RL HDF5 file into a local Minari dataset.

D4RL files hold flat arrays `observations, actions, rewards, terminals, timeouts` (and sometimes
`next_observations`). Episodes end at a terminal or a timeout. Minari needs T+1 observations per
episode: the next observation of the last step comes from `next_observations` when the file has
it; otherwise a terminated episode repeats its last observation (never bootstrapped from), and a
timed-out episode drops its last step, whose next state the file does not hold (IQL's loader drops
it too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from isep.data.minari_source import DatasetError, minari_root
from isep.data.registry import get_task
from isep.data.writer import Episode, write_dataset

REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")


def read_d4rl_hdf5(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a D4RL file, checked for presence, length and finiteness."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"D4RL file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in REQUIRED if k not in f]
            if missing:
                raise DatasetError(
                    f"{path} is not a D4RL dataset file: it lacks {missing} (it has {sorted(f.keys())})"
                )
            data = {k: np.asarray(f[k]) for k in (*REQUIRED, "next_observations") if k in f}
    except DatasetError:
        raise
    except OSError as err:
        raise DatasetError(f"{path} could not be read as HDF5 ({err}); the file may be corrupt or truncated") from err
    n = len(data["rewards"])
    bad = {k: len(v) for k, v in data.items() if len(v) != n}
    if bad:
        raise DatasetError(f"{path}: arrays have different lengths (rewards: {n}, {bad})")
    for k in ("observations", "actions", "rewards"):
        if not np.isfinite(data[k]).all():
            raise DatasetError(f"{path}: '{k}' holds non-finite values")
    return data


def split_episodes(data: dict[str, np.ndarray]) -> list[Episode]:
    """Cut the flat arrays into Minari episodes (see the module docstring for the last step)."""
    obs, act = data["observations"], data["actions"]
    rew = data["rewards"].astype(np.float64).reshape(-1)
    term = data["terminals"].astype(bool).reshape(-1)
    tout = data["timeouts"].astype(bool).reshape(-1)
    nxt = data.get("next_observations")
    ends = np.flatnonzero(term | tout)
    if len(ends) == 0 or ends[-1] != len(rew) - 1:
        ends = np.r_[ends, len(rew) - 1]  # the file's end closes the last episode (as a timeout)
    episodes, start = [], 0
    for end in ends:
        stop = end + 1
        terminated = bool(term[end])
        if nxt is not None:
            last_next = nxt[end]
        elif terminated:
            last_next = obs[end]
        else:
            stop -= 1  # next state unknown: drop the step
            last_next = obs[stop] if stop > start else None
        if stop > start and last_next is not None:
            t = stop - start
            truncs = np.zeros(t, dtype=bool)
            truncs[-1] = not terminated
            terms = np.zeros(t, dtype=bool)
            terms[-1] = terminated
            episodes.append(
                Episode(
                    observations=np.concatenate([obs[start:stop], last_next[None]]),
                    actions=act[start:stop],
                    rewards=rew[start:stop],
                    terminations=terms,
                    truncations=truncs,
                )
            )
        start = end + 1
    return episodes


def import_d4rl(
    path: str | Path,
    dataset_id: str,
    task: str | None = None,
    env_id: str | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
) -> str:
    """Write D4RL file `path` as local Minari dataset `dataset_id`; returns a one-line summary.

    `task` (a registry name) supplies the env id and D4RL's reference scores; explicit
    `env_id`/`ref_*` arguments override it.
    """
    spec = None
    if task is not None:
        spec = get_task(task)
        if spec is None:
            raise DatasetError(f"unknown --task '{task}'; `isep data list` shows the registry")
        env_id = env_id or spec.env_id
        ref_min_score = spec.ref_min_score if ref_min_score is None else ref_min_score
        ref_max_score = spec.ref_max_score if ref_max_score is None else ref_max_score
    data = read_d4rl_hdf5(path)
    episodes = split_episodes(data)
    write_dataset(
        dataset_id,
        episodes,
        env_id=env_id,
        ref_min_score=ref_min_score,
        ref_max_score=ref_max_score,
        description=f"Imported from the D4RL file {Path(path).name}" + (f" ({task})" if task else ""),
    )
    steps = sum(len(e.rewards) for e in episodes)
    return f"wrote '{dataset_id}' to {minari_root() / dataset_id}: {len(episodes)} episodes, {steps} steps"
