"""`isep compare` against a real temporary sqlite MLflow store written with the schema the training
runs log (experiment per task; tags task/actor/lam/policy_mix/seed; eval metrics by update step)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from isep import compare as compare_mod
from isep.compare import compare_main

WALKER, HOPPER, TOY = "walker2d-medium-v2", "hopper-medium-v2", "toy/sparse-optimum"
STEPS = (100, 200, 300)
NS = "eval/normalized_score"
ER = "eval/expected_reward"
# final normalized score of seeds 0 and 1 per (task, actor, λ)
FINALS = {
    (WALKER, "gaussian", 0.0): (70.0, 74.0),
    (WALKER, "gaussian", 0.5): (80.0, 84.0),
    (WALKER, "flow", 0.0): (78.0, 80.0),
    (WALKER, "flow", 0.3): (85.0, 87.4),
    (HOPPER, "gaussian", 0.0): (50.0, 56.0),
    (HOPPER, "gaussian", 0.5): (60.0, 52.0),
    (HOPPER, "flow", 0.0): (66.0, 64.0),
    (HOPPER, "flow", 0.3): (62.0, 66.0),
}
LABELS = {("gaussian", 0.0): "IQL (λ=0)", ("gaussian", 0.5): "ISEP λ=0.5",
          ("flow", 0.0): "CFGRL (λ=0)", ("flow", 0.3): "ISEP-FM λ=0.3"}
# walker ISEP-FM λ=0.3 seed 1 peaks at step 200 (so --final best differs from last)
PEAKED = (WALKER, "flow", 0.3, 1)
# walker ISEP-FM λ=0.3 seed 0 logs its steps out of order: the last *step* is the final value
SHUFFLED = (WALKER, "flow", 0.3, 0)
FAILED_VALUES = [5.0, 8.0, 10.0]  # walker ISEP-FM λ=0.3 seed 2, status FAILED
FAILURE = "DivergenceError: |V| = 3.1e+07 exceeds 100x the return bound at step 300 (λ=0.3)"
TOY_FINALS = {0.0: (0.5,), 0.3: (0.8, 0.7)}  # expected reward; toy runs have no normalized score


def history(task, actor, lam, seed):
    final = FINALS[(task, actor, lam)][seed]
    if (task, actor, lam, seed) == PEAKED:
        return [40.0, 95.0, final]
    return [final * 0.5, final * 0.8, final]


def log_run(client, exp_id, task, actor, lam, seed, key, values, status="FINISHED", order=None, steps=STEPS):
    from mlflow.entities import Metric, Param

    tags = {"task": task, "actor": actor, "lam": str(lam), "policy_mix": "stochastic", "seed": str(seed),
            "git_commit": "abc123"}
    run = client.create_run(exp_id, tags=tags, run_name=f"{actor}-lam{lam}-s{seed}")
    rid = run.info.run_id
    idx = order or range(len(values))
    metrics = [Metric(key, float(values[i]), 1_000 + t, steps[i]) for t, i in enumerate(idx)]
    metrics += [Metric("train/loss_v", 0.1 * (i + 1), 1_000 + i, s) for i, s in enumerate(steps)]
    params = [Param("model.lam", str(lam)), Param("model.actor", actor), Param("data.dataset", task)]
    client.log_batch(rid, metrics=metrics, params=params)
    client.set_terminated(rid, status)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return build_store(tmp_path_factory.mktemp("mlstore"))


def build_store(root: Path) -> dict:
    """A sqlite store: 2 D4RL tasks × {gaussian λ 0, 0.5; flow λ 0, 0.3} × 2 seeds, one FAILED run, one
    RUNNING run, a toy bandit task logging eval/expected_reward, and an experiment with a foreign run."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    ids = {}
    for task in (WALKER, HOPPER, TOY, "scratch"):
        ids[task] = client.create_experiment(task, artifact_location=str(root / "artifacts" / task.replace("/", "_")))
    for (task, actor, lam), finals in FINALS.items():
        for seed in range(len(finals)):
            order = [2, 0, 1] if (task, actor, lam, seed) == SHUFFLED else None
            log_run(client, ids[task], task, actor, lam, seed, NS, history(task, actor, lam, seed), order=order)
    failed = log_run(client, ids[WALKER], WALKER, "flow", 0.3, 2, NS, FAILED_VALUES, status="FAILED")
    client.set_tag(failed, "failure_reason", FAILURE)
    running = log_run(client, ids[HOPPER], HOPPER, "gaussian", 0.5, 2, NS, [30.0], status="RUNNING", steps=(100,))
    for lam, finals in TOY_FINALS.items():
        for seed, f in enumerate(finals):
            log_run(client, ids[TOY], TOY, "flow", lam, seed, ER, [f / 4, f / 2, f])
    foreign = client.create_run(ids["scratch"], run_name="notebook")
    client.log_metric(foreign.info.run_id, NS, 1.0, step=1)
    client.set_terminated(foreign.info.run_id, "FINISHED")
    files = sorted(p.relative_to(root) for p in root.rglob("*"))
    return {"uri": uri, "root": root, "failed": failed, "running": running, "snapshot": snapshot(uri), "files": files}


