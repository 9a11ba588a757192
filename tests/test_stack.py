"""Stacked runs: a λ × seed grid trained as one model equals the same runs trained apart, resumes
exactly, freezes a diverging run alone, and leaves MLflow records that `isep compare` cannot tell
from separate runs'."""

from __future__ import annotations

import json

import pytest
import torch

from isep.cli import main
from tests.conftest import CONFIGS, TINY
from tests.helpers import (
    DivergenceListener,
    PoisonAt,
    StopAfter,
    assert_same_state,
    callback_arg,
    ready_agent,
    run_folders,
)

STACKS = {
    "gaussian": dict(actor="gaussian", lam=[0.0, 0.3, 0.5], seed=[3, 4, 5], beta=[1.0, 2.0, 3.0], actor_dropout=0.1,
                     value_mix="bernoulli"),
    "flow": dict(actor="flow", lam=[0.0, 0.3, 0.5], seed=[3, 4, 5], guidance=[1.0, 2.0, 3.0],
                 policy_mix=["deterministic", "deterministic", "stochastic"], clip_policy_q=True),
}


def separate(config: dict, run: int) -> dict:
    return {k: (v[run] if isinstance(v, list) else v) for k, v in config.items()}


@pytest.mark.parametrize("actor", ["gaussian", "flow"])
def test_a_stack_equals_its_runs_trained_apart(actor):
    """After 5 updates, every tensor of each run of a stack equals that run trained alone within
    float32 rounding (rtol 1e-5): the same math, summed in another order. Not bit for bit, and the
    gap grows with training (`benchmarks/stack_drift.py`: 5.5e-6 after 1 update, 0.27 after 300)."""
    config = dict(STACKS[actor])
    kind, lam = config.pop("actor"), config.pop("lam")
    stack = ready_agent(kind, lam, max_reward=0.0, **config)
    alone = [ready_agent(kind, lam[r], max_reward=0.0, **separate(config, r)) for r in range(3)]
    step = stack.step_function()
    for _ in range(5):
        step()
    worst = 0.0
    for r, agent in enumerate(alone):
        one = agent.step_function()
        for _ in range(5):
            one()
        # everything, Adam's moments included (the run's rows of the stack's: 2 per run for the critic)
        mine, theirs = stack.select_run(r).state_dict(), agent.state_dict()
        assert mine.keys() == theirs.keys() and any(k.startswith("moments.critic.") for k in mine)
        assert mine.pop("_extra_state") == theirs.pop("_extra_state")
        for name, tensor in theirs.items():
            torch.testing.assert_close(mine[name], tensor, rtol=1e-5, atol=1e-6, msg=f"run {r}: {name}")
            if tensor.is_floating_point():
                worst = max(worst, float((mine[name] - tensor).abs().max()))
        ours = dict(zip(stack.metric_names, stack.metric_sum[r]))  # (a λ = 0 run alone logs no q_pi/*)
        for name, value in zip(agent.metric_names, agent.metric_sum[0]):
            torch.testing.assert_close(ours[name], value, rtol=1e-5, atol=1e-5, msg=f"run {r}: {name}")
    print(f"largest parameter difference, {actor} stack of 3 vs 3 runs, 5 updates: {worst:.3g}")
    # the runs did differ from each other (different seeds and λ): the comparison is not trivial
    assert not torch.equal(alone[0].actor.net.layers[0].weight, alone[1].actor.net.layers[0].weight)


def test_per_run_lists_are_checked(tmp_path, capsys):
    from isep.errors import ConfigError
    from tests.helpers import make_agent

    with pytest.raises(ConfigError, match="one length"):
        make_agent("gaussian", [0.0, 0.3], seed=[0, 1, 2])
    # through the CLI: the same error before any run folder is made
    assert main(["fit", *TOY, "--model.lam", "[0, 0.3]", "--model.seed", "[0, 1, 2]",
                 "--trainer.default_root_dir", str(tmp_path / "runs")]) == 2
    assert "one length" in capsys.readouterr().err and not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="lam"):
        make_agent("gaussian", [0.0, 1.3])
    with pytest.raises(ValueError, match="shape \\(2, N, S\\)"):
        make_agent("gaussian", [0.0, 0.3]).act(torch.zeros(5, 3))
    with pytest.raises(IndexError, match="0..1"):
        make_agent("gaussian", [0.0, 0.3]).select_run(2)
    with pytest.raises(ConfigError, match="weighted_sum"):
        make_agent("gaussian", [0.3, 0.3], seed=[0, 1], policy_mix=["weighted_sum", "stochastic"])


