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
from isep.data.registry import get_task, suggest
from isep.data.store_paths import check_new_dataset_id
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
    check_shapes(path, data)
    return data


def check_shapes(path: Path, data: dict[str, np.ndarray]) -> None:
    """States and actions are (N, d) arrays; rewards and the end flags one value per step."""
    for k in ("observations", "actions", "next_observations"):
        if k in data and (data[k].ndim != 2 or data[k].shape[1] < 1):
            raise DatasetError(f"{path}: '{k}' has shape {data[k].shape}; a D4RL file holds (steps, dims) arrays")
    if "next_observations" in data and data["next_observations"].shape != data["observations"].shape:
        raise DatasetError(f"{path}: 'next_observations' {data['next_observations'].shape} does not match "
                           f"'observations' {data['observations'].shape}")
    for k in ("rewards", "terminals", "timeouts"):
        if data[k].size != len(data[k]):
            raise DatasetError(f"{path}: '{k}' has shape {data[k].shape}; a D4RL file holds one value per step")


def check_env(env_id: str, obs_dim: int, act_dim: int) -> str | None:
    """`env_id` if it is a Gymnasium env here whose spaces fit the data; None (with a warning on
    stderr) for an Adroit/Kitchen env whose package is not installed; else a `DatasetError`."""
    import sys

    import gymnasium as gym

    from isep.envs import ROBOTICS_ENVS, make_env_fn

    if env_id.startswith(ROBOTICS_ENVS):
        try:
            import gymnasium_robotics

            gym.register_envs(gymnasium_robotics)
        except ImportError:
            print(f"isep: warning: {env_id} needs gymnasium-robotics (`pip install -e '.[robotics]'`), which is not "
                  "installed: the dataset records its spaces but not its env", file=sys.stderr)
            return None
    try:
        gym.spec(env_id)
    except gym.error.Error as err:
        hint = suggest(env_id, list(gym.registry))
        raise DatasetError(f"unknown --env {env_id!r} ({type(err).__name__}); nothing was written.{hint} "
                           "Give a Gymnasium env id, or leave --env out to record only the spaces") from None
    env = make_env_fn(env_id)()  # as evaluation builds it (Kitchen on current MuJoCo: isep.envs)
    try:
        dims = (gym.spaces.flatdim(env.observation_space), gym.spaces.flatdim(env.action_space))
    finally:
        env.close()
    if dims != (obs_dim, act_dim):
        raise DatasetError(f"{env_id} has observation/action sizes {dims} but the file holds {(obs_dim, act_dim)}; "
                           "nothing was written. Pass the env that recorded the data (--env or --task)")
    return env_id


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
    check_new_dataset_id(dataset_id, minari_root())  # before the file is read: fail fast, write nothing
    data = read_d4rl_hdf5(path)
    if env_id is not None:
        env_id = check_env(env_id, data["observations"].shape[1], data["actions"].shape[1])
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
