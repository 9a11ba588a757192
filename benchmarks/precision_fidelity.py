"""The fidelity check behind the default precision (README "Precision"): bf16-mixed against fp32.

Reads the runs of an `isep compare --out DIR` report (its runs.csv, one row per run with its score
and its `trainer.precision`) and prints, per task, actor, λ and mix, the fp32 and bf16 scores over
seeds, their difference with its 95 % stratified-bootstrap CI and P(a bf16 run > an fp32 run)
(`isep.results.stats`, as the report computes them). The two agree within seed noise when the CI
of the difference holds 0; a verdict at 3 seeds is a first look (the CI covers ≈ 75 %).

    isep compare --experiment fidelity-32-true,fidelity-bf16-mixed --out report
    python benchmarks/precision_fidelity.py report
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from isep.results.stats import difference, probability_of_improvement

VARIANT = ["task", "actor", "lam", "policy_mix"]


def fidelity_rows(runs: pd.DataFrame) -> list[dict]:
    """One row per variant that has runs in both precisions."""
    runs = runs[runs["left_out"].fillna("") == ""]
    rows = []
    for key, group in runs.groupby(VARIANT):
        by = {p: g["score"].to_numpy(float) for p, g in group.groupby("trainer.precision")}
        if set(by) != {"32-true", "bf16-mixed"}:
            continue
        fp32, bf16 = by["32-true"], by["bf16-mixed"]
        delta, poi = difference(bf16, fp32), probability_of_improvement([bf16], [fp32])
        rows.append({**dict(zip(VARIANT, key)), "fp32": fp32, "bf16": bf16, "delta": delta, "poi": poi,
                     "agree": (delta.low <= 0 <= delta.high) if delta.has_interval else None})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| task | actor | λ | fp32 (mean ± std, n) | bf16-mixed (mean ± std, n) | Δ bf16 − fp32 [95 % CI] | "
             "P(bf16 > fp32) [95 % CI] | within seed noise |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cell = lambda x: f"{x.mean():.1f} ± {x.std(ddof=1) if len(x) > 1 else 0:.1f} ({len(x)})"  # noqa: E731
        d, p = r["delta"], r["poi"]
        lines.append(f"| {r['task']} | {r['actor']} | {r['lam']:g} | {cell(r['fp32'])} | {cell(r['bf16'])} | "
                     f"{d.value:+.1f} [{d.low:+.1f}, {d.high:+.1f}] | {p.value:.2f} [{p.low:.2f}, {p.high:.2f}] | "
                     f"{ {True: 'yes', False: 'no', None: 'n < 2'}[r['agree']]} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="an `isep compare --out` folder of fp32 and bf16 runs")
    runs = pd.read_csv(parser.parse_args().report / "runs.csv")
    rows = fidelity_rows(runs)
    print(markdown(rows) if rows else "no variant has runs in both 32-true and bf16-mixed")


if __name__ == "__main__":
    main()
