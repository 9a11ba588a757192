"""`isep compare` on a synthetic MLflow store written through MLflow's public client
(`tests/results_store.py`): the tables with bootstrap CIs, the verdicts, the probability of
improvement, the score definitions, the runs left out or flagged, the CSVs and figures."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import bootstrap

from isep.results.cli import compare_main
from tests.results_store import (ER, FAILED_VALUES, FAILURE, FINALS, HOPPER, LABELS, NS, OLDER_DUPLICATE, PEAKED, TOY,
                           TOY_FINALS, WALKER, history, parse_cell, parse_table)


@pytest.fixture(scope="module")
def store(results_store):
    return results_store


@pytest.fixture(scope="module")
def default_run(store, tmp_path_factory):
    """`isep compare` over every experiment with the default options, in a fresh interpreter (so
    that what it imports can be checked): (stdout, --out, heavy modules it imported)."""
    out_dir = tmp_path_factory.mktemp("compare") / "out"
    code = (
        "import sys\n"
        "from isep.results.cli import compare_main\n"
        f"rc = compare_main(['--tracking_uri', {store['uri']!r}, '--out', {str(out_dir)!r}])\n"
        "heavy = [m for m in ('lightning', 'pytorch_lightning', 'isep.module', 'isep.cli', 'torch') if m in sys.modules]\n"
        "print('HEAVY:', ','.join(heavy), file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, out_dir, proc.stderr.rsplit("HEAVY:", 1)[1].strip()


def compare_ok(store, tmp_path, capsys, *extra):
    out_dir = tmp_path / "out"
    rc = compare_main(["--tracking_uri", store["uri"], "--out", str(out_dir), *extra])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out, out_dir


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def scipy_ci(values) -> tuple[float, float]:
    """The interval the report promises: scipy's percentile bootstrap, 2000 resamples, seed 0."""
    ci = bootstrap((np.asarray(values),), np.mean, n_resamples=2000, method="percentile",
                   rng=np.random.default_rng(0)).confidence_interval
    return ci.low, ci.high


def test_cells_are_means_with_their_bootstrap_cis(default_run):
    out, _, _ = default_run
    header, rows = parse_table(out, NS)
    assert header == ["IQL (λ=0)", "ISEP λ=0.3", "ISEP λ=0.5", "CFGRL (λ=0)", "ISEP-FM λ=0.3"]
    assert set(rows) == {WALKER, HOPPER, "IQM over tasks", "mean over tasks"}
    assert rows[HOPPER]["ISEP λ=0.3"] == "—" and rows["mean over tasks"]["ISEP λ=0.3"] == "—"  # walker only
    for (task, actor, lam), finals in FINALS.items():
        mean, low, high, n, flags = parse_cell(rows[task][LABELS[(actor, lam)]])
        assert n == 3 and flags == ""  # the older duplicate of walker IQL seed 0 is not a 4th seed
        assert mean == pytest.approx(np.mean(finals), abs=0.051)
        assert (low, high) == pytest.approx(scipy_ci(finals), abs=0.051)
    for (actor, lam), label in LABELS.items():
        if (HOPPER, actor, lam) not in FINALS:
            continue
        expected = np.mean([np.mean(FINALS[(t, actor, lam)]) for t in (WALKER, HOPPER)])
        assert float(rows["mean over tasks"][label].split(" [")[0]) == pytest.approx(expected, abs=0.051)
    assert "score of a run: final — each run's last evaluation (the paper's)" in out
    assert "nan ±" not in out and "[nan" not in out and "| nan" not in out  # the NaN run is left out


def test_a_winner_only_where_the_ci_of_the_difference_excludes_zero(default_run):
    out, _, _ = default_run
    lines = out.splitlines()
    walker = next(line for line in lines if line.startswith(f"{WALKER}: best ISEP λ=0.5 = 82.0 ["))
    assert "+10.0 [" in walker and "over IQL (λ=0), P(improvement) = 1.00 [1.00, 1.00] (n = 3 vs 3)" in walker
    tie = re.search(r"; not told apart from ISEP λ=0.3 \(\+1\.0 \[(-?\d+\.\d), (-?\d+\.\d)\]\)$", walker)
    assert tie and float(tie.group(1)) < 0 < float(tie.group(2)), walker  # the best λ beside the next one
    assert any(line.startswith(f"{WALKER}: best ISEP-FM λ=0.3 = 86.1 [") for line in lines)
    # hopper: λ = 0.5 has the higher mean, λ = 0.3 the lower one; neither is told apart at n = 3
    assert any(line.startswith(f"{HOPPER}: ISEP λ=0.5 has the highest mean (55.7 [") and
               "cannot tell it apart from IQL (λ=0) at n = 3 vs 3: the difference +2.7 [" in line for line in lines)
    assert any(line.startswith(f"{HOPPER}: CFGRL (λ=0) has the highest mean (64.3 [") and
               "cannot tell it apart from ISEP-FM λ=0.3 (-1.0 [" in line for line in lines)
    assert not any(line.startswith(f"{HOPPER}: best") for line in lines)


