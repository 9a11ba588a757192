"""`make gpu-check`: everything isep does on a CUDA GPU, checked in one command within 8 minutes.

On a machine with a CUDA GPU it finds (or makes) a Python with a CUDA build of torch and isep,
then runs, each within what is left of the budget:

1. `pytest -m gpu`: the captured update against the compiled one (bit for bit) and eager, a stack
   against its runs alone, the bf16 and TF32 paths, evaluation on the device, `isep fit` on the
   checked graph path, and a two-trial `isep sweep` sharing the GPU (`--gpus_per_run 0.5`);
2. `isep bench --device cuda --quick --only updates`: updates/s of both actors, eager and fast.

It writes `gpu-check.json` and `gpu-check.md` (and the tests' JUnit XML, the bench's tables) into
`gpu-check/` and exits 0 only when every step passed. Without a GPU it says so in one line and
exits 0 having run nothing. No arguments.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "gpu-check"
VENV = ROOT / ".venv-gpu"
BUDGET_S = 8 * 60
CHECK_TORCH = "import torch, isep, sys; sys.exit(0 if torch.cuda.is_available() else 3)"


@dataclass
class Step:
    name: str
    command: list[str]
    rc: int | None = None
    seconds: float = 0.0
    tail: str = ""
    details: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.rc == 0


def gpu_name() -> str | None:
    """The first GPU `nvidia-smi -L` lists, or None (no driver, no GPU)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = [line for line in listed.stdout.splitlines() if line.startswith("GPU ")]
    return lines[0] if listed.returncode == 0 and lines else None


def cuda_python(deadline: float) -> tuple[str | None, Step]:
    """A Python whose torch sees the GPU and imports isep: this one, `.venv-gpu`, or a new
    `.venv-gpu` (PyPI's default torch wheel for Linux is a CUDA build; the machine's own packages
    are kept with --system-site-packages)."""
    step = Step("python with CUDA torch and isep", [])
    began = time.perf_counter()
    for python in (sys.executable, str(VENV / "bin" / "python")):
        if Path(python).exists() and subprocess.run([python, "-c", CHECK_TORCH], capture_output=True).returncode == 0:
            step.rc, step.tail, step.seconds = 0, f"using {python}", time.perf_counter() - began
            return python, step
    commands = [[sys.executable, "-m", "venv", "--system-site-packages", str(VENV)],
                [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "torch>=2.4"],
                [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]"]]
    for command in commands:
        step.command = command
        run(step, deadline)
        if not step.passed:
            return None, step
    python = str(VENV / "bin" / "python")
    probe = subprocess.run([python, "-c", CHECK_TORCH], capture_output=True, text=True)
    step.rc, step.seconds = probe.returncode, time.perf_counter() - began
    step.tail = f"installed into {VENV}" if probe.returncode == 0 else f"torch there does not see the GPU: {probe.stderr[-500:]}"
    return (python if step.passed else None), step


def run(step: Step, deadline: float) -> Step:
    """Run `step.command` within the time left; its exit code (124 when out of time) and output's end."""
    began = time.perf_counter()
    left = deadline - time.monotonic()
    if left <= 0:
        step.rc, step.tail = 124, "not started: the 8-minute budget was spent"
        return step
    try:
        done = subprocess.run(step.command, cwd=ROOT, capture_output=True, text=True, timeout=left,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        step.rc, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        step.rc = 124
        output = (err.stdout or b"").decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        output += f"\nout of time after {left:.0f} s"
    except OSError as err:
        step.rc, output = 127, f"{type(err).__name__}: {err}"
    step.seconds += time.perf_counter() - began
    step.tail = output[-3000:]
    return step


def checks(python: str, out: Path) -> list[Step]:
    """The checks, in order: the GPU tests, then the bench."""
    isep = [python, "-c", "import sys; from isep.cli import main; sys.exit(main(sys.argv[1:]))"]
    return [
        Step("pytest -m gpu", [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                               f"--junitxml={out / 'gpu-tests.xml'}", "tests"]),
        Step("isep bench --device cuda --quick", [*isep, "bench", "--device", "cuda", "--quick", "--only", "updates",
                                                  "--out", str(out / "bench")]),
    ]


def junit_counts(path: Path) -> dict:
    """Tests, failures, errors and skips of a JUnit XML report (empty when it is missing)."""
    if not path.is_file():
        return {}
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


def summarize(steps: list[Step], out: Path, meta: dict) -> bool:
    """Write gpu-check.json and gpu-check.md; True when every step passed."""
    ok = all(s.passed for s in steps)
    out.mkdir(parents=True, exist_ok=True)
    record = {"passed": ok, **meta, "steps": [{"name": s.name, "command": " ".join(s.command), "rc": s.rc,
                                               "passed": s.passed, "seconds": round(s.seconds, 1), **s.details,
                                               "output_tail": s.tail} for s in steps]}
    (out / "gpu-check.json").write_text(json.dumps(record, indent=2))
    lines = [f"# isep gpu-check: {'passed' if ok else 'FAILED'}", "", f"{meta.get('gpu', '?')}, {meta.get('date', '')}", "",
             "| step | result | seconds | details |", "|---|---|---|---|"]
    for s in steps:
        details = ", ".join(f"{k} {v}" for k, v in s.details.items()) or "–"
        lines.append(f"| {s.name} | {'passed' if s.passed else f'failed (exit {s.rc})'} | {s.seconds:.0f} | {details} |")
    for s in steps:
        if not s.passed:
            lines += ["", f"## {s.name}: the end of its output", "", "```", s.tail[-2000:], "```"]
    bench = out / "bench" / "throughput.md"
    if bench.is_file():
        lines += ["", "## isep bench --device cuda --quick", "", bench.read_text()]
    (out / "gpu-check.md").write_text("\n".join(lines) + "\n")
    return ok


def main() -> int:
    gpu = gpu_name()
    if gpu is None:
        print("isep gpu-check: no CUDA GPU on this machine (nvidia-smi finds none): nothing to check")
        return 0
    deadline = time.monotonic() + BUDGET_S
    meta = {"gpu": gpu, "date": time.strftime("%Y-%m-%d %H:%M"), "host": platform.node(), "budget_s": BUDGET_S}
    python, setup = cuda_python(deadline)
    steps = [setup]
    if python is not None:
        for step in checks(python, OUT):
            steps.append(run(step, deadline))
            print(f"isep gpu-check: {step.name}: {'passed' if step.passed else f'FAILED (exit {step.rc})'} "
                  f"in {step.seconds:.0f} s", flush=True)
        steps[1].details = junit_counts(OUT / "gpu-tests.xml")
    ok = summarize(steps, OUT, meta)
    print(f"isep gpu-check: {'all passed' if ok else 'FAILED'}; {OUT / 'gpu-check.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
