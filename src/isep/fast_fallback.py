"""The fast path that cannot sink a run: graph → compile → eager, each path checked once against eager.

`isep.fast` builds the update compiled, or compiled and captured as one CUDA graph. Either can
fail on hardware or software isep has not met: Inductor or Triton missing or too old, a GPU
architecture they do not support, a capture that meets a host sync, an allocation or the end of
the memory, or a replayed step that computes something else than the eager one. `ResilientStep`
builds the chosen path lazily (at the first update, after a checkpoint is restored) and:

- checks it once (`check=True`): from the run's state it runs `CHECK_UPDATES` updates on the fast
  path and as many eagerly, compares every tensor an update writes, and puts the state back, so
  the run itself is not changed; the worst relative difference must stay within `tolerance`;
- when building, running or checking the path fails and the path was isep's choice (auto), says so
  in one line and goes one step down the chain (graph → compile → eager);
- when the user chose the path (`--model.fast`), stops with `FastPathError`: one line, no fallback.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from isep.errors import ConfigError
from isep.fast import AcceleratedStep, Mode

NEXT: dict[str, Mode] = {"graph": "compile", "compile": "eager"}
CHECK_UPDATES = {"compile": 3, "graph": 5}  # graph: its 3 warm-up updates, the capture, a replay
# Worst relative difference (‖fast − eager‖ / ‖eager − start‖, per tensor) a path may show after
# CHECK_UPDATES updates. fp32: Inductor's fused kernels round differently from eager; the largest
# measured on the CPU was 2.9e-4, in the target critics, whose EMA moves them least (both actors,
# λ 0 and 0.3, compile). TF32 and bf16 products round to 10 and 8 mantissa bits. A wrong update
# (a lost gradient, a stale tensor) differs by ~1.
TOLERANCE = {"fp32": 1e-2, "low": 1e-1}


class FastPathError(ConfigError):
    """The path the user chose failed: isep stops (exit 2) instead of training another way."""


def state_of(agent) -> dict[str, torch.Tensor]:
    """Copies of everything an update writes: weights, targets, Adam moments, the counter, metric sums."""
    state = {k: v.detach().clone() for k, v in agent.state_dict().items() if torch.is_tensor(v)}
    state["metric_sum"] = agent.metric_sum.detach().clone()
    return state


@torch.no_grad()
def restore(agent, state: dict[str, torch.Tensor]) -> None:
    """Put `state` back in place (the tensors a compiled step or a captured graph holds stay the same)."""
    live = {k: v for k, v in agent.state_dict().items() if torch.is_tensor(v)}
    live["metric_sum"] = agent.metric_sum
    for name, tensor in live.items():
        tensor.copy_(state[name])


def worst_difference(start: dict, eager: dict, fast: dict) -> tuple[float, str]:
    """The largest ‖fast − eager‖ / ‖eager − start‖ over the tensors the updates changed, and its name."""
    worst, where = 0.0, ""
    for name, reference in eager.items():
        if not reference.is_floating_point():
            if not torch.equal(fast[name], reference):
                return float("inf"), name
            continue
        moved = (reference.double() - start[name].double()).norm()
        off = (fast[name].double() - reference.double()).norm()
        if moved == 0 and off == 0:
            continue
        relative = float(off / moved) if moved > 0 else float("inf")
        if not relative <= worst:  # (NaN counts as the worst)
            worst, where = relative, name
    return worst, where


def check_against_eager(agent, fast: Callable[[], None], updates: int) -> tuple[float, str, float]:
    """`updates` updates on `fast` and as many eagerly from the agent's state, which is then put back
    (also when `fast` raises): (worst relative difference, the tensor where it is, seconds the check
    added: all but the first fast call, which compiles, and which the run would have made anyway)."""
    start = state_of(agent)
    try:
        fast()  # builds the path (compiles; a graph: the first warm-up update)
        began = time.perf_counter()
        for _ in range(updates - 1):
            fast()
        fast_state = state_of(agent)
        restore(agent, start)
        for _ in range(updates):
            agent.train_step()
        eager_state = state_of(agent)
    finally:
        restore(agent, start)
    worst, where = worst_difference(start, eager_state, fast_state)
    return worst, where, time.perf_counter() - began


class ResilientStep:
    """The agent's update on `mode`'s path, falling back (auto) or stopping (`explicit`) on failure.

    `failures` ({path: reason}) is the agent's, so a step rebuilt later (a frozen run, new hooks)
    does not try a failed path again; `report(line)` says each fallback; `check_seconds` is what
    the equivalence checks cost.
    """

    def __init__(self, agent, mode: Mode, explicit: bool = False, check: bool = True, low_precision: bool = False,
                 report: Callable[[str], None] = print) -> None:
        self.agent, self.requested, self.explicit, self.check = agent, mode, explicit, check
        self.report, self.tolerance = report, TOLERANCE["low" if low_precision else "fp32"]
        self.mode: Mode = mode
        while self.mode in agent.fast_failures and self.mode != "eager":
            self.mode = NEXT[self.mode]
        self._step = None
        self._settled = False
        self.check_seconds = 0.0

    def __call__(self) -> None:
        if self._settled:
            self._step()
            return
        while True:  # until the path is built (a graph: captured), stepping down the chain on failure
            if self.mode == "eager":
                self._step, self._settled = self.agent.train_step, True
                self._step()
                return
            try:
                if self._step is None:
                    self._step = self._build()
                self._step()
            except Exception as err:  # noqa: BLE001 - any failure of an untried path: report, then step down
                self._step = None
                self._fail(err)
                continue
            self._settled = self.mode != "graph" or self._step.captured
            return

    def _build(self) -> AcceleratedStep:
        """The path's step, checked against the eager update (`check`)."""
        step = AcceleratedStep(self.agent.train_step, self.mode)
        if self.check:
            worst, where, seconds = check_against_eager(self.agent, step, CHECK_UPDATES[self.mode])
            self.check_seconds += seconds
            if not worst <= self.tolerance:
                raise FastPathMismatch(f"after {CHECK_UPDATES[self.mode]} updates it differs from the eager update by "
                                       f"{worst:.2g} (relative, in {where}; tolerance {self.tolerance:g})")
        return step

    def _fail(self, err: Exception) -> None:
        what = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        reason = what if isinstance(err, FastPathMismatch) else f"{type(err).__name__}: {what}"
        name = {"graph": "the update compiled and captured as a CUDA graph", "compile": "the compiled update"}[self.mode]
        if self.explicit:
            raise FastPathError(f"{name} failed ({reason}), and --model.fast chose it: choose another path "
                                f"(--model.fast {NEXT[self.mode]}) or leave --model.fast unset to fall back") from err
        self.agent.fast_failures[self.mode] = reason
        self.report(f"isep: {name} failed ({reason}); continuing with the {NEXT[self.mode]} update. "
                    "Choose a path with --model.fast eager|compile|graph")
        self.mode = NEXT[self.mode]


class FastPathMismatch(RuntimeError):
    """The fast path computed something other than the eager update."""
