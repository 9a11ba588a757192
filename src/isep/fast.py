"""The fast path: run the update eagerly, compiled, or compiled and captured as one CUDA graph.

The update (`ISEPModule.train_step`) takes no arguments and returns nothing: it reads the
resident dataset and the update counter, and writes parameters, optimizer moments, targets and
metric sums in place. Such a function can be replayed from a CUDA graph without copying inputs.

- `eager`: call it (CPU default; the reference the tests compare against).
- `compile`: `torch.compile` in its default mode (`reduce-overhead` skipped its graphs for the
  mutated inputs of this update and stalled, DESIGN.md §4). Where Dynamo can trace
  `torch.autograd.grad` (`trace_autograd_ops`, PyTorch ≥ 2.13) the whole update is one graph
  (`fullgraph=True`): forward, the three backward passes, Adam and the EMA fused by Inductor.
  Older versions split it at each autograd call into a few graphs.
- `graph` (CUDA default): compiled, run `warmup` times on a side stream (real updates: they compile
  the kernels and settle the allocator), then captured once with `torch.cuda.graph` and replayed
  for every later update. The warm-up and the replays perform the same sequence of updates as an
  eager run: capturing executes nothing.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch

Mode = Literal["eager", "compile", "graph"]
# On the CPU compiling pays 20-45 % per update (benchmarks/throughput.py) but takes 20-70 s on two
# cores: it is worth it from about this many updates on.
CPU_COMPILE_MIN_UPDATES = 20_000
TRACES_AUTOGRAD = hasattr(torch._dynamo.config, "trace_autograd_ops")


MODES = ("eager", "compile", "graph")


def choose_mode(fast: bool | str | None, device: torch.device, updates: int | None = None) -> Mode:
    """`fast=None` (auto): a CUDA graph on CUDA; on the CPU, compiled when the run is long enough
    (`updates` ≥ CPU_COMPILE_MIN_UPDATES) for compiling to pay, else eager. `True`: the fastest
    path the device has (graph on CUDA, compile on CPU); `False`: eager; a mode's name: that mode."""
    if isinstance(fast, str):
        if fast not in MODES:
            from isep.errors import ConfigError

            raise ConfigError(f"model.fast must be true, false, or one of {', '.join(MODES)}; got {fast!r}")
        if fast == "graph" and device.type != "cuda":
            from isep.errors import ConfigError

            raise ConfigError(f"model.fast graph captures the update as a CUDA graph and needs a GPU (this fit runs on "
                              f"{device.type}): use compile or eager")
        return fast  # type: ignore[return-value]
    if fast is False:
        return "eager"
    if device.type == "cuda":
        return "graph"
    if fast or (updates is not None and updates >= CPU_COMPILE_MIN_UPDATES):
        return "compile"
    return "eager"


def compile_update(fn: Callable[[], None]) -> Callable[[], None]:
    """`torch.compile(fn)`, as one graph where Dynamo can trace autograd calls."""
    if not TRACES_AUTOGRAD:
        return torch.compile(fn)
    compiled = torch.compile(fn, fullgraph=True)

    def call() -> None:
        with torch._dynamo.config.patch(trace_autograd_ops=True):
            compiled()

    return call


class AcceleratedStep:
    """Calls `fn` (no arguments, no outputs, device-only) in the chosen `mode`.

    Capture is lazy (first call), so it happens after a checkpoint has been restored into the
    tensors the graph will read and write. Anything that replaces those tensors (loading a
    checkpoint or optimizer state again) must call `reset()`. Building a compiled step clears
    Dynamo's cache: a step built earlier in the same process compiles again if called again.
    """

    def __init__(self, fn: Callable[[], None], mode: Mode, warmup: int = 3) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        self.mode, self.warmup = mode, warmup
        if mode != "eager":
            # Dynamo keys its cache on the code of `train_step` and guards on the module instance:
            # every new module would recompile into the same entry until `recompile_limit` (8)
            # fails the fullgraph compile. One compiled update per process at a time: start clean
            # (Inductor's on-disk cache still makes the new compile quick).
            torch.compiler.reset()
        self._compiled = compile_update(fn) if mode != "eager" else fn
        self._graph: torch.cuda.CUDAGraph | None = None
        self._calls = 0

    def reset(self) -> None:
        """Forget a captured graph (its tensors were replaced); the next call captures again."""
        self._graph, self._calls = None, 0

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def __call__(self) -> None:
        if self.mode != "graph":
            self._compiled()
            return
        if self._graph is None:
            if self._calls < self.warmup:
                self._warm_up()
                return
            self._capture()
        self._graph.replay()

    def _warm_up(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._compiled()
        torch.cuda.current_stream().wait_stream(stream)
        self._calls += 1

    def _capture(self) -> None:
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._compiled()
        self._graph = graph


# aten ops that read a device value on the host (or size an output by the data): each one forces a
# synchronisation on a GPU and breaks a CUDA graph capture.
HOST_SYNC_OPS = frozenset(
    {
        "aten::_local_scalar_dense",  # .item(), float(t), int(t), bool(t), a Python `if` on a tensor
        "aten::is_nonzero",
        "aten::nonzero",  # boolean-mask indexing, torch.where(cond) with one argument
        "aten::masked_select",
        "aten::unique",
        "aten::_unique2",
        "aten::unique_consecutive",
        "aten::equal",
        "aten::repeat_interleave.Tensor",  # with a tensor of repeats and no output size
        "aten::_assert_async",
    }
)


class HostSyncCheck(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every op run inside it that reads tensor values back to the host (`HOST_SYNC_OPS`).

    The CPU counterpart of `torch.cuda.set_sync_debug_mode("error")`: on the CPU nothing syncs, but
    the same ops would, so `with HostSyncCheck() as check: step()` then `check.found` lists them.
    """

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        if name in HOST_SYNC_OPS or name.split(".")[0] in HOST_SYNC_OPS or _indexes_with_a_mask(name, args):
            self.found.append(name)
        return func(*args, **(kwargs or {}))


def _indexes_with_a_mask(name: str, args) -> bool:
    """Indexing with a boolean mask sizes its output by the mask's values (a hidden `nonzero`)."""
    if not name.startswith(("aten::index", "aten::_index_put")) or len(args) < 2:
        return False
    indices = args[1] if isinstance(args[1], (list, tuple)) else []
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in indices)