def test_probability_of_improvement_per_task_and_over_tasks(default_run):
    out, out_dir, _ = default_run
    assert f"P(ISEP λ=0.5 > IQL (λ=0)) on {WALKER} = 1.00 [1.00, 1.00] (n = 3 vs 3)" in out
    x, y = FINALS[(HOPPER, "gaussian", 0.5)], FINALS[(HOPPER, "gaussian", 0.0)]
    by_hand = np.mean([(a > b) + 0.5 * (a == b) for a in x for b in y])  # 6 of 9 pairs
    assert f"P(ISEP λ=0.5 > IQL (λ=0)) on {HOPPER} = {by_hand:.2f} [" in out
    over = (1.0 + by_hand) / 2
    assert f"P(ISEP λ=0.5 > IQL (λ=0)) over 2 tasks = {over:.2f} [" in out
    rows = {(r["task"], r["variant"]): r for r in read_csv(out_dir / "comparisons.csv")}
    assert float(rows[(HOPPER, "ISEP λ=0.5")]["poi"]) == pytest.approx(by_hand)
    assert float(rows[(WALKER, "ISEP λ=0.5")]["diff"]) == pytest.approx(10.0)


def test_runs_left_out_are_said_and_never_counted(store, default_run):
    out, out_dir, _ = default_run
    assert f"not counted: 1 FAILED run (flow-lam0.3-s3 [{store['failed'][:8]}]" in out and FAILURE in out
    assert "not counted: 1 RUNNING run (gaussian-lam0.5-s3" in out
    assert "skipped 1 run: notebook" in out and "not an isep training run" in out
    assert f"left out 1 run without any evaluation of {NS}: flow-lam0.3-s5 [{store['no_evals'][:8]}]" in out
    assert f"left out 1 run whose score is not a number (NaN or infinite evaluations): flow-lam0.0-s6 [{store['nan_run'][:8]}]" in out
    assert f"seed 0 counted once in {WALKER}: gaussian-lam0.0-s0 [" in out
    runs = {r["run_id"]: r for r in read_csv(out_dir / "runs.csv")}
    assert store["parent"] not in runs  # the sweep's parent run is bookkeeping, not a run
    left = {r["left_out"].split(":")[0] for r in runs.values()}
    assert left == {"", "unfinished", "not isep", "no evaluations", "not finite", "duplicate seed"}
    older = [r for r in runs.values() if r["left_out"].startswith("duplicate seed")]
    assert len(older) == 1 and float(older[0]["score"]) == OLDER_DUPLICATE


def test_include_unfinished_counts_them_and_flags_uneven_lengths(store, tmp_path, capsys):
    out, out_dir = compare_ok(store, tmp_path, capsys, "--include_unfinished")
    _, rows = parse_table(out, NS)
    mean, _, _, n, flags = parse_cell(rows[WALKER]["ISEP-FM λ=0.3"])
    assert n == 4 and mean == pytest.approx(np.mean([*FINALS[(WALKER, "flow", 0.3)], FAILED_VALUES[-1]]), abs=0.051)
    assert parse_cell(rows[HOPPER]["ISEP λ=0.5"])[3:] == (4, "‡")  # the RUNNING run stopped at step 100
    assert parse_cell(rows[HOPPER]["IQL (λ=0)"])[3:] == (3, "‡")  # compared with runs of another length
    assert parse_cell(rows[HOPPER]["CFGRL (λ=0)"])[4] == ""  # the flow actor's runs all end at 300
    assert "not counted" not in out and "1 FAILED, 1 RUNNING" in out
    assert (f"‡ {HOPPER}: runs of different lengths, scored after different training: they end at IQL (λ=0) at 300; "
            "ISEP λ=0.5 at 100–300 updates") in out
    assert f"{HOPPER}: no verdict: its runs end at different update counts (100 to 300)" in out


