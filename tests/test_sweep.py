"""`isep sweep` through a real local Ray (2 CPUs), `isep evaluate` at several guidance weights, and
`isep figure` on small sweeps: each trial an ordinary `isep fit` on tiny networks and data."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from isep.cli import main
from tests.conftest import CONFIGS, TINY
from tests.helpers import ISEP, PauseAfterFirstEpoch, callback_arg, run_isep

ROOT = CONFIGS.parent

FIGURES = CONFIGS / "figures"
RAY = ["--num_cpus", "2"]


def toy(epochs: int = 2, steps: int = 10) -> list[str]:
    """Trial settings: tiny networks, `epochs` epochs of `steps` updates, evaluated every epoch."""
    tiny = dict(zip(TINY[0::2], TINY[1::2]))
    for key in ("--trainer.enable_progress_bar", "--trainer.enable_model_summary"):
        tiny.pop(key)  # the sweep sets them
    tiny.update({"--data.steps_per_epoch": str(steps), "--trainer.max_epochs": str(epochs), "--evaluation.every": "1",
                 "--data.toy_size": "500"})
    return [x for pair in tiny.items() for x in pair]


TOY = toy()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder and MLflow store for the module's sweeps (they build on each other)."""
    folder = tmp_path_factory.mktemp("sweeps")
    return folder


def sweep(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """`isep sweep` as a user runs it, in `workdir` (its ./mlflow.db, ./runs)."""
    return run_isep("sweep", *args, cwd=workdir, env={"MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}, timeout=1200)


def client(workdir: Path):
    import mlflow

    return mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")


def runs_of(workdir: Path, experiment: str) -> list:
    c = client(workdir)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id]) if exp else []


TOY_GRID = ["--config", str(CONFIGS / "toy" / "sparse_isep_fm.yaml"), "--lam", "0,0.3", "--seeds", "0-1",
            "--policy_mix", "stochastic,deterministic", "--name", "toy", *TOY, *RAY]


@pytest.fixture(scope="module")
def toy_sweep(workdir) -> subprocess.CompletedProcess:
    """A 2 λ × 2 mix × 2 seed sweep of the toy bandit, run once for the tests that read it."""
    return sweep(workdir, *TOY_GRID)


def test_toy_sweep_runs_each_trial_once_under_one_parent(workdir, toy_sweep):
    done = toy_sweep
    assert done.returncode == 0, done.stderr[-3000:]
    assert "8 trials, 8 to run" in done.stdout
    records = runs_of(workdir, "toy")
    parents = [r for r in records if r.data.tags.get("isep.sweep") == "toy"]
    trials = [r for r in records if "isep.trial" in r.data.tags]
    assert len(parents) == 1 and len(trials) == 8
    assert all(r.info.status == "FINISHED" for r in trials)
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parents[0].info.run_id}
    assert sorted((r.data.tags["lam"], r.data.tags["policy_mix"], r.data.tags["seed"]) for r in trials) == sorted(
        (lam, mix, seed) for lam in ("0.0", "0.3") for mix in ("stochastic", "deterministic") for seed in ("0", "1"))
    # each trial is an ordinary `isep fit`: its command, its config and its checkpoints
    command = trials[0].data.tags["isep.command"]
    assert command.startswith("isep fit --config") and "--mlflow.experiment toy" in command
    run_dir = Path(trials[0].data.tags["run_dir"])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "config.yaml").is_file()
    assert "expected_reward" in done.stdout  # the compare table of the toy's metric
    assert "not an isep training run" not in done.stdout  # the parent run is no row and no "skipped" note
    assert (workdir / "outputs" / "sweeps" / "toy" / "figure5.png").is_file()

    again = sweep(workdir, *TOY_GRID)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "8 trials, 0 to run" in again.stdout
    assert len(runs_of(workdir, "toy")) == len(records)  # no trial started


