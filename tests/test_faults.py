"""Faults found before training leave the disk and the MLflow store as they were: an MLflow store
that cannot be made, a dataset that cannot be read, a Ray cluster that is not there. Each is one
line (exit 2), with the reason first."""

from __future__ import annotations

import shutil

import mlflow

from tests.conftest import CONFIGS, TINY
from tests.helpers import isep_here

TOY = ["fit", "--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"), *TINY, "--trainer.max_epochs", "1"]


def one_error_line(out) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    (error,) = [line for line in lines if line.startswith("isep: error: ")]
    return error


def test_a_store_under_a_file_is_refused_before_anything_is_made(tmp_path, capfd):
    (tmp_path / "afile").write_text("")
    out = isep_here(capfd, *TOY, "--mlflow.tracking_uri", f"sqlite:///{tmp_path}/afile/sub/mlflow.db",
                    "--trainer.default_root_dir", str(tmp_path / "runs"), cwd=tmp_path)
    assert "afile is a file, not a folder" in one_error_line(out)
    assert not (tmp_path / "runs").exists() and (tmp_path / "afile").read_text() == ""


def test_an_unreadable_dataset_leaves_no_folder_and_no_record(minari_store, tmp_path, capfd, monkeypatch):
    store = tmp_path / "store"
    shutil.copytree(minari_store / "test" / "hopper" / "random-v0", store / "test" / "hopper" / "random-v0")
    data = store / "test" / "hopper" / "random-v0" / "data" / "main_data.hdf5"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = isep_here(capfd, "fit", "--config", str(CONFIGS / "hopper_med.yaml"), *TINY, "--data.dataset",
                    "test/hopper/random-v0", "--mlflow.tracking_uri", uri, "--trainer.default_root_dir",
                    str(tmp_path / "runs"), cwd=tmp_path)
    assert "could not be read" in one_error_line(out)
    assert not (tmp_path / "runs").exists()
    client = mlflow.MlflowClient(uri)
    assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_a_sweep_that_cannot_join_its_cluster_makes_no_record(tmp_path, capfd, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))  # (no cluster of another test's to find)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = isep_here(capfd, "sweep", "--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"), "--lam", "0",
                    "--seeds", "0", "--name", "nocluster", "--address", "auto", "--mlflow.tracking_uri", uri, cwd=tmp_path)
    assert "cannot join the Ray cluster at auto" in one_error_line(out)
    client = mlflow.MlflowClient(uri)
    assert not [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]


def test_a_file_that_is_not_a_checkpoint_gets_no_advice_to_load_it_unsafely(tmp_path, capfd):
    bad = tmp_path / "notes.ckpt"
    bad.write_text("not a checkpoint")
    error = one_error_line(isep_here(capfd, "evaluate", "--ckpt_path", str(bad), "--no-mlflow", cwd=tmp_path))
    assert "is not a readable isep checkpoint (its contents are not a torch checkpoint's)" in error
    assert "weights_only" not in error and bad.read_text() == "not a checkpoint"


def test_resuming_a_finished_run_says_it_made_no_update(tmp_path, capfd):
    fit = [*TOY, "--trainer.default_root_dir", str(tmp_path / "runs"), "--mlflow.enabled", "false"]
    assert isep_here(capfd, *fit, cwd=tmp_path).returncode == 0
    again = isep_here(capfd, *fit, "--ckpt_path", "last", cwd=tmp_path)
    assert again.returncode == 0
    assert "no update made: the run had already reached its end (10 updates)" in again.stderr
    assert "updates/s" not in again.stderr


def test_compare_says_what_is_missing_and_what_a_score_rule_can_be(tmp_path, capfd):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    fit = [*TOY, "--trainer.default_root_dir", str(tmp_path / "runs"), "--mlflow.tracking_uri", uri]
    assert isep_here(capfd, *fit, "--evaluation.every", "0", cwd=tmp_path).returncode == 0
    error = one_error_line(isep_here(capfd, "compare", "--tracking_uri", uri, cwd=tmp_path))
    assert "no run has an evaluation" in error and "--evaluation.every 0" in error and "e.g. eval/normalized_score" not in error
    assert isep_here(capfd, *fit, "--seed_everything", "1", "--evaluation.every", "1", cwd=tmp_path).returncode == 0
    out = isep_here(capfd, "compare", "--tracking_uri", uri, "--score", "last:99", "--out", str(tmp_path / "cmp"), cwd=tmp_path)
    assert out.returncode == 0 and "but no run has more than 1 evaluation" in out.stdout
