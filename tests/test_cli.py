"""`isep` end to end through the real LightningCLI, on small real Minari datasets."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from isep.cli import main
from tests.conftest import CONFIGS, SHARED_STORE, TINY
from tests.helpers import isep_here, run_isep


def read_metrics(root: Path) -> list[dict]:
    (metrics,) = root.rglob("metrics.csv")
    with open(metrics) as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("config", ["walker_med.yaml", "walker_med_gaussian.yaml"])
def test_fit_validate_test_through_the_cli(config, use_store, tmp_path):
    root = tmp_path / "runs"
    args = ["--config", str(CONFIGS / config), "--data.dataset", "test/hopper/random-v0",
            "--trainer.default_root_dir", str(root), *TINY, "--evaluation.episodes", "2",
            "--evaluation.max_episode_steps", "20"]
    assert main(["fit", *args, "--trainer.max_steps", "20", "--trainer.check_val_every_n_epoch", "1"]) == 0
    (ckpt,) = root.rglob("last.ckpt")
    state = torch.load(ckpt, weights_only=False)
    assert state["global_step"] == 20  # one global step per gradient update, not per optimizer
    assert len(state["optimizer_states"]) == 3
    rows = read_metrics(root)
    logged = [r for r in rows if r.get("train/critic/loss")]
    assert len(logged) == 4  # every 5 updates
    assert all(float(r["train/critic/loss"]) >= 0 for r in logged)
    assert any(r.get("val/critic/loss") for r in rows)
    hp = state["hyper_parameters"]
    assert (hp["obs_dim"], hp["act_dim"]) == (11, 3)  # linked from the dataset's spaces
    assert main(["validate", *args, "--ckpt_path", str(ckpt)]) == 0
    assert main(["test", *args, "--ckpt_path", str(ckpt)]) == 0


def test_overrides_reach_the_model(use_store, tmp_path):
    from isep.cli import build_cli

    cli = build_cli(["--config", str(CONFIGS / "walker_med.yaml"), "--data.dataset", "test/hopper/random-v0",
                     "--model.lam", "0.0", "--model.guidance", "3.5", "--trainer.max_epochs", "5"], run=False)
    assert cli.model.hparams.lam == 0.0 and cli.model.hparams.guidance == 3.5
    assert cli.model.hparams.expectile == 0.8  # from the config file (Table 4)
    assert cli.trainer.max_epochs == 5


def test_print_config_shows_the_resolved_values():
    out = run_isep("fit", "--config", str(CONFIGS / "walker_med.yaml"), "--model.lam", "0.2", "--print_config")
    assert out.returncode == 0, out.stderr
    assert "lam: 0.2" in out.stdout and "dataset: walker2d-medium-v2" in out.stdout and "guidance: 2.0" in out.stdout


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model.lamda", "0.3"], "unrecognized arguments: --model.lamda"),
        (["--model.lam", "abc"], "model.lam must lie in [0, 1), got 'abc'"),
        (["--trainer.precision", "17"], "trainer.precision must be one of 32-true, bf16-mixed, got 17"),
        (["--data.dataset", "walker2d-medum-v2"], "Did you mean 'walker2d-medium-v2'"),
        (["--data.dataset", "toy/sparse-optimum", "--model.lam", "1.5"], "model.lam must lie in [0, 1)"),
    ],
)
def test_bad_config_is_a_clear_error(extra, message, empty_store, capfd):
    out = isep_here(capfd, "fit", "--config", str(CONFIGS / "walker_med.yaml"), *extra)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len([line for line in out.stderr.splitlines() if line.strip()]) == 1


def test_unknown_key_in_a_config_file(tmp_path, capfd):
    bad = tmp_path / "bad.yaml"
    bad.write_text((CONFIGS / "walker_med.yaml").read_text().replace("  lam: 0.3", "  lamb: 0.3"))
    out = isep_here(capfd, "fit", "--config", str(bad), "--print_config")
    assert out.returncode == 2 and "lamb" in out.stderr


def test_missing_dataset_through_the_cli(empty_store, capfd):
    out = isep_here(capfd, "fit", "--config", str(CONFIGS / "hopper_med.yaml"))
    assert out.returncode == 2
    assert "minari download mujoco/hopper/medium-v0" in out.stderr and str(empty_store) in out.stderr


def test_data_commands(use_store, tmp_path):
    out = run_isep("data", "list")
    assert out.returncode == 0 and "walker2d-medium-replay-v2" in out.stdout and "test/hopper/random-v0" in out.stdout
    out = run_isep("data", "import-d4rl", str(tmp_path / "nope.hdf5"), "--id", "d4rl/x/y-v0")
    assert out.returncode == 2 and "does not exist" in out.stderr


@pytest.mark.skipif(not (SHARED_STORE / "local/halfcheetah/medium-v0").is_dir(), reason="../shared/data not present")
def test_fit_on_the_shared_halfcheetah_medium(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(SHARED_STORE))
    root = tmp_path / "runs"
    args = ["fit", "--config", str(CONFIGS / "halfcheetah_med_gaussian.yaml"), "--data.dataset",
            "local/halfcheetah/medium-v0", "--trainer.default_root_dir", str(root), "--trainer.max_steps", "30",
            *TINY]
    assert main(args) == 0
    logged = [r for r in read_metrics(root) if r.get("train/q/mean")]
    assert len(logged) == 6
    assert all(abs(float(r["train/q/mean"])) < 1e3 for r in logged)
    assert not any(SHARED_STORE.rglob("*.lock"))  # nothing written into ../shared
