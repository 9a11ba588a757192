"""A run's life: rollout evaluation, checkpoints, resume, SIGKILL, the divergence stop, MLflow records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from isep.cli import main
from tests.conftest import CONFIGS, TINY
from tests.helpers import ISEP, PoisonAt, StopAfter, assert_same_state, callback_arg, open_record_together, run_folders

SMALL = [
    *TINY,
    "--data.dataset", "test/hopper/random-v0",
    "--trainer.num_sanity_val_steps", "0",
    "--evaluation.episodes", "3",
    "--evaluation.max_episode_steps", "30",
]


def params(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, weights_only=False)["state_dict"]


@pytest.fixture
def mlflow_uri() -> str:
    return os.environ["MLFLOW_TRACKING_URI"]  # a store of this test's own (conftest)


def test_rollout_evaluation_scores_a_trained_policy(use_store, mlflow_uri, tmp_path):
    import gymnasium as gym

    from isep.module import ISEPModule

    root = tmp_path / "runs"
    assert main(["fit", "--config", str(CONFIGS / "hopper_med_gaussian.yaml"), *SMALL,
                 "--trainer.default_root_dir", str(root), "--trainer.max_epochs", "2", "--evaluation.every", "1"]) == 0
    (run,) = run_folders(root)
    records = [json.loads(line) for line in (run / "eval_returns.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [10, 20]
    last = records[-1]
    assert len(last["returns"]) == 3 and len(set(last["seeds"])) == 3
    # the normalized score is D4RL's formula with the dataset's reference returns
    assert last["eval/normalized_score"] == pytest.approx(100 * (np.mean(last["returns"]) + 20.272305) / (3234.3 + 20.272305))
    # replaying one episode by hand with the checkpointed policy gives the same return
    model = ISEPModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").agent
    env = gym.make("Hopper-v5", max_episode_steps=30)
    obs, _ = env.reset(seed=last["seeds"][1])
    total, done = 0.0, False
    while not done:
        obs, r, term, trunc, _ = env.step(model.act(obs[None])[0].numpy())
        total, done = total + r, term or trunc
    assert total == pytest.approx(last["returns"][1], rel=1e-5)
    # the best checkpoint is kept beside last.ckpt
    assert len(list((run / "checkpoints").glob("best-step=*.ckpt"))) == 1


@pytest.mark.parametrize("config,fast", [("hopper_med.yaml", "false"), ("hopper_med_gaussian.yaml", "true")])
def test_resume_continues_exactly_like_an_uninterrupted_run(config, fast, use_store, tmp_path):
    """Eager (ISEP-FM) and the compiled fast path (ISEP): bit for bit, rollouts and validation on."""
    base = ["fit", "--config", str(CONFIGS / config), *SMALL, "--mlflow.enabled", "false",
            "--model.lam", "0.5", "--trainer.max_epochs", "4", "--evaluation.every", "1",
            "--trainer.check_val_every_n_epoch", "1", "--model.fast", fast]
    assert main([*base, "--trainer.default_root_dir", str(tmp_path / "straight")]) == 0
    resumed_root = str(tmp_path / "resumed")
    assert main([*base, "--trainer.default_root_dir", resumed_root, *callback_arg(StopAfter, epochs=2)]) == 0
    (run,) = run_folders(tmp_path / "resumed")
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 20
    assert main([*base, "--trainer.default_root_dir", resumed_root, "--ckpt_path", "last"]) == 0
    (straight,) = run_folders(tmp_path / "straight")
    a, b = params(straight / "checkpoints" / "last.ckpt"), params(run / "checkpoints" / "last.ckpt")
    assert_same_state(a, b)
    ca = torch.load(straight / "checkpoints" / "last.ckpt", weights_only=False)
    cb = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ca["global_step"] == cb["global_step"] == 40
    # Adam's moments are part of the agent's state (compared above, bit for bit)
    assert any(name.startswith("agent.moments.actor.exp_avg_sq_") for name in a)


@pytest.mark.parametrize("stopped_at", [15, 20])  # inside epoch 2, and at its last batch
def test_a_max_steps_run_extended_by_max_steps_trains_to_the_new_end_exactly(stopped_at, tmp_path, capfd):
    """Lightning counts the epoch a `max_steps` stop cut as processed; resumed with a larger
    `max_steps` it counted it again and stopped early (at 21 of 30, or 20). isep reopens it."""
    base = ["fit", "--config", str(CONFIGS / "toy" / "sparse_isep_fm.yaml"), *TINY, "--data.toy_size", "500",
            "--mlflow.enabled", "false", "--evaluation.every", "0", "--trainer.max_epochs", "3"]
    assert main([*base, "--trainer.default_root_dir", str(tmp_path / "straight"), "--trainer.max_steps", "30"]) == 0
    resumed = ["--trainer.default_root_dir", str(tmp_path / "resumed")]
    assert main([*base, *resumed, "--trainer.max_steps", str(stopped_at)]) == 0
    capfd.readouterr()
    assert main([*base, *resumed, "--trainer.max_steps", "30", "--ckpt_path", "last"]) == 0
    assert "resuming from a checkpoint that ended before the epoch ended" not in capfd.readouterr().err  # (it does not apply)
    (straight,), (run,) = run_folders(tmp_path / "straight"), run_folders(tmp_path / "resumed")
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", weights_only=False) for r in (straight, run))
    assert a["global_step"] == b["global_step"] == 30 and a["epoch"] == b["epoch"]
    assert_same_state(params(straight / "checkpoints" / "last.ckpt"), params(run / "checkpoints" / "last.ckpt"))


def test_sigkill_loses_at_most_the_steps_since_the_last_checkpoint(use_store, tmp_path):
    root = tmp_path / "runs"
    args = [str(ISEP), "fit", "--config", str(CONFIGS / "hopper_med_gaussian.yaml"), *SMALL, "--mlflow.enabled", "false",
            "--trainer.default_root_dir", str(root), "--evaluation.every", "0", "--data.steps_per_epoch", "25"]
    proc = subprocess.Popen([*args, "--trainer.max_epochs", "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=os.environ.copy())
    try:
        deadline = time.monotonic() + 300
        last = None
        while time.monotonic() < deadline:
            found = list(root.rglob("last.ckpt"))
            if found and torch.load(found[0], weights_only=False)["global_step"] >= 50:
                last = found[0]
                break
            time.sleep(0.2)
        assert last is not None, "no checkpoint within 5 minutes"
        time.sleep(0.3)
    finally:  # never leave the run training after the test
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # whatever moment the kill hit, the checkpoint on disk is whole and at an epoch boundary
    state = torch.load(last, weights_only=False)
    assert state["global_step"] % 25 == 0 and state["global_step"] >= 50
    assert not [p for p in last.parent.iterdir() if p.suffix != ".ckpt"]
    kept = state["global_step"]
    done = subprocess.run([*args, "--trainer.max_epochs", str(kept // 25 + 1), "--ckpt_path", "last"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert torch.load(last, weights_only=False)["global_step"] == kept + 25


@pytest.mark.parametrize("fast", ["false", "true"])
def test_divergence_stops_with_the_loss_step_and_lambda(fast, use_store, mlflow_uri, tmp_path, capsys):
    import mlflow

    root = tmp_path / "runs"
    code = main(["fit", "--config", str(CONFIGS / "hopper_med.yaml"), *SMALL, "--trainer.default_root_dir", str(root),
                 "--trainer.max_epochs", "5", "--evaluation.every", "0", "--model.lam", "0.2", "--model.fast", fast,
                 *callback_arg(PoisonAt, step=12)])
    assert code == 2
    err = capsys.readouterr().err
    assert "training diverged at step 15 with λ = 0.2" in err and "critic/loss = nan" in err
    (run,) = run_folders(root)
    good = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert good["global_step"] == 10 and all(torch.isfinite(v).all() for v in good["state_dict"].values() if torch.is_tensor(v))
    client = mlflow.MlflowClient(mlflow_uri)
    (record,) = client.search_runs([client.get_experiment_by_name("test/hopper/random-v0").experiment_id])
    assert record.info.status == "FAILED" and "diverged at step 15" in record.data.tags["failure_reason"]


def test_value_blow_up_without_nan_is_caught(use_store, tmp_path, capsys):
    code = main(["fit", "--config", str(CONFIGS / "hopper_med_gaussian.yaml"), *SMALL, "--mlflow.enabled", "false",
                 "--trainer.default_root_dir", str(tmp_path / "runs"), "--trainer.max_epochs", "1",
                 "--evaluation.every", "0", "--model.divergence_factor", "1e-9"])
    assert code == 2
    assert "beyond" in capsys.readouterr().err


def test_mlflow_record_of_a_run(use_store, mlflow_uri, tmp_path):
    import mlflow

    root = tmp_path / "runs"
    assert main(["fit", "--config", str(CONFIGS / "hopper_med.yaml"), *SMALL, "--trainer.default_root_dir", str(root),
                 "--trainer.max_epochs", "1", "--evaluation.every", "1", "--seed_everything", "3"]) == 0
    client = mlflow.MlflowClient(mlflow_uri)
    (record,) = client.search_runs([client.get_experiment_by_name("test/hopper/random-v0").experiment_id])
    tags = record.data.tags
    assert record.info.status == "FINISHED"
    assert (tags["task"], tags["actor"], tags["lam"], tags["policy_mix"], tags["seed"]) == (
        "test/hopper/random-v0", "flow", "0.2", "stochastic", "3")
    assert len(tags["git_commit"]) >= 7
    assert record.data.params["model.expectile"] == "0.7" and record.data.params["data.batch_size"] == "32"
    assert {"eval/normalized_score", "eval/return_mean", "train/critic/loss", "train/actor/loss"} <= set(record.data.metrics)
    history = client.get_metric_history(record.info.run_id, "eval/normalized_score")
    assert [m.step for m in history] == [10]
    arts = {a.path for a in client.list_artifacts(record.info.run_id)}
    assert {"config.yaml", "eval_returns.jsonl", "checkpoints"} <= arts


def test_evaluation_env_that_does_not_match_the_data(use_store, tmp_path, capsys):
    code = main(["fit", "--config", str(CONFIGS / "hopper_med.yaml"), *SMALL, "--mlflow.enabled", "false",
                 "--trainer.default_root_dir", str(tmp_path / "runs"), "--evaluation.env_id", "HalfCheetah-v5"])
    assert code == 2
    assert "(17, 6)" in capsys.readouterr().err


def test_unwritable_run_folder(use_store, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["fit", "--config", str(CONFIGS / "hopper_med.yaml"), *SMALL, "--mlflow.enabled", "false",
                 "--trainer.default_root_dir", str(blocker / "runs")])
    assert code == 2
    assert "cannot write to the run folder" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder"


def test_fits_started_together_on_a_new_store_all_get_their_records(tmp_path):
    """Three processes open their MLflow runs at once on a sqlite store that does not exist yet:
    each gets its run (MLflow's migrations, done by all of them at once, failed all but one or all)."""
    import multiprocessing

    import mlflow

    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"  # (its folder does not exist either)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=open_record_together, args=(uri, barrier, results)) for _ in range(3)]
    for proc in procs:
        proc.start()
    ids = [results.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(timeout=60)
    assert not [i for i in ids if i.startswith("error")], ids
    client = mlflow.MlflowClient(uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "together"]
    assert sorted(r.info.run_id for r in client.search_runs([experiment.experiment_id])) == sorted(ids)


def test_compare_reads_back_runs_written_by_fit(tmp_path, capsys):
    from isep.results.cli import compare_main

    for lam in ("0.0", "0.3"):
        assert main(["fit", "--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"), *TINY, "--model.lam", lam,
                     "--trainer.max_epochs", "2", "--evaluation.every", "1",
                     "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    capsys.readouterr()
    assert compare_main(["--experiment", "toy/sparse-optimum", "--out", str(tmp_path / "cmp")]) == 0
    out = capsys.readouterr().out
    assert "IQL (λ=0)" in out and "ISEP λ=0.3" in out and "eval/expected_reward" in out
    rows = (tmp_path / "cmp" / "table.csv").read_text().splitlines()
    assert len(rows) == 3  # header + two groups


def test_a_repeated_run_never_replaces_an_earlier_one(tmp_path):
    args = ["fit", "--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"), *TINY, "--trainer.max_epochs", "1",
            "--evaluation.every", "0", "--mlflow.enabled", "false", "--trainer.default_root_dir", str(tmp_path / "runs")]
    assert main(args) == 0
    (first,) = run_folders(tmp_path / "runs")
    before = (first / "checkpoints" / "last.ckpt").read_bytes()
    assert main([*args, "--seed_everything", "0"]) == 0
    second = first.with_name(first.name + ".1")
    assert (second / "checkpoints" / "last.ckpt").is_file()
    assert (first / "checkpoints" / "last.ckpt").read_bytes() == before
    # resuming picks the newest run of that configuration
    assert main([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"]) == 0
    assert torch.load(second / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 20
    assert (first / "checkpoints" / "last.ckpt").read_bytes() == before


def test_evaluations_happen_as_planned(tmp_path):
    """The rule the sweep plans ASHA's horizon with is the one the evaluation callback follows."""
    from isep.callbacks.evaluation import planned_evaluations

    for epochs, steps, every in ((5, -1, 2), (-1, 25, 2)):
        root = tmp_path / f"e{epochs}s{steps}"
        assert main(["fit", "--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"), *TINY, "--data.toy_size", "500",
                     "--data.steps_per_epoch", "10", "--trainer.max_epochs", str(epochs), "--trainer.max_steps", str(steps),
                     "--evaluation.every", str(every), "--mlflow.enabled", "false",
                     "--trainer.default_root_dir", str(root)]) == 0
        (run,) = run_folders(root)
        records = (run / "eval_returns.jsonl").read_text().splitlines()
        assert len(records) == planned_evaluations(every, epochs, steps, 10) == (3 if epochs == 5 else 2)


def test_evaluation_guidance_reaches_the_toy_bandit():
    from isep.agent import ISEPAgent
    from isep.callbacks.evaluation import RolloutEvaluation
    from isep.data.datamodule import D4RLDataModule

    dm = D4RLDataModule(dataset="toy/sparse-optimum", toy_size=500)
    agent = ISEPAgent(1, 2, actor="flow", guidance=1.0, critic_hidden=[8], actor_hidden=[16, 16], flow_steps=3, seed=0)
    reward = {w: RolloutEvaluation(guidance=w).measure(agent, dm)[0][0]["eval/expected_reward"] for w in (None, 1.0, 4.0)}
    assert reward[None] == reward[1.0]  # the trained w
    assert reward[4.0] != reward[1.0]
