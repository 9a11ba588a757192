"""On a CUDA GPU (`pytest -m gpu`, run by `make gpu-check`): the captured update replays the compiled
one bit for bit and stays within rounding of eager, a stack computes what its runs compute alone,
TF32 stays near fp32, evaluation runs on the device, `isep fit` takes the checked graph path, and a
two-trial sweep shares one GPU. Skipped where there is no CUDA device (this project's CI)."""

from __future__ import annotations

import mlflow
import pytest
import torch

from isep.cli import main
from tests.conftest import CONFIGS, TINY
from tests.helpers import ready_agent, run_isep, small_buffer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
TOY = ["--config", str(CONFIGS / "toy" / "sparse_isep_fm.yaml"), *TINY, "--data.toy_size", "500"]


def on_gpu(actor: str, lam, **kw):
    from isep.data.buffer import TransitionBuffer

    agent = ready_agent(actor, lam, **kw).cuda()
    agent.attach_data(small_buffer().to("cuda"), 16)
    return agent


def trained_state(agent, mode: str, updates: int = 8) -> dict[str, torch.Tensor]:
    step = agent.step_function(mode)
    for _ in range(updates):
        step()
    torch.cuda.synchronize()
    state = {k: v for k, v in agent.state_dict().items() if torch.is_tensor(v)}
    state["metric_sum"] = agent.metric_sum
    return state


@pytest.mark.parametrize("actor", ["gaussian", "flow"])
def test_the_graph_replays_the_compiled_update_bit_for_bit_and_eager_within_rounding(actor):
    compiled = trained_state(on_gpu(actor, 0.3), "compile")
    graph = trained_state(on_gpu(actor, 0.3), "graph")  # 3 warm-up updates, the capture, 5 replays
    eager = trained_state(on_gpu(actor, 0.3), "eager")
    for name in compiled:
        assert torch.equal(graph[name], compiled[name]), (name, float((graph[name].double() - compiled[name].double()).abs().max()))
        torch.testing.assert_close(graph[name], eager[name], rtol=1e-4, atol=1e-5, msg=name)


def test_a_stack_on_the_gpu_computes_what_its_runs_compute_alone():
    stack = trained_state(on_gpu("flow", [0.0, 0.3], seed=[0, 1]), "graph")
    for run, (lam, seed) in enumerate(((0.0, 0), (0.3, 1))):
        alone = trained_state(on_gpu("flow", lam, seed=seed), "graph")
        for name, value in alone.items():
            if name in ("keys", "updates") or not value.is_floating_point() or value.dim() == 0:
                continue
            rows = slice(2 * run, 2 * run + 2) if "critic" in name.split(".")[0] or name.startswith("moments.critic") else slice(run, run + 1)
            if stack[name].shape[0] == value.shape[0]:  # a statistic shared by the stack (data stats)
                continue
            torch.testing.assert_close(stack[name][rows], value, rtol=1e-4, atol=1e-5, msg=name)


def test_tf32_products_stay_near_fp32():
    fp32 = trained_state(on_gpu("flow", 0.3), "graph")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        tf32 = trained_state(on_gpu("flow", 0.3), "graph")
    finally:
        torch.set_float32_matmul_precision(before)
    start = {k: v for k, v in on_gpu("flow", 0.3).state_dict().items() if torch.is_tensor(v)}
    for name in ("actor.net.layers.0.weight", "critic.net.layers.0.weight", "value.net.layers.0.weight"):
        moved = (fp32[name] - start[name]).norm()
        assert (tf32[name] - fp32[name]).norm() < 0.1 * moved, name


def test_evaluation_runs_on_the_device():
    from isep.evaluation import Evaluator

    agent = on_gpu("flow", 0.3)
    evaluator = Evaluator(episodes=2, num_envs=2, max_episode_steps=20)
    evaluator.prepare("HalfCheetah-v5", None, None, agent.obs_dim, agent.act_dim)
    (metrics, record), = evaluator.rollouts(agent, None)
    assert len(record["returns"]) == 2 and torch.isfinite(torch.tensor(metrics["eval/return_mean"]))


def test_isep_fit_on_the_gpu_takes_the_checked_graph_path(tmp_path, capfd):
    assert main(["fit", *TOY, "--trainer.accelerator", "gpu", "--trainer.max_epochs", "3",
                 "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    err = capfd.readouterr().err
    assert "failed (" not in err, err
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.data.tags["update_path"] == "graph" and "update_path_failures" not in run.data.tags


def test_a_two_trial_sweep_shares_the_gpu(tmp_path):
    pytest.importorskip("ray", reason="isep sweep needs the `sweep` extra (Ray Tune)")
    from tests.test_sweep import toy

    out = run_isep("sweep", "--config", str(CONFIGS / "toy" / "sparse_isep_fm.yaml"), *toy(), "--lam", "0,0.3",
                   "--seeds", "0", "--name", "gpu", "--gpus_per_run", "0.5", "--num_cpus", "2", cwd=tmp_path,
                   env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "2 trials, 2 to run" in out.stdout
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    trials = [r for r in client.search_runs([client.get_experiment_by_name("gpu").experiment_id])
              if "isep.trial" in r.data.tags]
    assert len(trials) == 2 and all(r.data.tags.get("update_path") == "graph" for r in trials)