def test_score_definitions(store, default_run, tmp_path, capsys):
    walker = {k: v for k, v in FINALS.items() if k[0] == WALKER}
    for score, of in (("last:2", lambda h: np.mean(h[-2:])), ("auc", np.mean), ("final", lambda h: h[-1])):
        if score == "final":  # the default
            out, out_dir = default_run[:2]
        else:
            out, out_dir = compare_ok(store, tmp_path, capsys, "--experiment", WALKER, "--score", score)
        assert f"score of a run: {score} —" in out
        cells = {(r["actor"], float(r["lam"])): r for r in read_csv(out_dir / "table.csv") if r["task"] == WALKER}
        for (task, actor, lam), finals in walker.items():
            expected = np.mean([of(history(task, actor, lam, s)) for s in range(len(finals))])
            assert float(cells[(actor, lam)]["mean"]) == pytest.approx(expected), (score, actor, lam)
    # the peaked seed (40, 95, 87.4) makes last:2 differ from final: (95 + 87.4) / 2
    assert history(*PEAKED)[-2:] == [95.0, 87.4]


def test_toy_task_falls_back_to_expected_reward_and_flags_few_seeds(store, tmp_path, capsys):
    out, _ = compare_ok(store, tmp_path, capsys, "--experiment", HOPPER, "--experiment", TOY)
    assert f"| {WALKER}" not in out and f"| {HOPPER}" in out and f"| {TOY}" in out
    assert f"metric: {ER} for {TOY} (those runs have no {NS}); {NS} elsewhere" in out
    header, rows = parse_table(out, ER)
    assert header == ["CFGRL (λ=0)", "ISEP-FM λ=0.3"]
    assert rows[TOY]["CFGRL (λ=0)"] == "0.500 (n=1) †"
    mean, low, high, n, flags = parse_cell(rows[TOY]["ISEP-FM λ=0.3"])
    assert (mean, low, high, n, flags) == (pytest.approx(np.mean(TOY_FINALS[0.3])), 0.7, 0.8, 2, "†")
    assert f"{TOY} [{ER}]: ISEP-FM λ=0.3 has the highest mean" in out and "no CI with a single run on a side" in out
    assert "provisional: fewer than 3 seeds" in out


def test_experiment_selection_and_filter(store, tmp_path, capsys):
    out, _ = compare_ok(store, tmp_path, capsys, "--experiment", f"{WALKER},{HOPPER}", "--filter", "tags.actor = 'flow'")
    header, rows = parse_table(out, NS)
    assert header == ["CFGRL (λ=0)", "ISEP-FM λ=0.3"]
    assert set(rows) == {WALKER, HOPPER, "IQM over tasks", "mean over tasks"}
    assert ER not in out and "FAILED" in out and "filter: tags.actor = 'flow'" in out


def test_csvs_report_and_figures(default_run):
    from matplotlib.image import imread

    _, out_dir, _ = default_run
    table = read_csv(out_dir / "table.csv")
    assert list(table[0])[:9] == ["task", "actor", "lam", "policy_mix", "settings", "metric", "variant", "n", "seeds"]
    ns = {(r["task"], r["actor"], float(r["lam"])): r for r in table if r["metric"] == NS}
    assert set(ns) == set(FINALS)
    for key, finals in FINALS.items():
        r = ns[key]
        assert r["n"] == "3" and r["seeds"] == "0;1;2" and r["settings"] == ""
        assert float(r["mean"]) == pytest.approx(np.mean(finals)) and float(r["std"]) == pytest.approx(np.std(finals, ddof=1))
    evaluations = read_csv(out_dir / "evaluations.csv")
    runs = read_csv(out_dir / "runs.csv")
    counted = [r for r in runs if r["left_out"] == ""]
    assert len(counted) == len(FINALS) * 3 + 3 and all(r["evaluations"] == "3" for r in counted)
    assert sum(e["run_id"] in {r["run_id"] for r in counted} for e in evaluations) == 3 * len(counted)
    assert {r["model.expectile"] for r in counted} == {"0.7"}  # the runs' settings are columns
    report = (out_dir / "report.md").read_text()
    for name in ("score_vs_lambda.png", "learning_curves.png", "performance_profile.png", "probability_of_improvement.png"):
        assert f"]({name})" in report
        img = imread(out_dir / name)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400 and img[..., :3].std() > 0.01
    assert "## Best variant per task" in report and "## Probability of improvement over λ = 0" in report
    assert "## Settings" in report and "model.expectile=0.7" in report


def test_does_not_import_lightning(default_run):
    """`import lightning` costs ≈ 4.5 s: a whole compare (MLflow, statistics, figures) must not pull it in."""
    assert default_run[2] == ""
