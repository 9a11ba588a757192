"""The per-task configs: in sync with their generator, valid for the CLI, and holding Appendix C's values."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from isep.data.registry import TASKS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
spec = importlib.util.spec_from_file_location("generate", CONFIGS / "generate.py")
generate = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate)


def test_yaml_files_match_the_generator():
    expected = generate.all_configs()
    assert len(expected) == 28
    for name, text in expected.items():
        assert (CONFIGS / name).read_text() == text, f"{name} differs: run `python configs/generate.py`"


def test_one_config_per_paper_task_and_actor():
    tasks = {yaml.safe_load((CONFIGS / n).read_text())["data"]["dataset"] for n in generate.all_configs()}
    assert tasks == set(TASKS)


@pytest.mark.parametrize("name", sorted(generate.all_configs()) + ["toy/sparse_isep_fm.yaml", "toy/sparse_gaussian.yaml",
                                                                  "toy/sparse_cfgrl.yaml", "toy/danger_isep_fm.yaml"])
def test_config_parses_with_the_cli(name, capsys):
    from isep.cli import build_cli

    with pytest.raises(SystemExit) as exit_:
        build_cli(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert exit_.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    written = yaml.safe_load((CONFIGS / name).read_text())
    for section in ("model", "data", "evaluation"):
        for key, value in written.get(section, {}).items():
            assert resolved[section][key] == value, f"{name}: {section}.{key}"


@pytest.mark.parametrize("task", ["walker2d-medium-v2", "hopper-medium-replay-v2", "kitchen-mixed-v0", "pen-cloned-v1"])
def test_appendix_c_values(task):
    stem, (g_lam, g_tau, beta), (f_lam, f_tau, w) = generate.TABLES[task]
    flow = yaml.safe_load((CONFIGS / f"{stem}.yaml").read_text())["model"]
    gauss = yaml.safe_load((CONFIGS / f"{stem}_gaussian.yaml").read_text())["model"]
    assert (flow["actor"], flow["lam"], flow["expectile"], flow["guidance"]) == ("flow", f_lam, f_tau, w)
    assert (gauss["actor"], gauss["lam"], gauss["expectile"], gauss["beta"]) == ("gaussian", g_lam, g_tau, beta)


def test_walker_med_is_table_4():
    model = yaml.safe_load((CONFIGS / "walker_med.yaml").read_text())["model"]
    assert (model["actor"], model["lam"], model["expectile"], model["guidance"]) == ("flow", 0.3, 0.8, 2.0)


def test_configs_evaluate_as_the_paper_and_d4rl():
    """Paper 5.1.2: 20 rollouts on Gym-MuJoCo, 50 on Adroit and Kitchen; D4RL's episode lengths (pen 100
    steps, kitchen 280, locomotion the env's own 1000)."""
    expected = {"locomotion": (20, None), "adroit": (50, 100), "kitchen": (50, 280)}
    for name in generate.all_configs():
        config = yaml.safe_load((CONFIGS / name).read_text())
        task = TASKS[config["data"]["dataset"]]
        evaluation = (config["evaluation"]["episodes"], config["evaluation"]["max_episode_steps"])
        assert evaluation == expected[task.domain] == (task.eval_episodes, task.max_episode_steps), name