def test_a_frozen_run_stops_moving_and_the_others_go_on():
    stack = ready_agent("gaussian", [0.0, 0.3], seed=[0, 1], actor_dropout=0.1, value_mix="bernoulli", clip_policy_q=True)
    stack.step_function()()
    stack.freeze(1, "run 1: training diverged with λ = 0.3")
    frozen = stack.select_run(1).state_dict()
    moving = stack.select_run(0).state_dict()
    for _ in range(3):
        stack.step_function()()
    after1, after0 = stack.select_run(1).state_dict(), stack.select_run(0).state_dict()
    for name in ("critic.net.layers.0.weight", "value.net.layers.0.weight", "actor.net.layers.0.weight",
                 "target_critic.net.layers.0.weight"):
        assert torch.equal(after1[name], frozen[name]), name
        assert not torch.equal(after0[name], moving[name]), name
    assert 1 in stack.failures and "λ = 0.3" in stack.failures[1]


# -- through the CLI ---------------------------------------------------------------------------------

TOY = ["--config", str(CONFIGS / "toy" / "sparse_isep_fm.yaml"), *TINY, "--data.toy_size", "500",
       "--evaluation.every", "1"]


def test_stacked_records_read_back_like_separate_runs(tmp_path, capsys):
    """The same 4 runs, stacked and apart, into two experiments: `isep compare` gives the same table."""
    from isep.results.cli import compare_main

    common = [*TOY, "--trainer.max_epochs", "2", "--trainer.default_root_dir", str(tmp_path / "runs")]
    assert main(["fit", *common, "--stack.lam", "0,0.3", "--stack.seed", "0,1", "--mlflow.experiment", "stacked"]) == 0
    for lam in ("0", "0.3"):
        for seed in ("0", "1"):
            assert main(["fit", *common, "--model.lam", lam, "--seed_everything", seed, "--mlflow.experiment", "apart"]) == 0
    tables = {}
    for name in ("stacked", "apart"):
        assert compare_main(["--experiment", name, "--out", str(tmp_path / name)]) == 0
        tables[name] = (tmp_path / name / "table.csv").read_text()
    assert tables["stacked"] == tables["apart"]
    assert tables["stacked"].count("\n") == 3  # header + 2 groups (λ = 0, 0.3) of 2 seeds
    import mlflow

    client = mlflow.MlflowClient()
    for name in ("stacked", "apart"):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    stacked = client.search_runs([client.get_experiment_by_name("stacked").experiment_id])
    apart = client.search_runs([client.get_experiment_by_name("apart").experiment_id])
    key = lambda r: (r.data.tags["lam"], r.data.tags["seed"])  # noqa: E731
    for s, a in zip(sorted(stacked, key=key), sorted(apart, key=key)):
        assert s.data.tags["isep.trial"] == a.data.tags["isep.trial"]  # a sweep finds either as the same trial
        assert set(s.data.params) == set(a.data.params)
        differ = {k for k in a.data.params if s.data.params[k] != a.data.params[k]}
        assert differ <= {"trainer.default_root_dir", "mlflow.experiment", "stack.lam", "stack.seed"}
        assert s.data.metrics["eval/expected_reward"] == a.data.metrics["eval/expected_reward"]
        assert {"run_dir", "isep.stack", "isep.stack_index"} <= set(s.data.tags)
    # together, a stacked run and a separate run of one seed count once, and compare says they are
    # two computations of the same settings, not a re-run of one
    capsys.readouterr()
    assert compare_main(["--experiment", "stacked,apart", "--out", str(tmp_path / "both")]) == 0
    said = " ".join(capsys.readouterr().out.split())
    assert said.count("one ran in a stack, the other alone") == 4, said


