"""The fast path's fallback chain (`isep.fast_fallback`), made to fail on purpose on the CPU: a
compile that raises, a capture that raises, a compiled step that computes something else. Auto mode
steps down graph → compile → eager with one line and records the path in MLflow; a path the user
chose stops the fit in one line (exit 2); the check puts the run's state back."""

from __future__ import annotations

import mlflow
import pytest
import torch

import isep.fast
from isep.cli import main
from isep.fast_fallback import ResilientStep, check_against_eager, state_of
from tests.conftest import CONFIGS, TINY
from tests.helpers import ready_agent

TOY = ["fit", "--config", str(CONFIGS / "toy" / "sparse_isep_fm.yaml"), *TINY, "--data.toy_size", "500",
       "--trainer.max_epochs", "1", "--evaluation.every", "0"]


def broken_compile(fn):
    def call():
        raise RuntimeError("Inductor: no working C++ compiler found\nsecond line of the library's message")
    return call


def wrong_compile(agent_param):
    """A 'compiled' step that runs the update, then moves one weight: a wrong result, no exception."""
    def compile_update(fn):
        def call():
            fn()
            with torch.no_grad():
                agent_param().add_(1e-2)
        return call
    return compile_update


def record(tmp_path):
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return run.data.tags


@pytest.fixture
def auto_compiles(monkeypatch):
    """Auto mode compiles on the CPU from the first update (as it does for runs of 20,000 updates)."""
    monkeypatch.setattr(isep.fast, "CPU_COMPILE_MIN_UPDATES", 1)


def test_a_failing_compile_falls_back_to_eager_says_so_once_and_is_recorded(tmp_path, capfd, monkeypatch, auto_compiles):
    monkeypatch.setattr(isep.fast, "compile_update", broken_compile)
    assert main([*TOY, "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if "failed (" in line]
    assert len(lines) == 1, err
    assert "the compiled update failed (RuntimeError: Inductor: no working C++ compiler found)" in lines[0]
    assert "continuing with the eager update" in lines[0] and "--model.fast eager|compile|graph" in lines[0]
    tags = record(tmp_path)
    assert tags["update_path"] == "eager" and "compile: RuntimeError: Inductor" in tags["update_path_failures"]


def test_a_compiled_step_that_computes_something_else_is_caught_by_the_check(tmp_path, capfd, monkeypatch, auto_compiles):
    import isep.module

    holder = {}
    original = isep.module.ISEPModule.setup

    def setup(self, stage):
        holder["agent"] = self.agent
        original(self, stage)

    monkeypatch.setattr(isep.module.ISEPModule, "setup", setup)
    monkeypatch.setattr(isep.fast, "compile_update", wrong_compile(lambda: holder["agent"].value.net.layers[0].weight))
    assert main([*TOY, "--trainer.default_root_dir", str(tmp_path / "runs")]) == 0
    err = capfd.readouterr().err
    assert "the compiled update failed (after 3 updates it differs from the eager update by" in err
    assert "in value.net.layers.0.weight" in err
    assert record(tmp_path)["update_path"] == "eager"


def test_a_failing_capture_falls_back_to_compile(monkeypatch):
    """graph → compile: the capture raises (as a host sync or an allocation inside it does on a GPU)."""
    monkeypatch.setattr(isep.fast, "compile_update", lambda fn: fn)  # (no Inductor needed for the chain)
    monkeypatch.setattr(isep.fast.AcceleratedStep, "_warm_up", lambda self: (self._compiled(), setattr(self, "_calls", self._calls + 1)))

    def capture(self):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(isep.fast.AcceleratedStep, "_capture", capture)
    agent, lines = ready_agent("flow", 0.3), []
    step = agent.step_function("graph", fallback=True, check=True, report=lines.append)
    for _ in range(6):
        step()
    assert step.mode == "compile" and int(agent.updates) == 6
    assert len(lines) == 1 and "CUDA graph failed (RuntimeError: CUDA error: operation not permitted" in lines[0]
    assert "continuing with the compile update" in lines[0]
    # the failed path is not tried again when the step is rebuilt (a frozen run, new hooks)
    agent.reset_step()
    assert agent.step_function("graph", fallback=True, check=True, report=lines.append).mode == "compile"


def test_the_path_the_user_chose_is_honoured_and_its_failure_ends_the_fit_in_one_line(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(isep.fast, "compile_update", broken_compile)
    code = main([*TOY, "--model.fast", "compile", "--trainer.default_root_dir", str(tmp_path / "runs")])
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = [x for x in err.splitlines() if x.startswith("isep: error")]
    assert len(line) == 1 and "the compiled update failed (RuntimeError: Inductor" in line[0]
    assert "--model.fast chose it" in line[0] and "continuing" not in err


def test_the_check_leaves_the_run_as_it_was_and_an_equal_path_passes():
    agent = ready_agent("gaussian", 0.3)
    agent.train_step()
    before = state_of(agent)
    worst, where, seconds = check_against_eager(agent, agent.train_step, 3)  # eager against itself
    assert worst == 0.0 and seconds >= 0
    after = state_of(agent)
    assert all(torch.equal(after[k], before[k]) for k in before)
    # a failure inside the check puts the state back too
    calls = []

    def fails_late():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        agent.train_step()

    with pytest.raises(RuntimeError):
        check_against_eager(agent, fails_late, 3)
    assert all(torch.equal(state_of(agent)[k], before[k]) for k in before)


def test_graph_on_a_cpu_and_unknown_paths_are_config_errors():
    from isep.errors import ConfigError
    from isep.fast import choose_mode

    with pytest.raises(ConfigError, match="needs a GPU"):
        choose_mode("graph", torch.device("cpu"))
    with pytest.raises(ConfigError, match="model.fast must be"):
        choose_mode("fastest", torch.device("cpu"))
    assert choose_mode("compile", torch.device("cpu"), 10) == "compile"
    assert ResilientStep(ready_agent("gaussian", 0.0), "eager").mode == "eager"
