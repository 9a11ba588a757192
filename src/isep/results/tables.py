"""The report's text: Markdown tables (the paper's layout with CIs, the per-cell statistics, the
comparisons with λ = 0, the reference beside the measurement), the verdict line per task, the
probability-of-improvement lines and the notes on runs left out or flagged."""

from __future__ import annotations

import math

import pandas as pd

from isep.results.analysis import COLUMN, FAMILY, FEW_SEEDS, Study
from isep.results.frames import DEFAULT_METRIC, column_order
from isep.results.reference import match_tasks

FEW, UNEVEN = "†", "‡"
LEGEND = (f"{FEW} fewer than {FEW_SEEDS} seeds; {UNEVEN} runs of different lengths (in the cell, or against the other "
          "variants of its task and actor). "
          "[a, b]: 95 % stratified-bootstrap confidence interval.")


def decimals_for(values) -> int:
    finite = [abs(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    top = max(finite, default=0.0)
    return 1 if top >= 10 else 2 if top >= 1 else 3


def decimals(study: Study) -> dict[str, int]:
    return {m: decimals_for(c["mean"]) for m, c in study.cells.groupby("metric", sort=False)}


def num(x: float, d: int, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.{d}f}" if sign else f"{x:.{d}f}"


def with_ci(row, name: str, d: int, sign: bool = False) -> str:
    """`value [low, high]`, or the value alone where there is no interval (one run)."""
    value, low, high = row[name], row[f"{name}_low"], row[f"{name}_high"]
    if math.isnan(low) or math.isnan(high):
        return num(value, d, sign)
    return f"{num(value, d, sign)} [{num(low, d)}, {num(high, d)}]"


def flags(cell) -> str:
    return (FEW if cell["few_seeds"] else "") + (UNEVEN if cell["uneven"] else "")


def cell_text(cell, d: int) -> str:
    return f"{with_ci(cell, 'mean', d)} (n={cell['n']}){' ' + flags(cell) if flags(cell) else ''}"


def _markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _columns(cells: pd.DataFrame) -> dict[tuple, str]:
    ordered = sorted(cells.itertuples(index=False), key=lambda c: column_order(c.actor, c.settings, c.policy_mix, c.lam))
    return {tuple(getattr(c, k) for k in COLUMN): c.variant for c in ordered}


def main_tables(study: Study) -> list[str]:
    """Per metric, the paper's layout: a row per task, a column per variant, mean [CI] (n); and
    across tasks (2 or more) the IQM and the mean of task means, with CIs."""
    out, dec = [], decimals(study)
    for metric, cells in study.cells.groupby("metric", sort=False):
        d, columns = dec[metric], _columns(cells)
        lookup = {(c["task"], tuple(c[k] for k in COLUMN)): c for _, c in cells.iterrows()}
        rows = [[task] + [cell_text(lookup[(task, col)], d) if (task, col) in lookup else "—" for col in columns]
                for task in dict.fromkeys(cells["task"])]
        agg = study.aggregates[study.aggregates["metric"] == metric] if len(study.aggregates) else pd.DataFrame()
        for name, title in (("iqm", "IQM over tasks"), ("mean", "mean over tasks")):
            if len(agg):
                by_col = {tuple(a[k] for k in COLUMN): a for _, a in agg.iterrows()}
                rows.append([title] + [with_ci(by_col[c], name, d) if c in by_col else "—" for c in columns])
        out += [f"### {metric}: mean over seeds [95 % CI] (n = seeds)", "", *_markdown(["Task", *columns.values()], rows), ""]
    return out + [LEGEND]


def statistics_table(study: Study) -> list[str]:
    """One row per cell: n, seeds, mean, median and IQM with CIs, std, update counts, flags."""
    dec, rows = decimals(study), []
    for _, c in study.cells.iterrows():
        d = dec[c["metric"]]
        ends = f"{c['first_end']:,}" if c["first_end"] == c["last_end"] else f"{c['first_end']:,}–{c['last_end']:,}"
        rows.append([c["task"] + ("" if c["metric"] == DEFAULT_METRIC else f" [{c['metric']}]"), c["variant"], str(c["n"]),
                     c["seeds"].replace(";", ", "), with_ci(c, "mean", d), with_ci(c, "median", d), with_ci(c, "iqm", d),
                     num(c["std"], d), ends, flags(c)])
    header = ["Task", "Variant", "n", "seeds", "mean [95 % CI]", "median [95 % CI]", "IQM [95 % CI]", "std", "updates", "flags"]
    return _markdown(header, rows)


def comparison_rows(study: Study) -> list[str]:
    """Each λ > 0 against its λ = 0 baseline: Δ mean and P(improvement) with CIs."""
    dec, rows = decimals(study), []
    for _, c in study.comparisons.iterrows():
        rows.append([c["task"], c["variant"], c["baseline"], f"{c['n']} vs {c['n_baseline']}",
                     with_ci(c, "diff", dec[c["metric"]], sign=True), with_ci(c, "poi", 2)])
    if not rows:
        return ["(no variant with λ > 0 has a λ = 0 baseline of the same task, actor and settings)"]
    return _markdown(["Task", "Variant", "vs", "n", "Δ mean [95 % CI]", "P(improvement) [95 % CI]"], rows)


def poi_lines(study: Study) -> list[str]:
    """`P(ISEP λ=0.3 > IQL (λ=0)) on TASK = 0.67 [0.33, 1.00]`: per task, then across tasks."""
    lines = [f"P({c['variant']} > {c['baseline']}) on {c['task']} = {with_ci(c, 'poi', 2)} "
             f"(n = {c['n']} vs {c['n_baseline']})" for _, c in study.comparisons.iterrows()]
    agg = study.aggregates
    if len(agg) and "poi" in agg:
        lines += [f"P({a['variant']} > {a['baseline']}) over {a['tasks']} tasks = {with_ci(a, 'poi', 2)}"
                  for _, a in agg[agg["baseline"] != ""].iterrows()]
    return lines


def verdict_lines(study: Study) -> list[str]:
    """Per task and actor (and settings): the best variant only where the CI of its difference to
    λ = 0 excludes 0; otherwise that the runs cannot tell them apart at this n."""
    dec, lines = decimals(study), []
    for (metric, task, _, _), fam in study.cells.groupby(FAMILY, sort=False):
        d = dec[metric]
        head = f"{task}{'' if metric == DEFAULT_METRIC else f' [{metric}]'}: "
        comps = study.comparisons[study.comparisons["variant"].isin(fam["variant"]) & (study.comparisons["task"] == task)
                                  & (study.comparisons["metric"] == metric)]
        best = fam.loc[fam["mean"].idxmax()]
        ends = sorted(set(fam["first_end"]) | set(fam["last_end"]))
        if len(fam) == 1:
            text = f"only {best['variant']} = {cell_text(best, d)} (nothing to compare)"
        elif not (fam["lam"] == 0).any():
            text = f"no λ = 0 run of this actor: nothing to compare λ against (highest mean {best['variant']} = {cell_text(best, d)})"
        elif len(ends) > 1:
            text = (f"no verdict: its runs end at different update counts ({ends[0]:,} to {ends[-1]:,}); "
                    "compare runs of one length (--filter)")
        else:
            text = _verdict(best, comps, d) + _rivals(study, best, d)
        few = fam[fam["few_seeds"]]
        if len(few):
            text += f" — provisional: fewer than {FEW_SEEDS} seeds in {', '.join(few['variant'])}"
        lines.append(head + text)
    return lines


def _verdict(best, comps: pd.DataFrame, d: int) -> str:
    if best["lam"] > 0:
        c = comps[comps["variant"] == best["variant"]].iloc[0]
        diff, n = with_ci(c, "diff", d, sign=True), f"n = {c['n']} vs {c['n_baseline']}"
        if math.isnan(c["diff_low"]):
            return (f"{best['variant']} has the highest mean ({cell_text(best, d)}), but the runs cannot tell it apart from "
                    f"{c['baseline']} at {n}: a difference ({diff}) has no CI with a single run on a side")
        if c["diff_low"] > 0:
            return (f"best {best['variant']} = {cell_text(best, d)}: {diff} over {c['baseline']}, "
                    f"P(improvement) = {with_ci(c, 'poi', 2)} ({n})")
        return (f"{best['variant']} has the highest mean ({cell_text(best, d)}), but the runs cannot tell it apart from "
                f"{c['baseline']} at {n}: the difference {diff} includes 0")
    tied = comps[~(comps["diff_high"] < 0)]
    if tied.empty:
        return f"best {best['variant']} = {cell_text(best, d)}: every λ > 0 scores lower (each CI of the difference excludes 0)"
    others = ", ".join(f"{c['variant']} ({with_ci(c, 'diff', d, sign=True)}, n = {c['n']} vs {c['n_baseline']})"
                       for _, c in tied.iterrows())
    return (f"{best['variant']} has the highest mean ({cell_text(best, d)}), but the runs cannot tell it apart from "
            f"{others}: no CI of these differences excludes 0")


def _rivals(study: Study, best, d: int) -> str:
    """Whether the best λ > 0 is told apart from the other λ > 0 of its task and actor."""
    rivals = study.rivals[(study.rivals["variant"] == best["variant"]) & (study.rivals["task"] == best["task"])
                          & (study.rivals["metric"] == best["metric"])]
    if best["lam"] == 0 or rivals.empty:
        return ""
    tied = rivals[~((rivals["diff_low"] > 0) | (rivals["diff_high"] < 0))]
    if tied.empty:
        return "; above every other λ > 0 (each CI of the difference excludes 0)"
    return "; not told apart from " + ", ".join(f"{r['other']} ({with_ci(r, 'diff', d, sign=True)})" for _, r in tied.iterrows())


def reference_section(study: Study, reference: pd.DataFrame) -> list[str]:
    """The reference's rows beside the measured cells of the tasks that match (normalized scores)."""
    cells = study.cells[study.cells["metric"] == DEFAULT_METRIC]
    matches = match_tasks(list(dict.fromkeys(cells["task"])), reference)
    source = reference.attrs.get("source", "the reference table")
    if not matches:
        known = ", ".join(list(dict.fromkeys(reference["task"]))[:12])
        return [f"Reference ({source}): no measured task matches one of its tasks ({known}, ...)."]
    d, columns = decimals_for(cells["mean"]), _columns(cells)
    methods = list(dict.fromkeys(reference["method"]))
    lookup = {(c["task"], tuple(c[k] for k in COLUMN)): c for _, c in cells.iterrows()}
    rows = []
    for task, ref_task in matches.items():
        ref = reference[reference["task"] == ref_task].set_index("method")
        rows.append([task if task == ref_task else f"{task} → {ref_task}"] + [cell_text(lookup[(task, c)], d) if (task, c) in lookup else "—" for c in columns]
                    + [_ref_cell(ref.loc[m]) if m in ref.index else "—" for m in methods])
    header = ["Task (measured → reference)", *[f"measured: {v}" for v in columns.values()], *methods]
    renamed = [f"{t} → {r}" for t, r in matches.items() if t != r]
    note = [f"Reference: {source}."]
    if renamed:
        note.append(f"Matched by environment and dataset kind: {'; '.join(renamed)}. Minari's v5 datasets are not D4RL's v2 "
                    "(recorded on Gymnasium's v5 MuJoCo envs, not D4RL's mujoco-py v2 data): the reference sets the scale, "
                    "it is not what these runs must reproduce.")
    ends = sorted(set(cells[cells["task"].isin(matches)]["last_end"]))
    span = f"{ends[0]:,}" if len(ends) == 1 else f"{ends[0]:,} to {ends[-1]:,}"
    note.append(f"These runs end at {span} updates" + (
        "; the paper trains 2,000,000 (2000 epochs × 1000) on Gym and 1,000,000 on Adroit and Kitchen." if
        source.startswith("the paper") else "."))
    return [*_markdown(header, rows), "", " ".join(note)]


def _ref_cell(row) -> str:
    pm = row["pm"]
    return f"{row['score']:.1f}" + ("" if math.isnan(pm) else f" ± {pm:.1f}")
