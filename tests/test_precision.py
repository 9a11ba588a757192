"""Mixed precision (`--trainer.precision bf16-mixed`): the bf16 update stays within Adam's step bound
of the fp32 one, compiled = eager, resume is exact, checkpoints cross precisions for evaluation,
the run key tells precisions apart, and what isep cannot run is refused before training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from isep.cli import main
from isep.precision import FP32, LOW, plan_for
from tests.conftest import CONFIGS, TINY
from tests.helpers import assert_same_state, ready_agent, run_folders, run_isep

UPDATES = 5
LR = 3e-4
TOY = ["--config", str(CONFIGS / "toy" / "sparse_isep_fm.yaml"), *TINY, "--data.toy_size", "500",
       "--evaluation.every", "1", "--mlflow.enabled", "false"]


@pytest.fixture
def bf16_fit(monkeypatch):
    """`isep fit --trainer.precision bf16-mixed` on any CPU: where the CPU has no bf16 units isep
    refuses bf16 (it would be emulated, ~60× slower than fp32), so the bookkeeping tests run under
    the documented override with TINY's 32-wide networks, which emulated bf16 trains in seconds."""
    from isep.precision import native_bf16

    if not native_bf16(torch.device("cpu")):
        monkeypatch.setenv("ISEP_ALLOW_EMULATED_BF16", "1")


def trained(actor: str, precision: str, mode: str = "eager", parts: str = "safe"):
    agent = ready_agent(actor, 0.3)
    agent.set_precision(precision, parts)
    step = agent.step_function(mode)
    for _ in range(UPDATES):
        step()
    return agent


def test_the_plans():
    assert plan_for("32-true") == plan_for("32") and plan_for("32-true").critic == FP32
    safe = plan_for("bf16-mixed")
    assert safe.critic.hidden == safe.value.hidden == safe.target.hidden == LOW  # hidden layers in bf16
    assert safe.critic.head is safe.value.head is safe.target.head is None  # heads in fp32
    assert safe.sampler.hidden == safe.sampler.head == safe.actor.head == LOW
    sampler = plan_for("bf16-mixed", "sampler")
    assert sampler.sampler.hidden == LOW and sampler.actor == sampler.critic == FP32


@pytest.mark.parametrize("actor", ["gaussian", "flow"])
def test_bf16_stays_within_adams_step_bound_of_fp32(actor):
    """Adam moves each weight by at most ~lr per update, so two runs from one start differ by at
    most 2·lr·updates per weight whatever their gradients; bf16 must stay inside that, and its
    losses within 2 % of fp32's."""
    fp32, bf16 = trained(actor, "32-true"), trained(actor, "bf16-mixed")
    worst = max(float((a - b).abs().max()) for a, b in zip(fp32.parameters(), bf16.parameters()))
    moved = max(float((a - b).abs().max()) for a, b in zip(fp32.parameters(), ready_agent(actor, 0.3).parameters()))
    assert 0 < worst <= 2 * LR * UPDATES * 1.05, worst
    assert moved > worst  # training moved the weights more than precision did
    m32, m16 = fp32.read_metrics()[0], bf16.read_metrics()[0]
    for key in ("critic/loss", "value/loss", "q/mean"):
        assert m16[key] == pytest.approx(m32[key], rel=0.02, abs=1e-3), key


@pytest.mark.parametrize("actor", ["gaussian", "flow"])
def test_compiled_bf16_equals_eager_bf16(actor):
    eager, fast = trained(actor, "bf16-mixed"), trained(actor, "bf16-mixed", mode="compile")
    for (name, a), b in zip(eager.named_parameters(), fast.parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=2 * LR * UPDATES, msg=name)
    assert int(fast.updates) == UPDATES


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
                    reason="needs a CUDA device of compute capability 8.0 or newer")
@pytest.mark.parametrize("actor", ["gaussian", "flow"])
def test_the_cuda_graph_captures_the_bf16_step(actor):
    """bf16-mixed on the GPU's path: compiled, captured and replayed = eager bf16 (within Adam's
    step bound). Written for the first GPU session; never run on this project's CPU machines."""
    from isep.data.buffer import TransitionBuffer
    from tests.helpers import small_buffer

    agents = {}
    for mode in ("eager", "graph"):
        agent = ready_agent(actor, 0.3).cuda()
        agent.attach_data(small_buffer().to("cuda"), 16)
        agent.set_precision("bf16-mixed")
        step = agent.step_function(mode)
        for _ in range(8):  # graph: 3 warm-up updates, the capture, then replays
            step()
        agents[mode] = agent
    for (name, a), b in zip(agents["eager"].named_parameters(), agents["graph"].parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=2 * LR * 8, msg=name)
    assert int(agents["graph"].updates) == 8


