"""The paper's Tables 1-2 shipped with the package, checked number by number against the paper's
text; task matching; the reference printed beside the measured cells."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from isep.results.cli import compare_main
from isep.results.reference import PAPER, load_reference, match_tasks, task_key
from tests.results_store import HOPPER, WALKER

PAPER_TEXT = Path(__file__).resolve().parents[2] / "shared" / "paper" / "ISEP.txt"
NUMBER = re.compile(r"(\d+\.\d)\s*(\d+\.\d)?")  # every number of the tables has one decimal: "79.13.5" = 79.1 ± 3.5


def paper_rows() -> dict[str, list[tuple[float, float | None]]]:
    """The two tables at the end of section 4.6, parsed from the paper's text: row label → cells."""
    rows = {}
    for line in PAPER_TEXT.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
        if len(cells) in (7, 10) and cells[0] != "Environment" and all(NUMBER.fullmatch(c) for c in cells[1:]):
            rows[cells[0]] = [(float(m.group(1)), float(m.group(2)) if m.group(2) else None)
                              for m in (NUMBER.fullmatch(c) for c in cells[1:])]
    return rows


@pytest.mark.skipif(not PAPER_TEXT.is_file(), reason="needs ../shared/paper/ISEP.txt")
def test_the_shipped_tables_are_the_papers_numbers():
    ref = load_reference(PAPER)
    rows = paper_rows()
    assert len(rows) == 17 and len(ref) == 10 * 9 + 7 * 6
    for label, cells in rows.items():
        mine = ref[ref["label"] == label]
        assert len(mine) == len(cells), label
        for (score, pm), (_, r) in zip(cells, mine.iterrows()):
            assert r["score"] == score and (r["pm"] == pm if pm is not None else r["pm"] != r["pm"]), (label, r["method"])
    # the extraction's fused cells, read by eye
    cell = ref.set_index(["task", "method"])
    assert tuple(cell.loc[("hopper-medium-v2", "ISEP"), ["score", "pm"]]) == (79.1, 3.5)
    assert tuple(cell.loc[("hopper-medium-replay-v2", "ISEP"), ["score", "pm"]]) == (102.7, 0.6)
    assert tuple(cell.loc[("hopper-medium-expert-v2", "ISEP"), ["score", "pm"]]) == (112.0, 0.2)
    assert tuple(cell.loc[("halfcheetah-medium-replay-v2", "ISEP-FM"), ["score", "pm"]]) == (54.6, 0.5)
    assert cell.loc[("kitchen-partial-v0", "IQL"), "score"] == 46.3 and cell.loc[("pen-cloned-v1", "DQL"), "score"] == 57.3
    assert list(dict.fromkeys(ref[ref["table"] == "Table 1"]["method"])) == [
        "BC", "CQL", "IQL", "DQL", "IDQL", "QGPO", "QIPO", "ISEP", "ISEP-FM"]


def test_tasks_match_by_name_or_environment_and_kind():
    assert task_key("local/halfcheetah/medium-replay-v0") == ("halfcheetah", "medium-replay")
    assert task_key("halfcheetah-medium-replay-v2") == ("halfcheetah", "medium-replay")
    assert task_key("toy/sparse-optimum") is None and task_key("scratch") is None
    ref = load_reference(PAPER)
    measured = ["local/halfcheetah/medium-replay-v0", "mujoco/hopper/medium-v0", "D4RL/pen/human-v2",
                "kitchen-mixed-v0", "walker2d-medium-expert-v2", "toy/danger-zone", "mujoco/ant/medium-v0"]
    assert match_tasks(measured, ref) == {
        "local/halfcheetah/medium-replay-v0": "halfcheetah-medium-replay-v2", "mujoco/hopper/medium-v0": "hopper-medium-v2",
        "D4RL/pen/human-v2": "pen-human-v1", "kitchen-mixed-v0": "kitchen-mixed-v0",
        "walker2d-medium-expert-v2": "walker2d-medium-expert-v2"}


@pytest.fixture(scope="module")
def store(results_store):
    return results_store


def test_the_paper_beside_the_measured_cells(store, tmp_path, capsys):
    assert compare_main(["--tracking_uri", store["uri"], "--out", str(tmp_path / "o"), "--reference", "paper"]) == 0
    out = capsys.readouterr().out
    rows = {line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert rows[WALKER].endswith("| 75.3 | 58.0 | 78.3 | 87.0 | 80.2 | 86.0 | 87.6 | 82.1 ± 0.4 | 90.4 ± 1.1 |")
    assert "| 79.1 ± 3.5 | 101.3 ± 2.1 |" in rows[HOPPER] and "measured: ISEP λ=0.5" in out
    assert "Reference: the paper's Tables 1-2" in out and "the paper trains 2,000,000" in out
    assert "## Reference" in (tmp_path / "o" / "report.md").read_text()


def test_ones_own_reference_matched_by_environment_says_v5_is_not_v2(store, tmp_path, capsys):
    own = tmp_path / "mine.csv"
    own.write_text("# my numbers\ntask,method,score,pm\nmujoco/walker2d/medium-v0,my IQL,70.5,1.5\n"
                   "mujoco/walker2d/medium-v0,my ISEP,75.0,\n")
    assert compare_main(["--tracking_uri", store["uri"], "--experiment", WALKER, "--out", str(tmp_path / "o"),
                         "--reference", str(own)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(f"| {WALKER} → mujoco/walker2d/medium-v0 |"))
    assert row.endswith("| 70.5 ± 1.5 | 75.0 |")
    assert f"Reference: {own}." in out and "Minari's v5 datasets are not D4RL's v2" in out