@pytest.fixture(scope="module")
def default_run(store, tmp_path_factory):
    """`isep compare` over every experiment with the default options, in a fresh interpreter (so that
    what it imports can be checked): (stdout, --out, heavy modules it imported)."""
    out_dir = tmp_path_factory.mktemp("compare") / "out"
    code = (
        "import sys\n"
        "from isep.compare import compare_main\n"
        f"rc = compare_main(['--tracking_uri', {store['uri']!r}, '--out', {str(out_dir)!r}])\n"
        "heavy = [m for m in ('lightning', 'pytorch_lightning', 'isep.module', 'isep.cli') if m in sys.modules]\n"
        "print('HEAVY:', ','.join(heavy), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    heavy = proc.stderr.rsplit("HEAVY:", 1)[1].strip()
    return proc.stdout, out_dir, heavy


def run(argv, capsys):
    rc = compare_main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def compare_ok(store, tmp_path, capsys, *extra):
    out_dir = tmp_path / "out"
    rc, out, err = run(["--tracking_uri", store["uri"], "--out", str(out_dir), *extra], capsys)
    assert rc == 0, err
    return out, out_dir


def parse_table(text: str, metric: str):
    """{task: {column label: cell}} of the Markdown table printed for `metric`."""
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


CELL = re.compile(r"^(-?\d+\.\d+) ± (\d+\.\d+) \(n=(\d+)\)$")


def parse_cell(cell: str):
    m = CELL.match(cell)
    assert m, f"cell {cell!r} is not 'mean ± std (n=k)'"
    return float(m.group(1)), float(m.group(2)), int(m.group(3))


def test_table_cells_are_mean_and_std_over_seeds(default_run):
    out, _, _ = default_run
    header, rows = parse_table(out, NS)
    assert header == ["IQL (λ=0)", "ISEP λ=0.5", "CFGRL (λ=0)", "ISEP-FM λ=0.3"]
    assert set(rows) == {WALKER, HOPPER, "mean over tasks"}
    for (task, actor, lam), finals in FINALS.items():
        mean, std, n = parse_cell(rows[task][LABELS[(actor, lam)]])
        assert n == 2
        assert mean == pytest.approx(np.mean(finals), abs=0.051)
        assert std == pytest.approx(np.std(finals, ddof=1), abs=0.051)
    for (actor, lam), label in LABELS.items():
        expected = np.mean([np.mean(FINALS[(t, actor, lam)]) for t in (WALKER, HOPPER)])
        assert float(rows["mean over tasks"][label]) == pytest.approx(expected, abs=0.051)


def test_best_lambda_line_names_variant_and_margins(default_run):
    out, _, _ = default_run
    w = {k[1:]: np.mean(v) for k, v in FINALS.items() if k[0] == WALKER}
    w_std = np.std(FINALS[(WALKER, "flow", 0.3)], ddof=1)
    walker = (f"{WALKER}: best ISEP-FM λ=0.3 = {w[('flow', 0.3)]:.1f} ± {w_std:.1f} (n=2), "
              f"+{w[('flow', 0.3)] - w[('flow', 0.0)]:.1f} over CFGRL (λ=0), "
              f"+{w[('flow', 0.3)] - w[('gaussian', 0.5)]:.1f} over ISEP λ=0.5")
    assert walker in out.splitlines()
    # on hopper λ = 0 wins, by less than the seed std of the runner-up
    h = {k[1:]: np.mean(v) for k, v in FINALS.items() if k[0] == HOPPER}
    h_std = np.std(FINALS[(HOPPER, "flow", 0.0)], ddof=1)
    hopper = (f"{HOPPER}: best CFGRL (λ=0) = {h[('flow', 0.0)]:.1f} ± {h_std:.1f} (n=2), "
              f"+{h[('flow', 0.0)] - h[('flow', 0.3)]:.1f} over ISEP-FM λ=0.3 (within seed std)")
    assert hopper in out.splitlines()


def test_csv_long_format(default_run):
    _, out_dir, _ = default_run
    with open(out_dir / "table.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:8] == ["task", "actor", "lam", "policy_mix", "mean", "std", "n", "seeds"]
    ns_rows = {(r["task"], r["actor"], float(r["lam"])): r for r in rows if r["metric"] == NS}
    assert set(ns_rows) == set(FINALS)
    for key, finals in FINALS.items():
        r = ns_rows[key]
        assert r["policy_mix"] == "stochastic" and r["n"] == "2" and r["seeds"] == "0;1"
        assert float(r["mean"]) == pytest.approx(np.mean(finals))
        assert float(r["std"]) == pytest.approx(np.std(finals, ddof=1))
    toy = {float(r["lam"]): r for r in rows if r["task"] == TOY}
    assert toy[0.0]["metric"] == ER and toy[0.0]["n"] == "1" and toy[0.0]["std"] == ""
    assert float(toy[0.3]["mean"]) == pytest.approx(np.mean(TOY_FINALS[0.3]))
    assert (out_dir / "table.md").read_text().count("| Task |") == 2


def test_pngs_are_written_and_valid(default_run):
    from matplotlib.image import imread

    _, out_dir, _ = default_run
    for name in ("learning_curves.png", "score_vs_lambda.png"):
        path = out_dir / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = imread(path)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
        assert img[..., :3].std() > 0.01  # something is drawn


def test_failed_and_running_runs_listed_apart(store, default_run, tmp_path, capsys):
    out, _, _ = default_run
    assert "not counted: 1 FAILED run (flow-lam0.3-s2" in out
    assert store["failed"][:8] in out and FAILURE in out
    assert "not counted: 1 RUNNING run (gaussian-lam0.5-s2" in out
    _, rows = parse_table(out, NS)
    assert parse_cell(rows[WALKER]["ISEP-FM λ=0.3"])[2] == 2
    assert "skipped 1 run: notebook" in out  # a run without isep tags

    out, _ = compare_ok(store, tmp_path, capsys, "--include_unfinished")
    _, rows = parse_table(out, NS)
    finals = [*FINALS[(WALKER, "flow", 0.3)], FAILED_VALUES[-1]]
    mean, _, n = parse_cell(rows[WALKER]["ISEP-FM λ=0.3"])
    assert n == 3 and mean == pytest.approx(np.mean(finals), abs=0.051)
    assert parse_cell(rows[HOPPER]["ISEP λ=0.5"])[2] == 3
    assert "not counted" not in out and "1 FAILED, 1 RUNNING" in out
    assert f"{HOPPER} ISEP λ=0.5: its runs end at different steps (100–300)" in out  # the RUNNING run


def test_final_best_uses_the_peak_and_last_uses_the_last_step(store, tmp_path, capsys):
    _, out_dir = compare_ok(store, tmp_path, capsys, "--final", "best", "--experiment", WALKER)
    with open(out_dir / "table.csv", newline="") as fh:
        rows = {(r["actor"], float(r["lam"])): r for r in csv.DictReader(fh)}
    assert float(rows[("flow", 0.3)]["mean"]) == pytest.approx(np.mean([FINALS[(WALKER, "flow", 0.3)][0], 95.0]))
    assert float(rows[("gaussian", 0.0)]["mean"]) == pytest.approx(np.mean(FINALS[(WALKER, "gaussian", 0.0)]))
    # seed 0 of that group logged step 300 first: `last` is still its step-300 value
    run_ = compare_mod.sorted_history
    from mlflow.entities import Metric

    steps, values = run_([Metric("m", 3.0, 1, 300), Metric("m", 1.0, 2, 100), Metric("m", 2.0, 3, 200)])
    assert steps == [100, 200, 300] and values == [1.0, 2.0, 3.0]


def test_toy_task_falls_back_to_expected_reward_and_says_so(store, tmp_path, capsys):
    out, _ = compare_ok(store, tmp_path, capsys, "--experiment", TOY)
    assert f"metric: {ER} for {TOY} (those runs have no {NS})" in out
    header, rows = parse_table(out, ER)
    assert header == ["CFGRL (λ=0)", "ISEP-FM λ=0.3"]
    assert rows[TOY]["CFGRL (λ=0)"] == "0.500 (n=1)"
    mean, std, n = parse_cell(rows[TOY]["ISEP-FM λ=0.3"])
    assert (mean, n) == (pytest.approx(0.75), 2) and std == pytest.approx(np.std([0.8, 0.7], ddof=1), abs=5e-4)
    assert f"{TOY} [{ER}]: best ISEP-FM λ=0.3 = 0.750 ± 0.071 (n=2), +0.250 over CFGRL (λ=0)" in out


def test_experiment_selection_and_filter(store, tmp_path, capsys):
    out, out_dir = compare_ok(store, tmp_path, capsys, "--experiment", f"{WALKER},{HOPPER}",
                              "--filter", "tags.actor = 'flow'")
    header, rows = parse_table(out, NS)
    assert header == ["CFGRL (λ=0)", "ISEP-FM λ=0.3"]
    assert set(rows) == {WALKER, HOPPER, "mean over tasks"}
    assert ER not in out and "FAILED" in out  # the failed flow run is still reported
    out, _ = compare_ok(store, tmp_path, capsys, "--experiment", HOPPER, "--experiment", TOY)
    assert WALKER not in out and HOPPER in out and TOY in out


def test_unknown_experiment_lists_known_ones(store, tmp_path, capsys):
    out_dir = tmp_path / "new" / "out"
    rc, out, err = run(["--tracking_uri", store["uri"], "--experiment", "walker2d-mediun-v2", "--out", str(out_dir)],
                       capsys)
    assert rc == 2 and out == ""
    assert err.startswith("isep: error: unknown experiment 'walker2d-mediun-v2'")
    for name in (WALKER, HOPPER, TOY):
        assert name in err
    assert "Traceback" not in err
    assert not (tmp_path / "new").exists()  # the output directory it made for the run is gone again


def test_filter_matching_nothing(store, tmp_path, capsys):
    f = "tags.actor = 'diffusion'"
    rc, _, err = run(["--tracking_uri", store["uri"], "--experiment", WALKER, "--filter", f,
                      "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert err.startswith("isep: error: the filter") and f in err and WALKER in err
    rc, _, err = run(["--tracking_uri", store["uri"], "--filter", "tags.actor = ", "--out", str(tmp_path / "o")],
                     capsys)
    assert rc == 2 and err.startswith("isep: error: MLflow") and "Traceback" not in err


def test_missing_metric(store, tmp_path, capsys):
    rc, _, err = run(["--tracking_uri", store["uri"], "--experiment", HOPPER, "--metric", "eval/return_mean",
                      "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert "8 FINISHED run(s) have no metric 'eval/return_mean'" in err and "has eval/normalized_score" in err


def test_unwritable_out_fails_before_reading_the_store(store, tmp_path, capsys, monkeypatch):
    def boom(uri):
        raise AssertionError("the store was opened before --out was checked")

    monkeypatch.setattr(compare_mod, "open_client", boom)
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out in (a_file / "sub", a_file):
        rc, _, err = run(["--tracking_uri", store["uri"], "--out", str(out)], capsys)
        assert rc == 2 and err.startswith("isep: error:") and str(out) in err, err
        assert "Traceback" not in err
    assert a_file.read_text() == "x"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_out_dir(store, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        rc, _, err = run(["--tracking_uri", store["uri"], "--out", str(ro)], capsys)
    finally:
        ro.chmod(0o755)
    assert rc == 2 and "cannot write to the output directory" in err


def test_missing_store_is_not_created(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    rc, _, err = run(["--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "no MLflow store at" in err and str(tmp_path / "mlflow.db") in err
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


def test_stores_mlflow_would_write_to_are_refused(store, tmp_path, capsys):
    """Opening a sqlite file through MLflow creates missing tables and a missing default experiment:
    compare refuses such files instead, and leaves them as they were."""
    empty = tmp_path / "empty.db"
    empty.touch()
    rc, _, err = run(["--tracking_uri", f"sqlite:///{empty}", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "tables are missing" in err and "mlflow db upgrade" in err
    assert empty.stat().st_size == 0

    copy = tmp_path / "copy.db"
    shutil.copyfile(store["root"] / "mlflow.db", copy)
    con = sqlite3.connect(copy)
    con.execute("DELETE FROM experiments WHERE experiment_id = 0")
    con.commit()
    con.close()
    data = copy.read_bytes()
    rc, _, err = run(["--tracking_uri", f"sqlite:///{copy}", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "no default experiment" in err
    assert copy.read_bytes() == data

    garbage = tmp_path / "garbage.db"
    garbage.write_text("not sqlite")
    rc, _, err = run(["--tracking_uri", f"sqlite:///{garbage}", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "not a readable MLflow sqlite store" in err and "Traceback" not in err
    assert garbage.read_text() == "not sqlite"


def snapshot(uri):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exps = sorted((e.experiment_id, e.name, e.lifecycle_stage) for e in client.search_experiments(view_type=ViewType.ALL))
    runs = {}
    for r in client.search_runs([e[0] for e in exps], run_view_type=ViewType.ALL, max_results=1000):
        hist = {k: sorted((m.step, m.timestamp, m.value) for m in client.get_metric_history(r.info.run_id, k))
                for k in r.data.metrics}
        runs[r.info.run_id] = (r.info.status, r.info.lifecycle_stage, r.info.end_time, dict(r.data.tags),
                               dict(r.data.params), hist)
    return exps, runs


def test_store_is_left_unchanged(store, tmp_path, capsys):
    """Against the snapshot taken when the store was written: covers every compare of this module."""
    before = store["snapshot"]
    assert len(before[1]) == 16 + 2 + 3 + 1 and len(before[0]) == 5
    compare_ok(store, tmp_path, capsys, "--include_unfinished", "--final", "best")
    run(["--tracking_uri", store["uri"], "--experiment", "nope", "--out", str(tmp_path / "o")], capsys)
    assert snapshot(store["uri"]) == before
    assert sorted(p.relative_to(store["root"]) for p in store["root"].rglob("*")) == store["files"]


def test_does_not_import_lightning(default_run):
    """`import lightning` costs ≈ 4.5 s: a whole compare (MLflow, tables, figures) must not pull it in."""
    assert default_run[2] == ""
