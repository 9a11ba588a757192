"""`isep fit / validate / test` as a new user meets them: every bad input is one line that says what
to do (exit 2, no traceback) and changes nothing on disk; interrupted runs keep their records
straight; the console carries isep's lines, not other packages' noise."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from isep.cli import main
from tests.conftest import CONFIGS, TINY
from tests.helpers import ISEP, CtrlCInCheckpoint, PauseAtStart, RecordFastMode, callback_arg, isep_here, run_folders, run_isep, tree_digest

TOY = ["--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"), *TINY, "--data.toy_size", "500",
       "--evaluation.every", "1"]


def fit_args(root: Path, *extra: str) -> list[str]:
    return ["fit", *TOY, "--trainer.default_root_dir", str(root), *extra]


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> Path:
    """The `last.ckpt` of a finished toy run, made once for the bad-checkpoint cases (read only)."""
    root = tmp_path_factory.mktemp("good") / "runs"
    assert main(fit_args(root, "--trainer.max_epochs", "2", "--mlflow.enabled", "false")) == 0
    (ckpt,) = root.rglob("last.ckpt")
    return ckpt


@pytest.fixture
def trained(tmp_path) -> Path:
    """A finished toy run (Gaussian actor, 2 epochs of 10 updates); returns its folder."""
    assert main(fit_args(tmp_path / "runs", "--trainer.max_epochs", "2")) == 0
    (run,) = run_folders(tmp_path / "runs")
    return run


def wait_for_checkpoint(root: Path, step: int, seconds: float = 300) -> None:
    """Until a `last.ckpt` under `root` holds at least `step` updates."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = list(root.rglob("last.ckpt"))
        if found and torch.load(found[0], weights_only=False)["global_step"] >= step:
            return
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of {step} updates within {seconds} s")


def one_error(out: subprocess.CompletedProcess, *needles: str) -> str:
    """The command failed as a user should see it: exit 2, no traceback, the message first."""
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("isep: error:"), out.stderr[-3000:]
    for needle in needles:
        assert needle in out.stderr, out.stderr[-3000:]
    return out.stderr


# -- a checkpoint that does not fit the command -------------------------------------------------------


def test_a_checkpoint_with_other_settings_is_refused_with_every_difference(trained, tmp_path, capfd):
    ckpt = trained / "checkpoints" / "last.ckpt"
    before = tree_digest(tmp_path)
    out = isep_here(capfd, *fit_args(tmp_path / "runs", "--trainer.max_epochs", "3", "--ckpt_path", str(ckpt),
                             "--model.actor", "flow", "--model.expectile", "0.9"), cwd=tmp_path)
    one_error(out, "model.actor: the checkpoint has 'gaussian', this command 'flow'", "model.expectile")
    assert tree_digest(tmp_path) == before


def test_a_longer_training_of_a_checkpoint_is_applied_and_said(trained, tmp_path, capsys):
    ckpt = trained / "checkpoints" / "last.ckpt"
    assert main(fit_args(tmp_path / "runs", "--trainer.max_epochs", "3", "--ckpt_path", str(ckpt))) == 0
    assert "resuming with trainer.max_epochs = 3 (the run had 2)" in capsys.readouterr().err
    assert max(torch.load(p, weights_only=False)["global_step"] for p in (tmp_path / "runs").rglob("last.ckpt")) == 30


