"""`--trainer.logger` beside isep's own records: TensorBoard, CSV and W&B (offline) get what MLflow
gets (metric names, steps, values, and the hyperparameters), a stack's runs one stream each, and
isep's MLflow run and CSV stay where `isep compare` reads them. Real fits on the toy bandit; each
logger's files are read back with that logger's own format."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import pytest

from tests.conftest import TINY
from tests.helpers import isep_here, run_isep
from tests.logger_files import csv_series, mlflow_series, tensorboard_series, wandb_run

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "toy" / "sparse_cfgrl.yaml"


def _fit_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(CONFIG), *TINY, "--trainer.max_steps", "20", "--evaluation.every", "2",
            "--trainer.default_root_dir", str(tmp_path / "runs"),
            "--mlflow.tracking_uri", f"sqlite:///{tmp_path / 'mlflow.db'}", *extra]


def _same(series: dict, reference: dict, where: str) -> None:
    """The same metric names, at the same steps, with the same values (float32 rounding)."""
    assert set(series) == set(reference), f"{where}: {sorted(set(series) ^ set(reference))}"
    for key, points in reference.items():
        assert set(series[key]) == set(points), f"{where}: {key} at steps {sorted(series[key])} vs {sorted(points)}"
        for step, value in points.items():
            assert series[key][step] == pytest.approx(value, rel=1e-6, abs=1e-7), f"{where}: {key}@{step}"


def _isep_runs(tmp_path: Path) -> list:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return sorted(runs, key=lambda run: int(run.data.tags.get("isep.stack_index", 0)))


def test_a_run_logs_to_tensorboard_and_csv_what_it_logs_to_mlflow(tmp_path, capfd):
    result = isep_here(capfd, *_fit_args(tmp_path, "--trainer.logger+=TensorBoardLogger", "--trainer.logger.save_dir",
                                         str(tmp_path / "tb"), "--trainer.logger+=CSVLogger",
                                         "--trainer.logger.save_dir", str(tmp_path / "csv")))
    assert result.returncode == 0, result.stderr
    (run,) = _isep_runs(tmp_path)  # isep's own record is still there, with its CSV beside it
    reference = mlflow_series(f"sqlite:///{tmp_path / 'mlflow.db'}", run.info.run_id)
    assert "eval/expected_reward" in reference and "train/critic/loss" in reference
    (own_csv,) = (tmp_path / "runs").rglob("csv/version_0/metrics.csv")
    _same(csv_series(own_csv), reference, "isep's CSV")

    tensorboard, hparams = tensorboard_series(tmp_path / "tb" / "lightning_logs" / "version_0")
    _same(tensorboard, reference, "TensorBoard")
    assert hparams, "TensorBoard got no hyperparameters"
    logged = (tmp_path / "tb" / "lightning_logs" / "version_0" / "hparams.yaml").read_text()
    assert "model.lam: '0.0'" in logged and "model.expectile:" in logged
    _same(csv_series(tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv"), reference, "CSVLogger")


def test_a_stack_gives_each_run_its_own_stream_in_every_logger(tmp_path):
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}
    (tmp_path / "wandb").mkdir()
    result = run_isep(*_fit_args(tmp_path, "--stack.seed", "0,1",
                                 "--trainer.logger+=TensorBoardLogger", "--trainer.logger.save_dir", str(tmp_path / "tb"),
                                 "--trainer.logger+=CSVLogger", "--trainer.logger.save_dir", str(tmp_path / "csv"),
                                 "--trainer.logger+=WandbLogger", "--trainer.logger.project", "isep-test",
                                 "--trainer.logger.save_dir", str(tmp_path / "wandb")), env=env)
    assert result.returncode == 0, result.stderr
    runs = _isep_runs(tmp_path)
    assert [r.data.tags["isep.stack_index"] for r in runs] == ["0", "1"]
    stack = Path(runs[0].data.tags["isep.stack"]).name
    wandb_runs = {}
    for path in (tmp_path / "wandb").rglob("run-*.wandb"):
        name, group, series, config = wandb_run(path)
        wandb_runs[name] = (group, series, config)
    assert len(wandb_runs) == 2, sorted(wandb_runs)
    streams = []
    for index, run in enumerate(runs):
        reference = mlflow_series(f"sqlite:///{tmp_path / 'mlflow.db'}", run.info.run_id)
        folder = Path(run.data.tags["run_dir"]).name  # run<k>-<name>
        assert folder.startswith(f"run{index}-") and folder.endswith(f"seed{index}")
        tensorboard, hparams = tensorboard_series(tmp_path / "tb" / "lightning_logs" / stack / folder)
        _same(tensorboard, reference, f"TensorBoard, run {index}")
        assert hparams
        assert f"seed_everything: '{index}'" in (tmp_path / "tb" / "lightning_logs" / stack / folder / "hparams.yaml").read_text()
        _same(csv_series(tmp_path / "csv" / "lightning_logs" / stack / folder / "metrics.csv"), reference, f"CSV, run {index}")
        group, series, config = wandb_runs[f"{stack}/{folder}"]
        assert group == stack
        _same(series, reference, f"W&B, run {index}")
        assert config["seed_everything"] == str(index) and config["model.lam"] == "0.0"
        streams.append(reference["train/critic/loss"])
    assert streams[0] != streams[1]  # two runs, two streams: never one mixed stream


@pytest.mark.parametrize("args, message", [
    (["--trainer.logger", "NoSuchLogger"], "trainer.logger: no class 'NoSuchLogger'"),
    (["--trainer.logger", "TensorBoardLogger"], "trainer.logger TensorBoardLogger needs save_dir: add --trainer.logger.save_dir"),
    (["--trainer.logger", "TensorBoardLogger", "--trainer.logger.save_dir", "tb", "--trainer.logger.colour", "red"],
     "trainer.logger TensorBoardLogger has no option 'colour'"),
    (["--trainer.logger", "WandbLogger"], "--trainer.logger WandbLogger needs the package 'wandb', which is not "
                                          "installed: pip install 'isep[wandb]'"),
])
def test_a_bad_logger_is_one_line_before_anything_is_written(tmp_path, capfd, monkeypatch, args, message):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as without the extra: `import wandb` raises ImportError
    result = isep_here(capfd, *_fit_args(tmp_path, *args), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no run folder, no MLflow store


def test_the_short_help_lists_the_logger_option(capfd):
    result = isep_here(capfd, "fit", "--help")
    assert "--trainer.logger" in result.stdout
