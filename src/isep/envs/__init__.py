"""Evaluation envs: the env a dataset records (or the registry's), under D4RL's protocol for the task.

`isep.data.registry` holds the protocol (episode length, Kitchen's sub-tasks); Adroit and Kitchen
need gymnasium-robotics (the `robotics` extra), and Kitchen is built from `isep.envs.kitchen`.
Imports neither torch nor Lightning, so `isep data check` can build envs quickly.
"""

from __future__ import annotations

from isep.errors import ConfigError

ROBOTICS_ENVS = ("AdroitHand", "FrankaKitchen")


def _register_robotics(env_id: str | None) -> None:
    """Register gymnasium-robotics' envs (Adroit, Kitchen); fails with the fix when it is missing."""
    import gymnasium as gym

    if not (env_id and env_id.startswith(ROBOTICS_ENVS)):
        return
    try:
        import gymnasium_robotics
    except ImportError as err:
        raise ConfigError(f"evaluating on {env_id} needs gymnasium-robotics: `pip install -e '.[robotics]'`") from err
    gym.register_envs(gymnasium_robotics)


def recorded_env_spec(dataset_id: str | None):
    """The evaluation env a local Minari dataset records (its `eval_env_spec`, else its `env_spec`),
    read from its metadata without building it; None when it records none."""
    from isep.data.minari_source import is_local

    if dataset_id is None or not is_local(dataset_id):  # (loading a missing id would create the store)
        return None
    try:
        import minari

        dataset = minari.load_dataset(dataset_id)
    except Exception:  # noqa: BLE001  (not readable here: the registry's env id is used)
        return None
    # Minari 0.5 keeps the evaluation spec private; `recover_environment` would build the env.
    return getattr(dataset, "_eval_env_spec", None) or dataset.env_spec


def evaluation_spec(env_id: str | None, dataset_id: str | None = None, max_episode_steps: int | None = None):
    """The spec of the evaluation env: the dataset's own evaluation env when it records one, else
    `env_id`; on a task of the registry, with D4RL's protocol (episode length, Kitchen's sub-tasks,
    see `isep.data.registry`); `max_episode_steps` overrides the length. Kitchen is built from
    `isep.envs.kitchen` (gymnasium-robotics' own fails on mujoco >= 3.12)."""
    import dataclasses

    import gymnasium as gym

    from isep.data.registry import task_for_minari_id

    spec = recorded_env_spec(dataset_id)
    _register_robotics(spec.id if spec is not None else env_id)
    if spec is None:
        if env_id is None:
            raise ConfigError(
                "no evaluation env: the dataset records none and the task registry has none for it; "
                "set `--evaluation.env_id` (e.g. HalfCheetah-v5) or disable evaluation with `--evaluation.every 0`"
            )
        try:
            spec = gym.spec(env_id)
        except gym.error.Error as err:
            raise ConfigError(f"cannot build the evaluation env {env_id}: {type(err).__name__}: {err}") from err
    task = task_for_minari_id(dataset_id) if dataset_id else None
    kwargs = {**spec.kwargs, **(task.eval_env_kwargs if task else {})}
    steps = max_episode_steps or (task.max_episode_steps if task else None) or spec.max_episode_steps
    spec = dataclasses.replace(spec, kwargs=kwargs, max_episode_steps=steps)
    if spec.id and spec.id.startswith("FrankaKitchen"):
        from isep.envs.kitchen import kitchen_spec

        spec = kitchen_spec(spec)
    return spec


def make_env_fn(env_id: str | None, dataset_id: str | None = None, max_episode_steps: int | None = None):
    """A factory of evaluation envs (`evaluation_spec`). Fails at once, with the fix, when the env
    cannot be built here."""
    import gymnasium as gym

    spec = evaluation_spec(env_id, dataset_id, max_episode_steps)

    def make():
        return gym.make(spec)

    try:
        make().close()
    except Exception as err:  # noqa: BLE001
        raise ConfigError(f"cannot build the evaluation env {spec.id}: {type(err).__name__}: {err}") from err
    return make