def test_a_killed_trial_resumes_from_its_checkpoint(workdir):
    """A trial killed mid-way (SIGKILL: MLflow still says RUNNING) resumes; its MLflow run continues."""
    options = ["--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"), "--lam", "0.0,0.3", "--seeds", "0",
               *toy(epochs=3, steps=40)]
    grid = [*options, "--name", "resume", *RAY]
    # the first trial, started by hand with the exact arguments the sweep gives it, then killed
    from isep.sweeps.grid import parse_grid
    from isep.sweeps.records import absolute_uri

    g = parse_grid(options)
    point = g.points()[0]
    uri = absolute_uri(f"sqlite:///{workdir}/mlflow.db")
    fit = [str(ISEP), "fit", *g.fit_args(point), "--trainer.default_root_dir", str(workdir / "runs"),
           "--mlflow.experiment", "resume", "--mlflow.tracking_uri", uri, "--trainer.enable_progress_bar", "false",
           *callback_arg(PauseAfterFirstEpoch)]  # it sleeps after epoch 0: killed at step 40
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(fit, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline, ckpt = time.monotonic() + 120, None
    while time.monotonic() < deadline and ckpt is None:
        found = [p for p in (workdir / "runs").rglob("last.ckpt") if "lam0.0" in str(p) and "gaussian" in str(p)]
        if found and torch.load(found[0], weights_only=False)["global_step"] >= 40:
            ckpt = found[0]
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert ckpt is not None, "no checkpoint within 2 minutes"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 40
    (killed,) = runs_of(workdir, "resume")
    assert killed.info.status == "RUNNING"

    done = sweep(workdir, *grid)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 trials, 2 to run (1 to resume)" in done.stdout
    resumed = client(workdir).get_run(killed.info.run_id)
    assert resumed.info.status == "FINISHED"  # the same MLflow run, continued
    assert torch.load(ckpt, weights_only=False)["global_step"] == 120
    history = client(workdir).get_metric_history(killed.info.run_id, "eval/expected_reward")
    assert {m.step for m in history} == {40, 80, 120}

    # killed after its final checkpoint (MLflow still says RUNNING): Lightning has nothing left to
    # train, the trial still reports its last evaluation to Tune and its run ends FINISHED
    client(workdir).update_run(killed.info.run_id, status="RUNNING")
    again = sweep(workdir, *grid)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 trials, 1 to run (1 to resume)" in again.stdout
    assert client(workdir).get_run(killed.info.run_id).info.status == "FINISHED"
    assert torch.load(ckpt, weights_only=False)["global_step"] == 120


def test_a_diverging_trial_fails_alone_and_is_retried_only_when_asked(workdir):
    grid = ["--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"), "--model.divergence_factor", "1e-9,100",
            "--seeds", "0", "--name", "diverge", *toy(epochs=1), *RAY]
    done = sweep(workdir, *grid)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 failed" in done.stdout and "training diverged" in done.stderr
    records = {r.data.params["model.divergence_factor"]: r for r in runs_of(workdir, "diverge") if "isep.trial" in r.data.tags}
    assert records["1e-09"].info.status == "FAILED" and "diverged" in records["1e-09"].data.tags["failure_reason"]
    assert records["100.0"].info.status == "FINISHED"
    again = sweep(workdir, *grid, "--dry_run")
    assert "2 trials, 0 to run" in again.stdout and "--retry_failed runs it again" in again.stdout
    retry = sweep(workdir, *grid, "--retry_failed", "--dry_run")
    assert "2 trials, 1 to run" in retry.stdout and "failed before; starting again" in retry.stdout