def test_stacked_resume_equals_an_uninterrupted_stack(tmp_path):
    base = ["fit", *TOY, "--stack.lam", "0,0.5", "--stack.seed", "0,1", "--trainer.max_epochs", "4",
            "--mlflow.enabled", "false"]
    assert main([*base, "--trainer.default_root_dir", str(tmp_path / "straight")]) == 0
    resumed = str(tmp_path / "resumed")
    assert main([*base, "--trainer.default_root_dir", resumed, *callback_arg(StopAfter, epochs=2)]) == 0
    assert main([*base, "--trainer.default_root_dir", resumed, "--ckpt_path", "last"]) == 0
    (a,), (b,) = run_folders(tmp_path / "straight"), run_folders(tmp_path / "resumed")
    assert a.name.startswith("stack4-flow")
    ca = torch.load(a / "checkpoints" / "last.ckpt", weights_only=False)
    cb = torch.load(b / "checkpoints" / "last.ckpt", weights_only=False)
    assert ca["global_step"] == cb["global_step"] == 40
    assert_same_state(ca["state_dict"], cb["state_dict"])
    # each run's evaluation record: the same returns, written to its own folder
    for run in range(4):
        (fa,), (fb,) = a.glob(f"run{run}-*"), b.glob(f"run{run}-*")
        ra = [json.loads(x) for x in (fa / "eval_returns.jsonl").read_text().splitlines()]
        rb = [json.loads(x) for x in (fb / "eval_returns.jsonl").read_text().splitlines()]
        assert [r["step"] for r in ra] == [10, 20, 30, 40] and ra == rb


def test_one_run_of_a_stack_diverges_alone(tmp_path, capsys):
    import mlflow

    heard = tmp_path / "heard.jsonl"
    code = main(["fit", *TOY, "--stack.lam", "0,0.2,0.4", "--trainer.max_epochs", "4", "--mlflow.experiment", "nan",
                 "--trainer.default_root_dir", str(tmp_path / "runs"), *callback_arg(PoisonAt, step=12, run=1),
                 *callback_arg(DivergenceListener, path=str(heard))])
    assert code == 0
    (event,) = [json.loads(line) for line in heard.read_text().splitlines()]  # a user's callback heard it, once
    assert event["run"] == 1 and event["step"] == 15 and "λ = 0.2" in event["reason"]
    client = mlflow.MlflowClient()
    runs = {r.data.tags["lam"]: r for r in client.search_runs([client.get_experiment_by_name("nan").experiment_id])}
    assert runs["0.2"].info.status == "FAILED"
    reason = runs["0.2"].data.tags["failure_reason"]
    assert "diverged at step 15 with λ = 0.2" in reason and "critic/loss = nan" in reason
    assert runs["0.0"].info.status == runs["0.4"].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs["0.2"].info.run_id, "train/critic/loss")]
    assert max(steps) <= 15  # nothing logged for it after the stop
    assert [m.step for m in client.get_metric_history(runs["0.4"].info.run_id, "eval/expected_reward")] == [10, 20, 30, 40]
    (folder,) = run_folders(tmp_path / "runs")
    state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 40 and state["state_dict"]["agent.active"].tolist() == [True, False, True]
    live = state["state_dict"]["agent.critic.net.layers.0.weight"]
    assert torch.isfinite(live[[0, 1, 4, 5]]).all() and torch.isnan(live[2:4]).all()


def test_evaluate_one_run_of_a_stack(tmp_path, capsys):
    assert main(["fit", *TOY, "--stack.lam", "0,0.3", "--trainer.max_epochs", "1",
                 "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    (stack,) = run_folders(tmp_path / "runs")
    (member,) = stack.glob("run1-*")
    capsys.readouterr()
    assert main(["evaluate", "--ckpt_path", str(member), "--guidance", "1,2"]) == 0
    assert " run 1 " in capsys.readouterr().out
    assert len((member / "guidance_eval.jsonl").read_text().splitlines()) == 2
    assert main(["evaluate", "--ckpt_path", str(stack), "--guidance", "1"]) == 2
    assert "pass --run K (0..1)" in capsys.readouterr().err
    assert main(["evaluate", "--ckpt_path", str(stack), "--run", "0", "--no-mlflow"]) == 0


def test_a_stack_without_loggers_keeps_each_run_apart(tmp_path, capsys):
    common = ["fit", *TOY, "--stack.lam", "0,0.3", "--trainer.max_epochs", "1", "--mlflow.enabled", "false"]
    assert main([*common, "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    (stack,) = run_folders(tmp_path / "runs")
    assert len(list(stack.glob("run*/eval_returns.jsonl"))) == 2 and not (stack / "eval_returns.jsonl").exists()
    assert not list(stack.rglob("metrics.csv"))  # (a given logger gives each run its own stream: test_loggers)
