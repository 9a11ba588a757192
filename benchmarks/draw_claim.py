"""ISEP-FM's a_π draw settings against each other and against CFGRL, from `isep compare`'s runs.csv.

`isep compare` holds every λ > 0 variant against its λ = 0 baseline; this adds what the draw's
choice needs: each draw setting against the trained-w draw at the same λ (Δ mean and P(X > Y) with
95 % bootstrap CIs, `isep.results.stats`), for each metric directory given.

    isep compare --experiment fig1 --tracking_uri sqlite:///… --metric eval/expected_reward --score final --out DIR
    python benchmarks/draw_claim.py DIR [DIR ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from isep.results import stats


def label(row: pd.Series) -> str:
    w = row["model.policy_guidance"]
    if row["lam"] == 0:
        return "CFGRL (λ=0)"
    draw = "trained w" if str(w) in ("None", "nan") else f"w = {float(w):g}"
    return f"ISEP-FM λ={row['lam']:g}, draw {draw}"


def rows(runs: pd.DataFrame) -> list[str]:
    runs = runs[runs["left_out"].isna() & (runs["actor"] == "flow")].copy()  # (empty in the CSV: counted)
    runs["variant"] = runs.apply(label, axis=1)
    scores = {v: g["score"].to_numpy(dtype=float) for v, g in runs.groupby("variant")}
    out = []
    for variant, x in sorted(scores.items()):
        if variant.startswith("CFGRL") or variant.endswith("trained w"):
            continue
        lam = variant.split(",")[0]
        for base in (f"{lam}, draw trained w", "CFGRL (λ=0)"):
            if base in scores:
                y = scores[base]
                d, p = stats.difference(x, y), stats.probability_of_improvement([x], [y])
                out.append(f"| {variant} | {base} | {len(x)} vs {len(y)} | {d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}] | "
                           f"{p.value:.2f} [{p.low:.2f}, {p.high:.2f}] |")
    return out


def main(folders: list[str]) -> int:
    for folder in folders:
        runs = pd.read_csv(Path(folder) / "runs.csv")
        metric = ", ".join(sorted(set(runs["metric"].dropna()) - {""}))
        print(f"\n{folder} ({metric}):\n")
        print("| variant | against | n | Δ mean [95 % CI] | P(variant > other) [95 % CI] |\n|---|---|---|---|---|")
        print("\n".join(rows(runs)))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main(sys.argv[1:]))
