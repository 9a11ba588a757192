"""`make gpu-check` (scripts/gpu_check.py) exercised on the CPU, its GPU part skipped: without a GPU it
says so in one line and exits 0; its steps run within a deadline, a failure or a timeout fails the
check, and the JSON and Markdown summaries say which; the GPU tests it runs still collect."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # (its dataclass looks its module up there)
    spec.loader.exec_module(module)
    return module


def test_without_a_gpu_it_says_so_in_one_line_and_runs_nothing(tmp_path, gpu_check):
    if gpu_check.gpu_name() is not None:
        pytest.skip("this machine has a GPU: `make gpu-check` runs the real check")
    out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.count("\n") == 1 and "no CUDA GPU" in out.stdout
    assert not (SCRIPT.parents[1] / "gpu-check").exists() or (SCRIPT.parents[1] / "gpu-check").stat().st_mtime < time.time() - 60


def test_steps_pass_fail_and_time_out_and_the_summaries_say_which(tmp_path, gpu_check):
    Step = gpu_check.Step
    deadline = time.monotonic() + 30
    passing = gpu_check.run(Step("passes", [sys.executable, "-c", "print('ok')"]), deadline)
    failing = gpu_check.run(Step("fails", [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]), deadline)
    slow = gpu_check.run(Step("too slow", [sys.executable, "-c", "import time; time.sleep(30)"]), time.monotonic() + 1)
    late = gpu_check.run(Step("never started", [sys.executable, "-c", "pass"]), time.monotonic() - 1)
    assert (passing.rc, failing.rc, slow.rc, late.rc) == (0, 3, 124, 124)
    assert "boom" in failing.tail and "out of time" in slow.tail and "budget was spent" in late.tail
    meta = {"gpu": "GPU 0: Test GPU", "date": "today"}
    assert gpu_check.summarize([passing], tmp_path / "ok", meta)
    assert not gpu_check.summarize([passing, failing, slow], tmp_path / "bad", meta)
    record = json.loads((tmp_path / "bad" / "gpu-check.json").read_text())
    assert [s["passed"] for s in record["steps"]] == [True, False, False] and record["passed"] is False
    md = (tmp_path / "bad" / "gpu-check.md").read_text()
    assert "FAILED" in md and "| fails | failed (exit 3) |" in md and "boom" in md


def test_the_gpu_tests_it_runs_collect_here(tmp_path, gpu_check):
    (tests, bench) = gpu_check.checks(sys.executable, tmp_path)
    assert tests.command[:5] == [sys.executable, "-m", "pytest", "-m", "gpu"]
    assert "bench" in bench.command and "--device" in bench.command and "cuda" in bench.command
    collected = subprocess.run([*tests.command, "--collect-only"], cwd=SCRIPT.parents[1], capture_output=True,
                               text=True, timeout=300)
    assert collected.returncode == 0, collected.stdout[-2000:]
    assert "test_gpu.py::test_a_two_trial_sweep_shares_the_gpu" in collected.stdout
    assert "test_fast_path.py::test_cuda_graph_replays_the_eager_update" in collected.stdout
    (tmp_path / "gpu-tests.xml").write_text('<testsuites><testsuite tests="9" failures="0" errors="0" skipped="2"/></testsuites>')
    assert gpu_check.junit_counts(tmp_path / "gpu-tests.xml") == {"tests": 9, "failures": 0, "errors": 0, "skipped": 2}
