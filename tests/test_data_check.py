"""`isep data check`: what is ready here among the paper's 14 tasks, and the command that makes each ready."""

from __future__ import annotations

import socket
import sys

import pytest

from isep.data.check import check_main
from isep.data.registry import TASKS
from tests.helpers import run_isep


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("`isep data check` opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_ready_tasks_exit_0_through_the_cli(use_robotics_store):
    out = run_isep("data", "check", "pen-human-v1", "kitchen-mixed-v0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 of 2 tasks ready." in out.stdout
    for name in ("pen-human-v1", "kitchen-mixed-v0"):
        (row,) = [line for line in out.stdout.splitlines() if line.strip().startswith(name + " ")]
        assert row.split()[1:] == ["ok", "ok", "ok", "ready"]


def test_each_missing_task_gets_the_command_that_makes_it_ready(use_robotics_store, no_network, capsys):
    assert check_main([]) == 1
    out = capsys.readouterr().out
    assert "2 of 14 tasks ready." in out
    fixes = {line.split(":", 1)[0].strip(): line.split(":", 1)[1] for line in out.split("To make a task ready, run:")[1].splitlines()
             if ":" in line}
    assert set(fixes) == set(TASKS) - {"pen-human-v1", "kitchen-mixed-v0"}
    assert fixes["pen-cloned-v1"].endswith("minari download D4RL/pen/cloned-v2")
    assert fixes["walker2d-medium-expert-v2"].endswith(
        "minari download mujoco/walker2d/medium-v0 && minari download mujoco/walker2d/expert-v0")
    assert fixes["hopper-medium-replay-v2"].strip() == (
        "curl -LO http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/hopper_medium_replay-v2.hdf5 && "
        "isep data import-d4rl hopper_medium_replay-v2.hdf5 --id d4rl/hopper/medium-replay-v2 --task hopper-medium-replay-v2")


def test_a_missing_extra_names_the_install(use_robotics_store, no_network, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)  # import gymnasium_robotics → ImportError
    assert check_main(["pen-human-v1", "hopper-medium-v2"]) == 1
    out = capsys.readouterr().out
    (row,) = [line for line in out.splitlines() if line.strip().startswith("pen-human-v1 ")]
    assert row.split()[1:3] == ["ok", "needs"] and "missing (gymnasium_robotics)" in row
    assert "  pen-human-v1: pip install -e '.[robotics]'" in out.splitlines()


def test_unknown_task_is_a_clear_error():
    out = run_isep("data", "check", "hopper-medum-v2")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.startswith("isep: error: unknown task 'hopper-medum-v2'") and "Did you mean 'hopper-medium-v2'" in out.stderr


@pytest.fixture
def hopper_medium_store(tmp_path, monkeypatch):
    """A store holding hopper-medium-v2's Minari id, written from real Hopper-v5 rollouts, and a
    writer for the broken variants of it."""
    from isep.data.writer import write_dataset
    from tests.conftest import rollout_episodes

    root = tmp_path / "store"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    (dataset_id,) = TASKS["hopper-medium-v2"].minari_ids

    def write(env_id: str = "Hopper-v5") -> Path:
        write_dataset(dataset_id, rollout_episodes(env_id, 3, 30, seed=0), env_id=env_id)
        return root / dataset_id

    return write


def _row_and_problem(out: str, task: str) -> tuple[list[str], str]:
    (row,) = [line for line in out.splitlines() if line.strip().startswith(task + " ")]
    problems = [line for line in out.splitlines() if line.startswith(f"  {task}: ") and "rm -r" in line]
    return row.split()[1:], "\n".join(problems)


def test_a_readable_dataset_of_the_right_env_is_ready(hopper_medium_store, no_network, capsys):
    hopper_medium_store()
    assert check_main(["hopper-medium-v2"]) == 0
    assert _row_and_problem(capsys.readouterr().out, "hopper-medium-v2")[0] == ["ok", "ok", "ok", "ready"]


@pytest.mark.parametrize("damage, state, says", [
    ("truncate", "unreadable", "could not be read"),
    ("empty", "unreadable", "could not be read"),
    ("other env", "wrong", "another environment's data is in this slot"),
])
def test_data_check_opens_what_it_calls_ready(damage, state, says, hopper_medium_store, no_network, capsys):
    folder = hopper_medium_store("Walker2d-v5" if damage == "other env" else "Hopper-v5")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    main_data = folder / "data" / "main_data.hdf5"
    if damage == "truncate":
        main_data.write_bytes(main_data.read_bytes()[: main_data.stat().st_size // 2])
    elif damage == "empty":
        for f in files:
            if f.name != "metadata.json":
                f.write_bytes(b"")
    assert check_main(["hopper-medium-v2"]) == 1
    row, problem = _row_and_problem(capsys.readouterr().out, "hopper-medium-v2")
    assert row[0] == state and row[-1] == "READY"  # (NOT READY)
    assert says in problem and f"rm -r {folder}" in problem and "minari download mujoco/hopper/medium-v0" in problem
