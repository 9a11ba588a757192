"""The embedded default: `isep demo` trains the three toy policies through the CLI and draws Figure 1."""

from __future__ import annotations

import json

from isep.demo import demo_main


def test_demo_writes_the_figure_and_its_numbers(tmp_path, capsys):
    assert demo_main(["--out", str(tmp_path), "--max_epochs", "1", "--steps_per_epoch", "40"]) == 0
    printed = capsys.readouterr().out  # what 5 seeds said, beside this one run
    assert "does not reproduce here" in printed and "[0.572, 0.639]" in printed
    png = tmp_path / "figure1.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [v["lam"] for v in summary.values()] == [0.3, 0.0, 0.3]
    for v in summary.values():
        assert v["updates"] == 40
        assert -0.01 <= v["expected_reward"] <= 1.0
        assert 0 <= v["share_near_optimum"] + v["share_near_suboptimum"] <= 1


def test_the_printed_measurements_are_the_guides():
    """Every figure `isep demo` prints as measured is in the guide that has its table and commands."""
    import re
    from pathlib import Path

    from isep.demo import MEASURED

    guide = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "policy-draw.md").read_text()
    figures = re.findall(r"[−+]?\d+\.\d+ \[[−+]?\d+\.\d+, [−+]?\d+\.\d+\]", MEASURED)
    assert len(figures) >= 10
    missing = [f for f in figures if f not in guide]
    assert not missing, f"printed by isep demo but not in docs/guides/policy-draw.md: {missing}"
