"""Task registry: the paper's D4RL task names mapped onto Minari datasets, envs and reference scores.

The paper (Tables 1-2) uses the legacy D4RL names. Minari republishes most of them (Gymnasium v5
MuJoCo for locomotion, `D4RL/...` ports for Adroit and Kitchen); locomotion medium-replay is not
published and must be imported from D4RL's own HDF5 file (`isep data import-d4rl`), after which
the task name resolves to the imported local id.

Reference scores are D4RL's (`d4rl/infos.py`, REF_MIN_SCORE / REF_MAX_SCORE), so normalized scores
read on the same scale as the paper's tables. Minari's v5 locomotion envs are not D4RL's v2
(mujoco-py) envs: the scale is the same, the numbers are close but not identical.

Evaluation follows D4RL's protocol for each task, whatever env the data was recorded with: its
episode length (`d4rl/hand_manipulation_suite/__init__.py`: pen 100 steps; `d4rl/kitchen/__init__.py`:
280; locomotion keeps the env's own 1000) and, on Kitchen, its four sub-tasks, each rewarded once and
the episode ended when all four are done (`d4rl/kitchen/kitchen_envs.py`: REMOVE_TASKS_WHEN_COMPLETE,
TERMINATE_ON_TASK_COMPLETE), so that a return counts the completed sub-tasks, 0-4. Minari's Kitchen
ports record their env without either (`remove_task_when_completed=False`, 450 steps on mixed/partial).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal

RewardTransform = Literal["iql_locomotion", "none"]

D4RL_HDF5_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl"


@dataclass(frozen=True)
class TaskSpec:
    """What a D4RL task name stands for.

    `minari_ids` are combined in order (medium-expert = medium + expert); `import_id` is the local
    id that `isep data import-d4rl` writes for tasks Minari does not publish, and is preferred
    whenever it exists locally. `eval_episodes`, `max_episode_steps` (None: the env's own) and
    `eval_env_kwargs` are the evaluation protocol (paper 5.1.2; D4RL's envs). `extra`: the optional
    dependencies of isep (pyproject.toml) that its env needs.
    """

    name: str
    domain: Literal["locomotion", "adroit", "kitchen"]
    env_id: str
    ref_min_score: float
    ref_max_score: float
    minari_ids: tuple[str, ...] = ()
    import_id: str | None = None
    d4rl_file: str | None = None
    reward_transform: RewardTransform = "none"
    eval_episodes: int = 20
    max_episode_steps: int | None = None
    eval_env_kwargs: dict = field(default_factory=dict, hash=False)
    extra: str | None = None

    @property
    def published(self) -> bool:
        return bool(self.minari_ids)


# D4RL reference returns (d4rl/infos.py).
_REF = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "pen": (96.262799, 3076.8331017826877),
    "kitchen": (0.0, 4.0),
}
_LOCO_ENV = {"halfcheetah": "HalfCheetah-v5", "hopper": "Hopper-v5", "walker2d": "Walker2d-v5"}
# D4RL's evaluation episode lengths (see the module docstring).
_MAX_STEPS = {"pen": 100, "kitchen": 280}
# The four sub-tasks of each Kitchen dataset (d4rl/kitchen: KitchenMicrowaveKettleLightSliderV0 for
# complete and partial, KitchenMicrowaveKettleBottomBurnerLightV0 for mixed).
KITCHEN_SUBTASKS = {
    "complete": ("microwave", "kettle", "light switch", "slide cabinet"),
    "partial": ("microwave", "kettle", "light switch", "slide cabinet"),
    "mixed": ("microwave", "kettle", "bottom burner", "light switch"),
}
# The modules each optional extra of pyproject.toml provides (what `isep data check` imports).
EXTRAS = {"robotics": ("gymnasium_robotics",)}


def _locomotion(env: str, kind: str) -> TaskSpec:
    mins, maxs = _REF[env]
    minari = {
        "medium": (f"mujoco/{env}/medium-v0",),
        "medium-expert": (f"mujoco/{env}/medium-v0", f"mujoco/{env}/expert-v0"),
        "medium-replay": (),
    }[kind]
    return TaskSpec(
        name=f"{env}-{kind}-v2",
        domain="locomotion",
        env_id=_LOCO_ENV[env],
        ref_min_score=mins,
        ref_max_score=maxs,
        minari_ids=minari,
        import_id=f"d4rl/{env}/{kind}-v2",
        d4rl_file=f"{D4RL_HDF5_URL}/gym_mujoco_v2/{env}_{kind.replace('-', '_')}-v2.hdf5",
        reward_transform="iql_locomotion",
        eval_episodes=20,
    )


def _manipulation(family: str, kind: str, suffix: str, env_id: str, eval_env_kwargs: dict | None = None) -> TaskSpec:
    """Adroit pen (`-v1`) and Kitchen (`-v0`) tasks: Minari's `D4RL/...-v2` ports, raw rewards."""
    mins, maxs = _REF[family]
    return TaskSpec(
        name=f"{family}-{kind}-{suffix}",
        domain="adroit" if family == "pen" else "kitchen",
        env_id=env_id,
        ref_min_score=mins,
        ref_max_score=maxs,
        minari_ids=(f"D4RL/{family}/{kind}-v2",),
        import_id=f"d4rl/{family}/{kind}-{suffix}",
        eval_episodes=50,
        max_episode_steps=_MAX_STEPS[family],
        eval_env_kwargs=eval_env_kwargs or {},
        extra="robotics",
    )


def _adroit(kind: str) -> TaskSpec:
    return _manipulation("pen", kind, "v1", "AdroitHandPen-v1")


def _kitchen(kind: str) -> TaskSpec:
    protocol = {"tasks_to_complete": list(KITCHEN_SUBTASKS[kind]), "remove_task_when_completed": True,
                "terminate_on_tasks_completed": True}
    return _manipulation("kitchen", kind, "v0", "FrankaKitchen-v1", protocol)


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        *(
            _locomotion(env, kind)
            for kind in ("medium", "medium-replay", "medium-expert")
            for env in ("halfcheetah", "hopper", "walker2d")
        ),
        _adroit("human"),
        _adroit("cloned"),
        _kitchen("complete"),
        _kitchen("partial"),
        _kitchen("mixed"),
    )
}


def get_task(name: str) -> TaskSpec | None:
    """The registry entry for a D4RL task name, or None when `name` is not one."""
    return TASKS.get(name)


def task_for_minari_id(dataset_id: str) -> TaskSpec | None:
    """The task whose data is exactly this one Minari id (used to find reference scores)."""
    for task in TASKS.values():
        if task.minari_ids == (dataset_id,) or task.import_id == dataset_id:
            return task
    return None


def suggest(name: str, candidates: list[str]) -> str:
    """A 'did you mean' clause for an unknown name, empty when nothing is close."""
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


LOCOMOTION_ENVS = ("HalfCheetah", "Hopper", "Walker2d", "Ant")


def default_reward_transform(env_id: str | None) -> RewardTransform:
    """IQL's locomotion scaling for MuJoCo locomotion envs, raw rewards elsewhere."""
    if env_id and env_id.split("-")[0] in LOCOMOTION_ENVS:
        return "iql_locomotion"
    return "none"