def test_bf16_resume_is_bit_equal_to_an_uninterrupted_bf16_run(tmp_path, bf16_fit, capfd):
    from tests.helpers import StopAfter, callback_arg

    base = ["fit", *TOY, "--trainer.precision", "bf16-mixed", "--model.lam", "0.3", "--trainer.max_epochs", "4"]
    assert main([*base, "--trainer.default_root_dir", str(tmp_path / "straight")]) == 0
    # isep's start line says the precision; Lightning's AMP line (about autocast, which isep turns off) goes
    assert "Automatic Mixed Precision" not in "".join(capfd.readouterr())
    assert main([*base, "--trainer.default_root_dir", str(tmp_path / "resumed"), *callback_arg(StopAfter, epochs=2)]) == 0
    assert main([*base, "--trainer.default_root_dir", str(tmp_path / "resumed"), "--ckpt_path", "last"]) == 0
    (a,), (b,) = run_folders(tmp_path / "straight"), run_folders(tmp_path / "resumed")
    sa = torch.load(a / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    sb = torch.load(b / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert sa["agent._extra_state"]["precision"] == "bf16-mixed"
    assert_same_state(sa, sb)


def test_precision_is_part_of_the_run_and_checkpoints_cross_it_for_evaluation(tmp_path, capsys, bf16_fit):
    root = tmp_path / "runs"
    for precision in ("32-true", "bf16-mixed"):
        assert main(["fit", *TOY, "--trainer.precision", precision, "--trainer.max_epochs", "1",
                     "--trainer.default_root_dir", str(root)]) == 0
    trained = {torch.load(f / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]["agent._extra_state"]
               ["precision"]: f for f in run_folders(root)}
    fp32, bf16 = trained["32-true"], trained["bf16-mixed"]
    assert fp32.name != bf16.name  # two runs, two folders: the key knows the precision
    # a bf16 run never resumes as an fp32 one by accident
    capsys.readouterr()
    code = main(["fit", *TOY, "--trainer.precision", "32-true", "--trainer.max_epochs", "2",
                 "--trainer.default_root_dir", str(root), "--ckpt_path", str(bf16 / "checkpoints" / "last.ckpt")])
    assert code == 2 and "trainer.precision: the checkpoint was trained in 'bf16-mixed'" in capsys.readouterr().err
    # each checkpoint evaluates in the other precision
    for folder, other in ((fp32, "bf16-mixed"), (bf16, "32-true")):
        assert main(["evaluate", "--ckpt_path", str(folder), "--precision", other, "--no-mlflow"]) == 0
        assert other in capsys.readouterr().out


@pytest.mark.parametrize("precision, message", [
    ("16-mixed", "needs loss scaling"),
    ("64-true", "isep trains in 32-true or bf16-mixed"),
    ("bf16-true", "isep trains in 32-true or bf16-mixed"),
])
def test_what_isep_cannot_run_stops_before_training(precision, message, tmp_path):
    out = run_isep("fit", *TOY, "--trainer.precision", precision, "--trainer.default_root_dir", str(tmp_path / "runs"),
                   cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists()


def test_the_fidelity_check_pairs_precisions_and_says_whether_they_agree():
    import importlib.util

    import pandas as pd

    spec = importlib.util.spec_from_file_location("fidelity", Path(__file__).parents[1] / "benchmarks" / "precision_fidelity.py")
    fidelity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fidelity)
    base = {"task": "t", "actor": "gaussian", "policy_mix": "stochastic", "left_out": ""}
    runs = pd.DataFrame([{**base, "lam": lam, "trainer.precision": p, "score": s}
                         for lam, p, scores in ((0.0, "32-true", (50, 51, 52)), (0.0, "bf16-mixed", (50.5, 51.5, 49.5)),
                                                (0.3, "32-true", (50, 51, 52)), (0.3, "bf16-mixed", (40, 41, 42)),
                                                (0.5, "32-true", (50, 51, 52)))
                         for s in scores])
    rows = {r["lam"]: r for r in fidelity.fidelity_rows(runs)}
    assert set(rows) == {0.0, 0.3}  # λ 0.5 has no bf16 runs
    assert rows[0.0]["agree"] and rows[0.0]["delta"].value == pytest.approx(-0.5)
    assert not rows[0.3]["agree"] and rows[0.3]["poi"].value == 0.0
    assert "| t | gaussian | 0.3 |" in fidelity.markdown(list(rows.values()))


def test_compare_tells_precisions_apart_and_old_fp32_runs_from_new_ones_not():
    from isep.results.frames import _precision_settings

    old = _precision_settings({}, {"trainer.precision": "None"})  # logged by code from before precisions
    new = _precision_settings({}, {"trainer.precision": "32-true", "model.bf16_parts": "sampler", "model.tf32": "False"})
    bf16 = _precision_settings({}, {"trainer.precision": "bf16-mixed", "model.bf16_parts": "sampler"})
    assert old == new == {"trainer.precision": "32-true", "model.tf32": "False", "model.bf16_parts": "safe",
                          "model.policy_guidance": "None", "model.policy_flow_steps": "None"}
    assert bf16["trainer.precision"] == "bf16-mixed" and bf16["model.bf16_parts"] == "sampler"


@pytest.mark.parametrize("flags, units", [
    ("fpu avx512f avx512_bf16 amx_bf16 amx_tile", "AMX"),   # Intel Sapphire Rapids: both, AMX named
    ("fpu avx512f avx512_bf16 avx512_vnni", "AVX-512 BF16"),  # AMD Zen 4
    ("fpu avx2 fma", ""),
])
def test_the_cpus_bf16_units_are_read_from_its_flags(flags, units, tmp_path):
    from isep.precision import cpu_bf16_units

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_bf16_units(str(cpuinfo)) == units
    assert cpu_bf16_units(str(tmp_path / "absent")) == ""


def test_the_roofline_holds_each_product_against_the_peak_of_the_dtype_it_ran_in():
    from isep.bench.roofline import DtypeFlops, ideal_seconds

    agent = ready_agent("flow", 0.3)
    with DtypeFlops() as fp32:
        agent.train_step()
    agent.set_precision("bf16-mixed", "safe")
    with DtypeFlops() as safe:
        agent.train_step()
    assert fp32.by_dtype["bf16"] == 0 and fp32.total > 0
    # the same products; under `safe` the heads of the critics and V stay fp32, the rest is bf16
    assert safe.total == fp32.total and 0 < safe.by_dtype["fp32"] < 0.2 * safe.total
    flops = {"total": safe.total, **safe.by_dtype}
    peaks = {"fp32": 100.0, "bf16": 200.0}
    assert ideal_seconds(flops, peaks) == pytest.approx((safe.by_dtype["fp32"] / 100 + safe.by_dtype["bf16"] / 200) / 1e9)
