"""A stop signal ends a command honestly (`isep.cli.signals`): a real SIGTERM or SIGINT to a fitting
process exits 143 / 130 with one line naming the checkpoint kept, its MLflow run says KILLED, and a
resume with `--ckpt_path last` is bit-equal to an uninterrupted run; a stopped sweep leaves no
record RUNNING; any command maps the signal to 128 + its number."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from isep.cli import main
from tests.conftest import CONFIGS, TINY
from tests.helpers import ISEP, PauseAfterFirstEpoch, assert_same_state, callback_arg, run_folders

FIT = ["fit", "--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"), *TINY, "--data.toy_size", "500",
       "--evaluation.every", "1"]


def start(*args: str, cwd) -> subprocess.Popen:
    """`isep ARGS` in its own process, with Python's default SIGINT (a background CI shell ignores it)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # (the tests' callbacks)
    return subprocess.Popen([str(ISEP), *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(condition, seconds: float = 240.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stopped_fit_exits_128_plus_the_signal_keeps_its_checkpoint_and_resumes_bit_equal(signum, tmp_path):
    length = ["--trainer.max_epochs", "3"]
    assert main([*FIT, *length, "--trainer.default_root_dir", str(tmp_path / "straight")]) == 0
    root = tmp_path / "stopped"
    fit = start(*FIT, *length, "--trainer.default_root_dir", str(root), *callback_arg(PauseAfterFirstEpoch), cwd=tmp_path)
    wait_for(lambda: any(root.rglob("last.ckpt")) or fit.poll() is not None)
    time.sleep(1.0)  # inside the pause after epoch 1
    fit.send_signal(signum)
    _, err = fit.communicate(timeout=120)
    assert fit.returncode == 128 + signum, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("isep: fit stopped")]
    assert len(lines) == 1 and "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    assert f"stopped by {signal.Signals(signum).name} at update 10;" in lines[0]
    assert "last.ckpt (update 10)" in lines[0] and "--ckpt_path last" in lines[0]
    (run,) = mlflow.search_runs(search_all_experiments=True, filter_string="tags.seed = '0'", output_format="list",
                                order_by=["attributes.start_time DESC"], max_results=1)
    assert run.info.status == "KILLED" and run.data.tags["failure_reason"].startswith("stopped by")
    # the same command, resumed, ends exactly where the uninterrupted run ends
    assert main([*FIT, *length, "--trainer.default_root_dir", str(root), "--ckpt_path", "last"]) == 0
    (a,), (b,) = run_folders(tmp_path / "straight"), run_folders(root)
    assert_same_state(torch.load(a / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"],
                      torch.load(b / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"])
    assert mlflow.get_run(run.info.run_id).info.status == "FINISHED"


def test_any_command_maps_a_stop_signal_to_its_exit_code(monkeypatch, capfd):
    import isep.checkpoint_eval

    def stopped_midway(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises inside the sleep
        return 0

    monkeypatch.setattr(isep.checkpoint_eval, "evaluate_main", stopped_midway)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    assert main(["evaluate", "--ckpt_path", "x"]) == 143
    assert capfd.readouterr().err.strip() == "isep: evaluate stopped by SIGTERM"
    # and the handlers are the process's own again afterwards
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_stopped_sweep_exits_143_and_leaves_no_record_running(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    from tests.test_sweep import toy

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    sweep = subprocess.Popen([str(ISEP), "sweep", "--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"),
                              *toy(epochs=400), "--lam", "0,0.3", "--seeds", "0", "--name", "stopped",
                              "--num_cpus", "1"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    client = mlflow.MlflowClient(uri)

    def a_trial_checkpointed() -> bool:
        if sweep.poll() is not None:
            return True
        return any((tmp_path / "runs").rglob("last.ckpt")) if (tmp_path / "runs").exists() else False

    wait_for(a_trial_checkpointed)
    sweep.send_signal(signal.SIGTERM)
    out, err = sweep.communicate(timeout=180)
    assert sweep.returncode == 143, (out[-1500:], err[-1500:])
    assert "isep: sweep stopped by SIGTERM" in err and "Traceback" not in err.split("isep: sweep stopped")[-1]
    runs = client.search_runs([client.get_experiment_by_name("stopped").experiment_id])
    assert runs and not [r for r in runs if r.info.status == "RUNNING"]
    (parent,) = [r for r in runs if r.data.tags.get("isep.sweep") == "stopped"]
    assert parent.info.status == "KILLED" and parent.data.tags["failure_reason"] == "stopped by SIGTERM"
    assert sys.executable  # (the trials' checkpoints stay: a re-run of the sweep resumes them)
