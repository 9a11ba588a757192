"""Bad input to `isep compare`: one line `isep: error: ...` (exit 2) that says what to do, and
nothing on disk changed — the store's files have the checksums they had before, and no --out
folder is left behind."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from isep.results.cli import compare_main
from tests.results_store import HOPPER, TOY, WALKER, checksums


@pytest.fixture(scope="module")
def store(results_store):
    return results_store


def fails(argv, capsys) -> str:
    """Runs compare, expects exit 2 with one `isep: error:` line and no traceback; returns it."""
    rc = compare_main(argv)
    out, err = capsys.readouterr()
    assert rc == 2 and out == "", (rc, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("isep: error: "), err
    assert "Traceback" not in err
    return lines[0]


class Disk:
    """The test's folder; `mark()` takes its checksums after the test's own set-up."""

    def __init__(self, path: Path):
        self.path, self.before = path, {}

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def mark(self) -> None:
        self.before = checksums(self.path)


@pytest.fixture
def unchanged(store, tmp_path):
    """Asserts after the test that the store's files and the test's folder are as before."""
    disk = Disk(tmp_path)
    disk.mark()
    yield disk
    assert checksums(store["root"]) == store["checksums"]
    assert checksums(tmp_path) == disk.before


def test_unknown_experiment_lists_the_known_ones(store, unchanged, capsys):
    out = unchanged / "new" / "out"
    err = fails(["--tracking_uri", store["uri"], "--experiment", "walker2d-mediun-v2", "--out", str(out)], capsys)
    assert err.startswith("isep: error: unknown experiment 'walker2d-mediun-v2'; known experiments:")
    assert all(name in err for name in (WALKER, HOPPER, TOY))
    assert not (unchanged / "new").exists()  # the folders it made for --out are gone again


def test_empty_filter_result_and_a_bad_filter(store, unchanged, capsys):
    f = "tags.actor = 'diffusion'"
    err = fails(["--tracking_uri", store["uri"], "--experiment", WALKER, "--filter", f, "--out", str(unchanged / "o")],
                capsys)
    assert err.startswith("isep: error: the filter") and f in err and WALKER in err
    err = fails(["--tracking_uri", store["uri"], "--filter", "tags.actor = ", "--out", str(unchanged / "o")], capsys)
    assert err.startswith("isep: error: MLflow")
    assert not (unchanged / "o").exists()


def test_a_metric_no_run_has(store, unchanged, capsys):
    err = fails(["--tracking_uri", store["uri"], "--experiment", HOPPER, "--metric", "eval/return_mean",
                 "--out", str(unchanged / "o")], capsys)
    assert "no run has the metric 'eval/return_mean'" in err and HOPPER in err and "pass --metric" in err


def test_unwritable_out(store, unchanged, capsys):
    a_file = unchanged / "a_file"
    a_file.write_text("x")
    unchanged.mark()
    for out in (a_file / "sub", a_file):
        err = fails(["--tracking_uri", store["uri"], "--out", str(out)], capsys)
        assert str(out) in err and ("cannot write to the output directory" in err or "is not a directory" in err)
    assert a_file.read_text() == "x"


def test_missing_store_is_not_created(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    err = fails(["--out", str(tmp_path / "o")], capsys)
    assert "no MLflow store at" in err and str(tmp_path / "mlflow.db") in err and "--tracking_uri" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_files_that_are_no_mlflow_store_are_refused_and_left_as_they_were(tmp_path, capsys):
    empty = tmp_path / "empty.db"
    empty.touch()
    garbage = tmp_path / "garbage.db"
    garbage.write_text("not sqlite")
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE experiments (id INTEGER)")
    con.commit()
    con.close()
    before = checksums(tmp_path)
    for path, expected in ((empty, "tables are missing"), (garbage, "not a readable MLflow sqlite store"),
                           (other, "tables are missing: alembic_version, runs")):
        err = fails(["--tracking_uri", f"sqlite:///{path}", "--out", str(tmp_path / "o")], capsys)
        assert expected in err and str(path) in err
    assert checksums(tmp_path) == before


def test_a_store_mlflow_would_write_to_is_read_from_a_snapshot(store, tmp_path, capsys):
    """MLflow re-creates a missing default experiment when it opens a store: compare reads a
    snapshot, so the report comes out and the store's bytes stay as they were."""
    copy = tmp_path / "copy.db"
    shutil.copyfile(store["db"], copy)
    con = sqlite3.connect(copy)
    con.execute("DELETE FROM experiments WHERE experiment_id = 0")
    con.commit()
    con.close()
    data = copy.read_bytes()
    assert compare_main(["--tracking_uri", f"sqlite:///{copy}", "--experiment", WALKER, "--out", str(tmp_path / "o")]) == 0
    assert "ISEP λ=0.5" in capsys.readouterr().out
    assert copy.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.db", "o"]  # no journal, no mlruns


def test_bad_reference_files(store, unchanged, capsys):
    base = ["--tracking_uri", store["uri"], "--experiment", WALKER, "--out", str(unchanged / "o")]
    extra = unchanged / "extra.csv"
    extra.write_text("task,method,score,seeds\nwalker2d-medium-v2,IQL,78.3,5\n")
    err = fails([*base, "--reference", str(extra)], capsys)
    assert "unknown column(s) seeds" in err and "task, method, score" in err
    nan = unchanged / "nan.csv"
    nan.write_text("task,method,score\nwalker2d-medium-v2,IQL,high\n")
    unchanged.mark()
    assert "row 2 (after the header): score 'high' is not a number" in fails([*base, "--reference", str(nan)], capsys)
    missing = unchanged / "none.csv"
    assert "no such file; pass `paper`" in fails([*base, "--reference", str(missing)], capsys)
    assert not (unchanged / "o").exists()


def test_bad_options(store, unchanged, capsys):
    base = ["--tracking_uri", store["uri"], "--out", str(unchanged / "o")]
    for score in ("best", "last:0", "last:x", "mean"):
        assert f"--score {score!r}: use final" in fails([*base, "--score", score], capsys)
    err = fails([*base, "--final", "last"], capsys)
    assert "unrecognized arguments: --final last" in err and "--score final | last:K | auc" in err
    assert not (unchanged / "o").exists()
