"""A synthetic MLflow store written through MLflow's public client with the schema `isep fit`
logs (experiment per task; tags task/actor/lam/policy_mix/seed; eval metrics by update step),
holding the cases `isep compare` must handle: clear and unclear λ effects, a FAILED and a RUNNING
run, a seed logged twice, a run without evaluations, a run whose scores are NaN, a toy bandit
with one and two seeds, a sweep's parent run and a run that is not isep's."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

WALKER, HOPPER, TOY = "walker2d-medium-v2", "hopper-medium-v2", "toy/sparse-optimum"
STEPS = (100, 200, 300)
NS, ER = "eval/normalized_score", "eval/expected_reward"
# final normalized score of seeds 0, 1, 2 per (task, actor, λ)
FINALS = {
    (WALKER, "gaussian", 0.0): (70.0, 72.0, 74.0),
    (WALKER, "gaussian", 0.3): (79.0, 83.0, 81.0),  # above λ = 0, not told apart from λ = 0.5
    (WALKER, "gaussian", 0.5): (80.0, 82.0, 84.0),  # clearly above λ = 0
    (WALKER, "flow", 0.0): (78.0, 80.0, 79.0),
    (WALKER, "flow", 0.3): (85.0, 87.4, 86.0),  # clearly above λ = 0
    (HOPPER, "gaussian", 0.0): (50.0, 56.0, 53.0),
    (HOPPER, "gaussian", 0.5): (60.0, 52.0, 55.0),  # higher mean, overlapping seeds
    (HOPPER, "flow", 0.0): (66.0, 62.0, 65.0),
    (HOPPER, "flow", 0.3): (62.0, 67.0, 61.0),  # lower mean, overlapping seeds
}
LABELS = {("gaussian", 0.0): "IQL (λ=0)", ("gaussian", 0.3): "ISEP λ=0.3", ("gaussian", 0.5): "ISEP λ=0.5",
          ("flow", 0.0): "CFGRL (λ=0)", ("flow", 0.3): "ISEP-FM λ=0.3"}
PEAKED = (WALKER, "flow", 0.3, 1)  # its evaluations peak at step 200
SHUFFLED = (WALKER, "flow", 0.3, 0)  # logs its steps out of order: the last *step* is the final value
FAILED_VALUES = [5.0, 8.0, 10.0]  # walker ISEP-FM λ=0.3 seed 3, status FAILED
FAILURE = "DivergenceError: |V| = 3.1e+07 exceeds 100x the return bound at step 300 (λ=0.3)"
TOY_FINALS = {0.0: (0.5,), 0.3: (0.8, 0.7)}  # expected reward; toy runs have no normalized score
OLDER_DUPLICATE = 10.0  # an older run of walker IQL seed 0: left out, the newer (70.0) counts


def history(task, actor, lam, seed) -> list[float]:
    final = FINALS[(task, actor, lam)][seed]
    return [40.0, 95.0, final] if (task, actor, lam, seed) == PEAKED else [final * 0.5, final * 0.8, final]


class Clock:
    """Increasing start times, so that "the newest run of a seed" is well defined."""

    def __init__(self):
        self.t = 1_700_000_000_000

    def __call__(self) -> int:
        self.t += 1000
        return self.t


def log_run(client, clock, exp_id, task, actor, lam, seed, key, values, status="FINISHED", order=None, steps=STEPS,
            tags=None):
    from mlflow.entities import Metric, Param

    all_tags = {"task": task, "actor": actor, "lam": str(lam), "policy_mix": "stochastic", "seed": str(seed),
                "git_commit": "abc123", **(tags or {})}
    run = client.create_run(exp_id, start_time=clock(), tags=all_tags, run_name=f"{actor}-lam{lam}-s{seed}")
    rid = run.info.run_id
    idx = order or range(len(values))
    metrics = [Metric(key, float(values[i]), 1_000 + t, steps[i]) for t, i in enumerate(idx)] if key else []
    metrics += [Metric("train/loss_v", 0.1 * (i + 1), 1_000 + i, s) for i, s in enumerate(steps)]
    params = [Param("model.lam", str(lam)), Param("model.actor", actor), Param("data.dataset", task),
              Param("model.expectile", "0.7")]
    client.log_batch(rid, metrics=metrics, params=params)
    client.set_terminated(rid, status)
    return rid


def build_store(root: Path) -> dict:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root}/mlflow.db"
    client, clock = MlflowClient(tracking_uri=uri), Clock()
    ids = {t: client.create_experiment(t, artifact_location=str(root / "artifacts" / t.replace("/", "_")))
           for t in (WALKER, HOPPER, TOY, "scratch")}
    parent = client.create_run(ids[WALKER], start_time=clock(), run_name="sweep walker", tags={"isep.sweep": "walker"})
    client.set_terminated(parent.info.run_id, "FINISHED")
    log_run(client, clock, ids[WALKER], WALKER, "gaussian", 0.0, 0, NS, [5.0, 8.0, OLDER_DUPLICATE])
    for (task, actor, lam), finals in FINALS.items():
        for seed in range(len(finals)):
            order = [2, 0, 1] if (task, actor, lam, seed) == SHUFFLED else None
            nested = {"mlflow.parentRunId": parent.info.run_id} if task == WALKER else {}
            log_run(client, clock, ids[task], task, actor, lam, seed, NS, history(task, actor, lam, seed), order=order,
                    tags=nested)
    failed = log_run(client, clock, ids[WALKER], WALKER, "flow", 0.3, 3, NS, FAILED_VALUES, status="FAILED")
    client.set_tag(failed, "failure_reason", FAILURE)
    running = log_run(client, clock, ids[HOPPER], HOPPER, "gaussian", 0.5, 3, NS, [30.0], status="RUNNING", steps=(100,))
    no_evals = log_run(client, clock, ids[HOPPER], HOPPER, "flow", 0.3, 5, None, [])
    nan_run = log_run(client, clock, ids[HOPPER], HOPPER, "flow", 0.0, 6, NS, [math.nan] * 3)
    for lam, finals in TOY_FINALS.items():
        for seed, f in enumerate(finals):
            log_run(client, clock, ids[TOY], TOY, "flow", lam, seed, ER, [f / 4, f / 2, f])
    foreign = client.create_run(ids["scratch"], run_name="notebook")
    client.log_metric(foreign.info.run_id, NS, 1.0, step=1)
    client.set_terminated(foreign.info.run_id, "FINISHED")
    return {"uri": uri, "root": root, "db": root / "mlflow.db", "failed": failed, "running": running,
            "no_evals": no_evals, "nan_run": nan_run, "parent": parent.info.run_id, "checksums": checksums(root)}


def checksums(root: Path) -> dict[str, str]:
    """Every file under `root` and its SHA-1: to prove that nothing on disk changed."""
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def parse_table(text: str, metric: str):
    """(header, {task: {column label: cell}}) of the Markdown scores table printed for `metric`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"### {metric}"))
    header = [c.strip() for c in lines[start + 2].strip().strip("|").split("|")]
    assert header[0] == "Task" and set(lines[start + 3]) <= set("|-")
    rows = {}
    for line in lines[start + 4:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0]] = dict(zip(header[1:], cells[1:]))
    return header[1:], rows


CELL = re.compile(r"^(-?\d+\.\d+)(?: \[(-?\d+\.\d+), (-?\d+\.\d+)\])? \(n=(\d+)\)( [†‡]+)?$")


def parse_cell(cell: str):
    """(mean, low, high, n, flags) of 'mean [low, high] (n=k) flags'."""
    m = CELL.match(cell)
    assert m, f"cell {cell!r} is not 'mean [low, high] (n=k)'"
    low = float(m.group(2)) if m.group(2) else None
    high = float(m.group(3)) if m.group(3) else None
    return float(m.group(1)), low, high, int(m.group(4)), (m.group(5) or "").strip()
