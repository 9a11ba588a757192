"""`isep sweep --address` against a Ray head started apart, as a cluster user types it:

    ray start --head --port PORT --num-cpus 2 ...
    isep sweep --config configs/toy/tiny_cluster.yaml --lam 0,0.3 --address 127.0.0.1:PORT

The head is a real `ray start --head --block` in its own session on a loopback port; the test ends
every process of that session afterwards, passed or failed. The head asks for a token (as every head
started where ~/.ray/auth_token exists does), which the sweep sends without being told: the head is
on this machine."""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CONFIGS
from tests.helpers import ISEP, isep_here, run_isep

RAY = Path(sys.executable).with_name("ray")  # the CLI installed beside this Python
SPEC = CONFIGS / "toy" / "tiny_cluster.yaml"
NAME = "sweep-tiny_cluster"  # the sweep's default name: its MLflow experiment


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_pids(sid: int) -> list[int]:
    """The live (not zombie) processes of session `sid`."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # (state, ppid, pgrp, session, ...)
            pids.append(int(stat.parent.name))
    return pids


def end_session(head: subprocess.Popen) -> None:
    """SIGKILL the head's `ray start` and everything it started (its session: GCS, raylet, agents,
    workers), and wait until none is left. No drain: SIGTERM makes a head drain for up to 30 s."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pids = session_pids(head.pid)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    head.wait(timeout=10)


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Ray's address and auth mode, one torch thread, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


@dataclass
class Head:
    address: str  # 127.0.0.1:PORT
    token: str  # the head's auth token (RAY_AUTH_TOKEN)
    log: Path


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head with 2 CPUs on a free loopback port, started as a user starts one, ended after the test."""
    # Ray's unix sockets live under --temp-dir/session_<date>_<pid>/sockets/: the path must stay short
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp" if Path("/tmp").is_dir() else None))
    port, token, log = free_port(), secrets.token_hex(32), tmp_path / "head.log"
    command = [str(RAY), "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
               "--node-ip-address", "127.0.0.1", "--ray-client-server-port", str(free_port()),
               "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp)]
    with open(log, "w") as out:
        head = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=clean_env(RAY_AUTH_TOKEN=token))
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, f"`ray start --head` ended ({head.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no Ray head within 2 minutes:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)
        yield Head(f"127.0.0.1:{port}", token, log)
    finally:
        end_session(head)
        shutil.rmtree(temp, ignore_errors=True)


CLUSTER_RECORDS = """
import json, ray
from ray._private import state
ray.init(address="{address}", logging_level="ERROR", log_to_driver=False)
print(json.dumps({{"nodes": ray.nodes(), "jobs": state.jobs(), "actors": list(state.actors().values())}}, default=str))
ray.shutdown()
"""


def cluster_records(head: Head) -> dict:
    """What the head's GCS holds: its nodes, the jobs (drivers) that joined it and their actors."""
    done = subprocess.run([sys.executable, "-c", CLUSTER_RECORDS.format(address=head.address)], capture_output=True,
                          text=True, timeout=120, env=clean_env(RAY_AUTH_TOKEN=head.token, RAY_AUTH_MODE="token"))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_sweep_runs_on_a_ray_head_started_apart(ray_head, tmp_path, capfd):
    # the sweep as a user types it (no RAY_AUTH_MODE: the token goes to a head on this machine by itself)
    sweep = subprocess.Popen([str(ISEP), "sweep", "--config", str(SPEC), "--lam", "0,0.3", "--address", ray_head.address],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=clean_env(RAY_AUTH_TOKEN=ray_head.token))
    try:
        out, err = sweep.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        sweep.kill()  # (its trials are the head's: they end with it)
        raise
    assert sweep.returncode == 0, err[-3000:]
    assert "2 trials, 2 to run" in out and "; 0 failed;" in out
    assert "Connecting to existing Ray cluster at address: " in err

    # the trials ran on that head: its GCS holds the sweep's driver (by pid) and one trial actor per
    # trial, on its node. A sweep that started a Ray of its own would have left no record there.
    records = cluster_records(ray_head)
    (node,) = records["nodes"]
    (job,) = [j for j in records["jobs"] if j["DriverPid"] == sweep.pid]
    assert "isep sweep" in job["Entrypoint"] and job["IsDead"]
    actors = [a for a in records["actors"] if a["JobID"] == job["JobID"]]
    assert len(actors) == 2 and all(a["ActorClassName"] == "ImplicitFunc" for a in actors)  # Tune's function trials
    assert {a["Address"]["NodeID"] for a in actors} == {node["NodeID"]}
    printed = {int(pid) for pid in re.findall(r"\(run_trial pid=(\d+)\)", err)}  # the trials' output, forwarded
    assert printed and printed <= {a["Pid"] for a in actors}

    # their runs are in the MLflow store, where `isep compare` finds them: one row per λ
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(NAME).experiment_id], "tags.`isep.trial` != ''")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    compare = isep_here(capfd, "compare", "--experiment", NAME, "--out", str(tmp_path / "compare"), cwd=tmp_path)
    assert compare.returncode == 0, compare.stderr[-3000:]
    assert "2 runs counted in 1 experiment (sweep-tiny_cluster)" in compare.stdout
    with open(tmp_path / "compare" / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["run_id"], float(r["lam"]), r["status"]) for r in rows) == sorted(
        (r.info.run_id, float(r.data.tags["lam"]), "FINISHED") for r in runs)
    assert {float(r["lam"]) for r in rows} == {0.0, 0.3} and all(r["task"] == "toy/sparse-optimum" for r in rows)


def test_an_unreachable_address_fails_at_once_writing_nothing(tmp_path):
    port = free_port()  # (closed again: nothing listens there)
    started = time.monotonic()
    done = run_isep("sweep", "--config", str(SPEC), "--lam", "0,0.3", "--address", f"127.0.0.1:{port}", cwd=tmp_path,
                    env={"OMP_NUM_THREADS": "1"}, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 2
    assert done.stderr.startswith(f"isep: error: cannot reach a Ray cluster at 127.0.0.1:{port}")
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""
    assert elapsed < 10, f"{elapsed:.1f} s"
    assert not list(tmp_path.iterdir())  # no MLflow store, no run folder, no outputs