@pytest.mark.parametrize("command", ["fit", "validate", "test"])
@pytest.mark.parametrize("kind", ["missing", "truncated", "text", "tensor"])
def test_a_bad_checkpoint_file_is_one_line(command, kind, good_checkpoint, tmp_path, capfd):
    ckpt = tmp_path / f"{kind}.ckpt"
    good = good_checkpoint.read_bytes()
    if kind == "truncated":
        ckpt.write_bytes(good[: len(good) // 2])
    elif kind == "text":
        ckpt.write_text("not a checkpoint\n")
    elif kind == "tensor":
        torch.save(torch.zeros(3), ckpt)
    before = tree_digest(tmp_path)
    out = isep_here(capfd, command, *TOY, "--trainer.default_root_dir", str(tmp_path / "runs"), "--ckpt_path", str(ckpt),
                    cwd=tmp_path)
    text = one_error(out, "--ckpt_path")
    assert "weights_only=False" not in text
    assert tree_digest(tmp_path) == before


def test_validate_needs_a_checkpoint_and_prints_its_losses(trained, tmp_path, capfd):
    out = isep_here(capfd, "validate", *TOY, "--trainer.default_root_dir", str(tmp_path / "elsewhere"), "--ckpt_path",
                    "last", cwd=tmp_path)
    one_error(out, "no run of these settings under", "has a checkpoint")
    assert not (tmp_path / "elsewhere").exists()
    out = isep_here(capfd, "validate", *TOY, "--trainer.default_root_dir", str(tmp_path / "runs"), "--ckpt_path", "last",
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "isep validate:" in out.stdout and "critic/loss" in out.stdout


# -- values out of range, bad keys: at parse time -------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    (["--evaluation.episodes", "0"], "evaluation.episodes must be an integer ≥ 1, got 0"),
    (["--data.batch_size", "0"], "data.batch_size must be an integer ≥ 1, got 0"),
    (["--model.expectile", "1.0"], "model.expectile must lie in (0, 1), got 1.0"),
    (["--model.actor_lr=-1e-3"], "model.actor_lr must be > 0, got -1e-3"),
    (["--model.critic_hidden", "[32, 0]"], "model.critic_hidden"),
    (["--model.lamda", "0.3"], "unrecognized arguments: --model.lamda"),
])
def test_out_of_range_and_unknown_options_stop_at_parse_time(extra, message, tmp_path, capfd):
    out = isep_here(capfd, *fit_args(tmp_path / "runs", *extra), cwd=tmp_path)
    text = one_error(out, message)
    assert len([line for line in text.splitlines() if line.strip()]) <= 4  # the message, not 95 lines of usage
    assert not any(tmp_path.iterdir())  # no run folder, no MLflow store


# -- the MLflow store ---------------------------------------------------------------------------------


@pytest.mark.parametrize("uri, message", [
    ("sqlite:/relative.db", "a sqlite store is sqlite:///"),
    ("foo://bar", "unknown scheme 'foo'"),
    ("http://127.0.0.1:9", "does not answer"),
])
def test_a_bad_tracking_uri_fails_at_once(uri, message, tmp_path, capfd):
    start = time.monotonic()
    out = isep_here(capfd, *fit_args(tmp_path / "runs", "--mlflow.tracking_uri", uri), cwd=tmp_path)
    one_error(out, message)
    assert time.monotonic() - start < 60  # not 255 s of retries
    assert not (tmp_path / "runs").exists()


def test_a_corrupt_mlflow_db_is_one_line_and_stays(tmp_path):
    store = tmp_path / "mlflow.db"
    store.write_bytes(b"garbage, not sqlite" * 100)
    before = tree_digest(tmp_path)
    out = run_isep(*fit_args(tmp_path / "runs"), cwd=tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"})
    one_error(out, "is not a readable sqlite database")
    assert tree_digest(tmp_path) == before


# -- runs that end early ------------------------------------------------------------------------------


def test_an_error_before_training_leaves_no_folder_and_no_mlflow_run(use_store, tmp_path):
    import mlflow

    out = run_isep("fit", "--config", str(CONFIGS / "hopper_med.yaml"), *TINY, "--data.dataset", "test/hopper/random-v0",
                   "--evaluation.env_id", "HalfCheetah-v5", "--trainer.default_root_dir", str(tmp_path / "runs"),
                   cwd=tmp_path)
    one_error(out, "(17, 6)")
    assert not (tmp_path / "runs").exists()
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    assert all(not client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_a_run_killed_in_its_first_epoch_keeps_its_folder_and_is_marked_killed(tmp_path):
    import mlflow

    root = tmp_path / "runs"
    slow = [*fit_args(root, "--trainer.max_epochs", "1"), *callback_arg(PauseAtStart)]
    proc = subprocess.Popen([str(ISEP), *slow], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list(root.rglob("config.yaml")):
            time.sleep(0.2)
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    (killed,) = [p.parent for p in root.rglob("mlflow_run_id")]
    before = tree_digest(killed)
    assert main(fit_args(root, "--trainer.max_epochs", "1")) == 0
    assert tree_digest(killed) == before  # its identity (config, run id) untouched
    assert len(run_folders(root)) == 1 and run_folders(root)[0] != killed
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    old = client.get_run((killed / "mlflow_run_id").read_text().strip())
    assert old.info.status == "KILLED" and "before its first checkpoint" in old.data.tags["failure_reason"]


def test_an_interrupted_run_resumes_into_a_clean_record(tmp_path):
    """Ctrl-C after epoch 5's evaluation and CSV rows are on disk but before its checkpoint, then
    --ckpt_path last: the record ends FINISHED with no stale failure tag, and the MLflow history,
    the CSV and `eval_returns.jsonl` each hold every step once."""
    import csv
    import json

    import mlflow

    root = tmp_path / "runs"
    args = fit_args(root, "--trainer.max_epochs", "30", "--evaluation.every", "1")
    interrupted = subprocess.run([str(ISEP), *args, *callback_arg(CtrlCInCheckpoint, epoch=5)], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=600,
                                 env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert interrupted.returncode != 0, interrupted.stderr[-2000:]
    (run,) = run_folders(root)
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 50
    assert json.loads((run / "eval_returns.jsonl").read_text().splitlines()[-1])["step"] == 60  # past the checkpoint
    def csv_rows() -> list[dict]:
        with open(run / "csv" / "version_0" / "metrics.csv") as handle:
            return [r for r in csv.DictReader(handle) if r.get("train/critic/loss")]

    before = csv_rows()
    assert int(before[-1]["step"]) > 50  # so are CSV rows
    assert main([*args, "--ckpt_path", "last"]) == 0
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    record = client.get_run((run / "mlflow_run_id").read_text().strip())
    assert record.info.status == "FINISHED" and "failure_reason" not in record.data.tags
    for key in ("train/critic/loss", "eval/expected_reward"):
        steps = [m.step for m in client.get_metric_history(record.info.run_id, key)]
        assert len(steps) == len(set(steps)) and max(steps) == 300, key
    after = csv_rows()
    steps = [int(r["step"]) for r in after]
    assert len(steps) == len(set(steps)) and steps == sorted(steps) and steps[-1] == 300
    kept = [r for r in before if int(r["step"]) <= 50]
    assert [r["train/critic/loss"] for r in after[:len(kept)]] == [r["train/critic/loss"] for r in kept]  # rows before the resume stay
    evaluations = [json.loads(line)["step"] for line in (run / "eval_returns.jsonl").read_text().splitlines()]
    assert evaluations == list(range(10, 301, 10))


def test_sigkill_keeps_the_csv_rows_up_to_the_checkpoint(tmp_path):
    import csv

    root = tmp_path / "runs"
    proc = subprocess.Popen([str(ISEP), *fit_args(root, "--trainer.max_epochs", "1000", "--mlflow.enabled", "false")],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_checkpoint(root, 30)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    (metrics,) = root.rglob("metrics.csv")
    with open(metrics) as handle:
        steps = [int(r["step"]) for r in csv.DictReader(handle) if r.get("train/critic/loss")]
    assert steps and max(steps) >= 30


# -- what a newcomer sees -------------------------------------------------------------------------------


def test_the_start_line_names_the_update_path_the_fit_uses(monkeypatch, tmp_path, capsys):
    """Auto mode compiles a CPU fit long enough to pay for it; the start line, printed before the
    Trainer sets the module up, must name that path too (it said `eager`)."""
    import isep.fast

    monkeypatch.setattr(isep.fast, "CPU_COMPILE_MIN_UPDATES", 20)
    RecordFastMode.seen.clear()
    assert main([*fit_args(tmp_path / "runs", "--trainer.max_epochs", "2"), *callback_arg(RecordFastMode)]) == 0
    assert RecordFastMode.seen == ["compile"]
    assert "compile update" in capsys.readouterr().err


def test_isep_help_lists_every_command():
    for args in ((), ("--help",)):
        out = run_isep(*args)
        assert out.returncode == 0
        for command in ("fit", "validate", "test", "evaluate", "compare", "sweep", "figure", "data", "bench", "demo"):
            assert f"\n  {command} " in out.stdout, command
        assert "predict" not in out.stdout
    one_error(run_isep("predict", "--help"), "unknown command 'predict'")


def test_fit_help_is_short_and_leads_with_isep_options():
    out = run_isep("fit", "--help")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert len(lines) < 120
    assert any("--model.lam" in line for line in lines[:40]) and "--help=full" in out.stdout
    full = run_isep("fit", "--help=full")
    assert full.returncode == 0 and "--trainer.gradient_clip_val" in full.stdout


def test_a_fit_shows_progress_in_updates_and_ends_with_a_summary(tmp_path):
    out = run_isep(*fit_args(tmp_path / "runs", "--trainer.max_steps", "25", "--data.steps_per_epoch", "25",
                            "--trainer.enable_progress_bar", "true"),
                   cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    err = out.stderr.replace("\r", "\n")
    assert "fit 25/25" in err and "upd/s" in err and "v_num" not in err
    final = [line for line in err.splitlines() if line.startswith("fit 25/25")][-1]
    # one epoch: the bar ends with the score of the evaluation after its last update
    assert "Q " in final and "score " in final
    assert all(len(line) <= 80 for line in err.splitlines() if line.startswith("fit "))
    assert "isep: done — " in err and "25 updates" in err and "final score" in err and "MLflow run" in err
    for noise in ("💡 Tip", "LeafSpec", "Creating initial MLflow database tables", "GPU available", "settotalmass"):
        assert noise not in err + out.stdout, noise
    again = run_isep(*fit_args(tmp_path / "runs", "--trainer.max_steps", "50", "--data.steps_per_epoch", "25",
                               "--ckpt_path", "last"), cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "(resuming " in again.stderr and "Restoring states" not in again.stderr + again.stdout
