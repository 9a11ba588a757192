"""The fast path (`isep.fast`): the compiled update equals the eager one, the update never reads a
device value on the host, a CUDA graph replays it exactly (where a GPU exists), and the pieces it
rests on — counter-based draws and `StackedAdam` — behave as documented."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from isep.data.buffer import TransitionBuffer
from isep.fast import AcceleratedStep, HostSyncCheck, choose_mode
from isep.optim import StackedAdam
from isep.rng import Draws, Stream, run_keys
from tests.helpers import ready_agent, small_buffer

VARIANTS = {
    "gaussian": dict(actor="gaussian", lam=0.3, actor_dropout=0.1, value_mix="bernoulli", clip_policy_q=True),
    "flow": dict(actor="flow", lam=0.3, policy_mix="stochastic"),
    "flow-deterministic": dict(actor="flow", lam=0.5, policy_mix="deterministic"),
}


def ready_variant(variant: str, **kw):
    config = {**VARIANTS[variant], **kw}
    return ready_agent(config.pop("actor"), config.pop("lam"), **config)


def state_tensors(agent) -> dict[str, torch.Tensor]:
    """Parameters, buffers and Adam moments (all in the agent's state) and the metric sums:
    everything an update writes."""
    out = {k: v for k, v in agent.state_dict().items() if k != "_extra_state"}
    assert any(k.startswith("moments.") for k in out)
    out["metric_sum"] = agent.metric_sum
    return out


@pytest.mark.parametrize("variant", ["gaussian", "flow"])
def test_compiled_update_equals_eager(variant):
    eager, fast = ready_variant(variant), ready_variant(variant)
    start = {k: v.clone() for k, v in state_tensors(eager).items()}
    step_e, step_f = eager.step_function("eager"), fast.step_function("compile")
    for _ in range(10):  # more than Dynamo's recompile limit (8): the step must compile once
        step_e()
        step_f()
    a, b = state_tensors(eager), state_tensors(fast)
    assert a.keys() == b.keys() and int(fast.updates) == 10
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)
    # the comparison is of trained weights, not of untouched ones
    for net in ("actor", "critic", "value", "target_critic"):
        assert any(not torch.equal(a[k], start[k]) for k in a if k.startswith(f"{net}.")), net


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_update_reads_nothing_back_to_the_host(variant):
    agent = ready_variant(variant)
    step = agent.step_function("eager")
    step()  # the first update too: nothing is allocated or decided on the host later
    with HostSyncCheck() as check:
        step()
        step()
    assert check.found == []
    # the check can fail: reading a metric is a host sync
    with HostSyncCheck() as check:
        agent.metric_sum.sum().item()
    assert check.found == ["aten::_local_scalar_dense"]


def test_host_sync_check_sees_masks_and_branches():
    x = torch.randn(8)
    with HostSyncCheck() as check:
        x[x > 0]
        if x.sum() > 0:
            pass
    assert check.found == ["aten::index.Tensor", "aten::_local_scalar_dense"]


def test_mode_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert choose_mode(None, cpu) == "eager" and choose_mode(None, cpu, 1_000) == "eager"
    assert choose_mode(None, cpu, 2_000_000) == "compile" and choose_mode(True, cpu) == "compile"
    assert choose_mode(None, cuda) == "graph" and choose_mode(True, cuda) == "graph"
    assert choose_mode(False, cuda) == "eager" and choose_mode(False, cpu, 2_000_000) == "eager"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("variant", ["gaussian", "flow"])
def test_cuda_graph_replays_the_eager_update(variant):
    agents = {}
    for fast in (False, True):
        agent = ready_variant(variant).cuda()
        agent.attach_data(small_buffer().to("cuda"), 16)
        agents[fast] = agent
    step_e, step_g = agents[False].step_function("eager"), agents[True].step_function("graph")
    assert isinstance(step_g, AcceleratedStep) and step_g.mode == "graph"
    step_e()  # first call: allocations, nothing to check
    torch.cuda.set_sync_debug_mode("error")  # any device → host synchronisation raises
    try:
        for _ in range(7):
            step_e()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for _ in range(8):  # 3 warm-up updates, the capture, then replays
        step_g()
    assert step_g.captured
    a, b = state_tensors(agents[False]), state_tensors(agents[True])
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5, msg=name)


# -- the pieces -----------------------------------------------------------------------------------


def test_stacked_adam_is_torch_adam_and_freezes_inactive_members():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(3, 4, 5)), torch.nn.Parameter(torch.randn(3, 1, 5))]
    ref = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ours, theirs = StackedAdam(params, lr=1e-2), torch.optim.Adam(ref, lr=1e-2)
    for t in range(1, 6):
        grads = [torch.randn_like(p) for p in params]
        ours.apply(grads, torch.tensor(float(t)), lr_factor=torch.tensor(0.5))
        for r, g in zip(ref, grads):
            r.grad = g.clone()
        for group in theirs.param_groups:
            group["lr"] = 1e-2 * 0.5
        theirs.step()
    for p, r in zip(params, ref):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)
    before = [p.detach().clone() for p in params]
    ours.apply([torch.full_like(p, float("nan")) for p in params], torch.tensor(6.0),
               active=torch.tensor([True, False, True]))
    for p, old in zip(params, before):
        assert torch.equal(p[1], old[1])  # frozen: not even a NaN gradient moves it
        assert torch.isnan(p[0]).all()
    with pytest.raises(RuntimeError, match="apply"):
        ours.step()


def test_draws_are_keyed_by_run_update_and_stream():
    keys = run_keys([0, 1, 2])
    a = Draws(keys, torch.tensor(10)).uniform(Stream.BATCH, (1000,))
    assert torch.equal(a, Draws(keys, torch.tensor(10)).uniform(Stream.BATCH, (1000,)))
    # run 1 draws the same numbers alone as in a stack
    assert torch.equal(a[1:2], Draws(keys[1:2], torch.tensor(10)).uniform(Stream.BATCH, (1000,)))
    # other runs, updates and streams draw other numbers
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a, Draws(keys, torch.tensor(11)).uniform(Stream.BATCH, (1000,)))
    assert not torch.equal(a, Draws(keys, torch.tensor(10)).uniform(Stream.ACTOR_GATE, (1000,)))
    assert abs(np.corrcoef(a[0].numpy(), a[1].numpy())[0, 1]) < 0.1


def test_draws_have_the_right_distributions():
    d = Draws(run_keys([7]), torch.tensor(3))
    u = d.uniform(Stream.FLOW_TIME, (200_000,))[0]
    assert 0.0 <= float(u.min()) and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    hist = torch.histc(u, 10, 0, 1)
    assert float(((hist - 20_000) ** 2 / 20_000).sum()) < 30  # χ² with 9 d.o.f.: p ≈ 4e-4 at 30
    z = d.normal(Stream.FLOW_NOISE, (200_000,))[0]
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    assert abs(float((z.abs() > 2).float().mean()) - 0.0455) < 0.003
    i = d.randint(Stream.BATCH, (200_000,), 7)[0]
    counts = torch.bincount(i, minlength=7).float()
    assert i.min() == 0 and i.max() == 6 and float(counts.min()) > 0.95 * 200_000 / 7
    b = d.bernoulli(Stream.ACTOR_GATE, (200_000,), torch.tensor([[0.3]]))[0]
    assert abs(float(b.float().mean()) - 0.3) < 0.005


def test_a_copied_agent_draws_the_same_batches():
    a = ready_variant("gaussian")
    b = copy.deepcopy(a)
    a.step_function()()
    b.step_function()()
    sa, sb = state_tensors(a), state_tensors(b)
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_many_compiled_agents_in_one_process():
    """Dynamo guards on the agent: without a reset the 9th agent hit `recompile_limit` and failed."""
    for _ in range(9):
        agent = ready_variant("gaussian")
        step = agent.step_function("compile")
        step()
    assert int(agent.updates) == 1 and torch.isfinite(agent.metric_sum).all()


def test_mix32_is_lowbias32():
    """The hash is Wellons' lowbias32, written here in plain Python integers as published."""
    from isep.rng import mix32

    def lowbias32(x: int) -> int:
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x846CA68B) & 0xFFFFFFFF
        return x ^ (x >> 16)

    values = [0, 1, 2, 12345, 0xDEADBEEF, 0xFFFFFFFF, 0x80000000, 0x7FFFFFFF]
    assert mix32(torch.tensor(values, dtype=torch.int64)).tolist() == [lowbias32(v) for v in values]


def test_compiled_mish_is_mish():
    """The compiled step's one-exp Mish (`isep.models.mlp.mish`) is F.mish, values and gradients,
    over the whole range (the clamp at e^20 included), in float32 and in bf16."""
    from isep.models.mlp import mish

    x = torch.cat([torch.linspace(-60.0, 60.0, 4001), torch.randn(4000)]).requires_grad_()
    compiled = torch.compile(mish, fullgraph=True)
    y = compiled(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    ref = torch.nn.functional.mish(x)
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g, g_ref, rtol=1e-5, atol=1e-5)
    low = x.detach().bfloat16()
    torch.testing.assert_close(compiled(low), torch.nn.functional.mish(low), rtol=1.6e-2, atol=1e-2)