@pytest.mark.parametrize("extra,message", [
    (["--lam", "0,1.5"], "model.lam must lie in [0, 1)"),
    (["--model.no_such_field", "1,2"], "no_such_field"),
    (["--model.actor", "gaussian,tree"], "tree"),
    (["--address", "127.0.0.1:1"], "cannot reach a Ray cluster at 127.0.0.1:1"),
    (["--bogus", "1"], "unknown sweep option '--bogus'"),
])
def test_bad_sweeps_stop_before_any_trial(tmp_path, capsys, extra, message):
    code = main(["sweep", "--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"), "--seeds", "0", "--name", "bad",
                 *TOY, *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert err.index(message) < 80  # the reason first, not after a generated command
    assert not (tmp_path / "runs").exists()  # no run folder, no trial
    assert not runs_of(tmp_path, "bad")


def test_guidance_evaluation_of_a_trained_flow_policy(use_store, tmp_path, capsys):
    import mlflow

    root = tmp_path / "runs"
    assert main(["fit", "--config", str(CONFIGS / "hopper_med.yaml"), *TINY, "--data.dataset", "test/hopper/random-v0",
                 "--trainer.max_epochs", "1", "--evaluation.every", "0", "--trainer.default_root_dir", str(root)]) == 0
    (run_dir,) = [p.parent for p in root.rglob("config.yaml")]
    capsys.readouterr()
    assert main(["evaluate", "--ckpt_path", str(run_dir), "--guidance", "0.5,1,3", "--episodes", "2",
                 "--max_episode_steps", "20"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [r.split("|")[1].strip() for r in rows] == ["0.5", "1", "3"]
    records = [json.loads(line) for line in (run_dir / "guidance_eval.jsonl").read_text().splitlines()]
    assert [r["guidance"] for r in records] == [0.5, 1.0, 3.0] and all(len(r["returns"]) == 2 for r in records)
    # different weights act differently (the same seeds, the same field): the returns differ
    assert len({tuple(r["returns"]) for r in records}) > 1
    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    metrics = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(run_id).data.metrics
    assert {"eval/guidance/0.5/normalized_score", "eval/guidance/3/normalized_score"} <= set(metrics)
    assert metrics["eval/guidance/3/normalized_score"] == pytest.approx(records[2]["eval/normalized_score"])


def test_guidance_evaluation_errors(tmp_path, capsys):
    assert main(["evaluate", "--ckpt_path", str(tmp_path / "nothing.ckpt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    bad = tmp_path / "checkpoints" / "last.ckpt"
    bad.parent.mkdir()
    bad.write_text("not a checkpoint")
    assert main(["evaluate", "--ckpt_path", str(bad), "--guidance", "1,2"]) == 2
    assert "is not a readable isep checkpoint" in capsys.readouterr().err
    assert bad.read_text() == "not a checkpoint"
    assert main(["evaluate", "--ckpt_path", str(bad), "--guidance", "1,x"]) == 2
    assert "comma-separated numbers" in capsys.readouterr().err


def figure(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """`isep figure` as a user runs it, in `workdir`."""
    return run_isep("figure", *args, cwd=workdir, env={"MLFLOW_TRACKING_URI": f"sqlite:///{workdir}/mlflow.db"}, timeout=1200)


def test_figure_2_on_a_small_sweep(workdir):
    done = figure(workdir, "fig2", "--lam", "0,0.5", "--name", "fig2-small", *TOY, *RAY)
    assert done.returncode == 0, done.stderr[-3000:]
    png = workdir / "outputs" / "figures" / "fig2.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    numbers = json.loads((workdir / "outputs" / "figures" / "fig2.json").read_text())
    assert set(numbers) == {"λ=0", "λ=0.5"}
    assert all(0 <= v["share_high"] <= 1 and 0 <= v["share_danger"] <= 1 for v in numbers.values())


def test_figure_options_pass_to_the_sweep_flags_included(workdir):
    from isep.errors import ConfigError
    from isep.figures.cli import sweep_argv

    argv, name = sweep_argv({"config": str(CONFIGS / "toy" / "sparse_gaussian.yaml"), "lam": [0, 0.5], "name": "f"},
                            ["--dry_run", "--seeds", "0-1", "--retry_failed"])
    assert name == "f" and argv[-4:] == ["--dry_run", "--seeds", "0-1", "--retry_failed"]
    assert argv[argv.index("--lam") + 1] == "0,0.5"
    with pytest.raises(ConfigError, match="needs a value"):
        sweep_argv({"name": "f"}, ["--num_cpus"])
    done = figure(workdir, "fig2", "--lam", "0,0.5", "--name", "fig2-plan", "--dry_run", *TOY, *RAY)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 trials, 2 to run" in done.stdout and not runs_of(workdir, "fig2-plan")  # planned, nothing run or drawn
    assert "wrote" not in done.stdout


def test_figure_runs_are_listed_in_seed_order():
    import pandas as pd

    from isep.figures.common import run_dirs
    from isep.results.analysis import build_study
    from isep.results.frames import Loaded, ScoreRule

    runs = pd.DataFrame([{"run_id": f"r{s}", "metric": "m", "task": "t", "actor": "gaussian", "settings": "",
                          "policy_mix": "stochastic", "lam": 0.0, "seed": s, "score": float(i), "last_step": 10,
                          "left_out": "", "run_dir": f"runs/seed{s}"} for i, s in enumerate(("10", "2", "1"))])
    study = build_study("uri", ScoreRule("final"), Loaded(runs, pd.DataFrame(columns=["run_id", "metric", "step", "value"])))
    assert list(run_dirs(study).values()) == [["runs/seed1", "runs/seed2", "runs/seed10"]]


def test_asha_horizon_counts_every_evaluation():
    from isep.callbacks.evaluation import planned_evaluations

    assert planned_evaluations(10, 25, None, 1000) == 3  # epochs 10, 20 and the last, 25
    assert planned_evaluations(2, 4, -1, 1000) == 2
    assert planned_evaluations(2, -1, 25, 10) == 2  # max_steps: 3 epochs (the last one partial)
    assert planned_evaluations(0, 10, None, 1000) == 0
    from isep.sweeps.grid import parse_grid
    from isep.sweeps.runner import plan_trials

    options = toy(epochs=5)
    options[options.index("--evaluation.every") + 1] = "2"
    (trial,) = plan_trials(parse_grid(["--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"), *options]), [])
    assert trial.evaluations == 3


def test_figures_5_and_7_from_a_sweep_in_mlflow(workdir, toy_sweep):
    for name in ("fig5", "fig7"):
        done = figure(workdir, name, "--no_train", "--name", "toy")
        assert done.returncode == 0, done.stderr[-3000:]
        assert (workdir / "outputs" / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    numbers = json.loads((workdir / "outputs" / "figures" / "fig7.json").read_text())
    assert {k.split()[-1] for k in numbers} == {"stochastic", "deterministic"}
    assert all(v["n"] == 2 for v in numbers.values())
    fig5 = json.loads((workdir / "outputs" / "figures" / "fig5.json").read_text())
    assert len(fig5) == 4 and all(v["n"] == 2 for v in fig5.values())


def test_figure_6_tsne_on_a_small_sweep(use_store, workdir):
    done = figure(workdir, "fig6", "--spec", str(FIGURES / "fig6.yaml"), "--name", "fig6-small",
                  "--config", str(CONFIGS / "hopper_med.yaml"), "--data.dataset", "test/hopper/random-v0",
                  *TOY, *RAY, "--evaluation.episodes", "1", "--evaluation.max_episode_steps", "10")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (workdir / "outputs" / "figures" / "fig6.png").read_bytes()[:4] == b"\x89PNG"
    numbers = json.loads((workdir / "outputs" / "figures" / "fig6.json").read_text())
    assert len(numbers) == 2 and all(v["mean_distance_to_dataset_action"] > 0 for v in numbers.values())


def test_a_stacked_sweep_trains_the_grid_in_one_trial(workdir):
    grid = ["--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"), "--lam", "0,0.3", "--seeds", "0-1",
            "--name", "stacked", *TOY, *RAY, "--stack", "4"]
    done = sweep(workdir, *grid)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 trials, 4 to run (0 to resume) in 1 stacked trials" in done.stdout
    trials = [r for r in runs_of(workdir, "stacked") if "isep.trial" in r.data.tags]
    assert len(trials) == 4 and all(r.info.status == "FINISHED" for r in trials)
    assert len({r.data.tags["isep.stack"] for r in trials}) == 1
    assert sorted(r.data.tags["isep.stack_index"] for r in trials) == ["0", "1", "2", "3"]
    # the same grid without stacking finds every point finished
    again = sweep(workdir, *grid[:-2], "--dry_run")
    assert "4 trials, 0 to run" in again.stdout
