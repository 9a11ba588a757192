"""`isep compare` on a store written by a real `isep fit` (the toy bandit, tiny): 2 λ × 3 seeds
as one stacked fit, each run its own MLflow run, read back into the report."""

from __future__ import annotations

import csv
import re

import pytest

from isep.results.cli import compare_main
from tests.conftest import CONFIGS, TINY
from isep.cli import main
from tests.results_store import checksums

TOY = "toy/sparse-optimum"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    uri = f"sqlite:///{root}/mlflow.db"
    assert main(["fit", "--config", str(CONFIGS / "toy" / "sparse_gaussian.yaml"), *TINY, "--data.toy_size", "500",
                 "--trainer.max_epochs", "2", "--evaluation.every", "1", "--stack.lam", "0,0.3", "--stack.seed", "0,1,2",
                 "--trainer.default_root_dir", str(root / "runs"), "--mlflow.tracking_uri", uri]) == 0
    return root, uri


def test_a_report_from_real_fit_runs(fitted, tmp_path, capsys):
    import mlflow

    root, uri = fitted
    before = checksums(root)
    assert compare_main(["--tracking_uri", uri, "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert checksums(root) == before  # the store and the run folders are as they were
    assert f"metric: eval/expected_reward for {TOY} (those runs have no eval/normalized_score)" in out
    row = next(line for line in out.splitlines() if line.startswith(f"| {TOY} |"))
    assert row.count("(n=3)") == 2 and "†" not in row
    assert re.search(rf"P\(ISEP λ=0.3 > IQL \(λ=0\)\) on {re.escape(TOY)} = \d\.\d\d \[\d\.\d\d, \d\.\d\d\] \(n = 3 vs 3\)", out)
    assert any(line.startswith(f"{TOY} [eval/expected_reward]: ") for line in out.splitlines())
    with open(tmp_path / "o" / "table.csv", newline="") as fh:
        cells = {r["variant"]: r for r in csv.DictReader(fh)}
    assert set(cells) == {"IQL (λ=0)", "ISEP λ=0.3"} and all(c["seeds"] == "0;1;2" for c in cells.values())
    with open(tmp_path / "o" / "runs.csv", newline="") as fh:
        runs = list(csv.DictReader(fh))
    assert len(runs) == 6 and all(r["left_out"] == "" and r["evaluations"] == "2" and r["last_step"] == "20" for r in runs)
    client = mlflow.MlflowClient(uri)
    for r in runs:  # each run's score is its last evaluation as MLflow holds it
        history = sorted(client.get_metric_history(r["run_id"], "eval/expected_reward"), key=lambda m: m.step)
        assert float(r["score"]) == pytest.approx(history[-1].value)


def test_the_help_examples_use_fields_a_run_has(fitted, capsys):
    """`isep compare --help` shows filter examples: each tag and param they name is one that
    `isep fit` logs."""
    import mlflow

    _, uri = fitted
    with pytest.raises(SystemExit) as done:
        compare_main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    params = re.findall(r"params\.`([^`]+)`", text)
    tags = re.findall(r"tags\.(\w+)", text)
    assert params and tags
    client = mlflow.MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name(TOY).experiment_id], max_results=1)[0]
    assert set(params) <= set(run.data.params) and set(tags) <= set(run.data.tags), (params, tags)
