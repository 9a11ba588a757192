"""One report a researcher can paste: `report.md` (what was read, the score definition, the
settings, the tables with CIs, the verdicts, the figures, the notes), the CSVs it was built from
(`runs.csv`: one row per run; `evaluations.csv`: one row per evaluation; `table.csv`: one row per
cell; `comparisons.csv`, `aggregates.csv`) and the same text on the console."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from isep.results import plots, stats, tables
from isep.results.analysis import FAMILY, Study
from isep.results.frames import DEFAULT_METRIC

TABLE_COLUMNS = ["task", "actor", "lam", "policy_mix", "settings", "metric", "variant", "n", "seeds",
                 "mean", "mean_low", "mean_high", "median", "median_low", "median_high", "iqm", "iqm_low", "iqm_high",
                 "std", "first_end", "last_end", "few_seeds", "uneven"]
FIGURES = (("score_vs_lambda.png", "Score against λ (Figure 5's form)", plots.plot_score_vs_lambda),
           ("learning_curves.png", "Learning curves", plots.plot_learning_curves),
           ("performance_profile.png", "Performance profiles", plots.plot_performance_profiles),
           ("probability_of_improvement.png", "Probability of improvement over λ = 0",
            plots.plot_probability_of_improvement))


@dataclass
class Selection:
    """What the report was asked to read."""

    experiments: list[str]
    filter: str = ""
    metric: str = DEFAULT_METRIC
    include_unfinished: bool = False


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def header(study: Study, sel: Selection) -> list[str]:
    counted = study.counted
    exps = sorted(set(counted["experiment"]))
    lines = [f"isep compare — {study.uri}: {_plural(len(counted), 'run')} counted in {_plural(len(exps), 'experiment')} "
             f"({', '.join(exps)}), {_plural(len(study.cells), 'cell')} (task × variant)"
             + (f"; filter: {sel.filter}" if sel.filter else ""),
             f"score of a run: {study.rule.describe(int(counted['evaluations'].max()) if len(counted) else None)} "
             "(--score final | last:K | auc)"]
    used = list(dict.fromkeys(study.cells["metric"]))
    if sel.metric == DEFAULT_METRIC and study.loaded.fallback_tasks:
        for m, tasks in study.loaded.fallback_tasks.items():
            lines.append(f"metric: {m} for {', '.join(sorted(tasks))} (those runs have no {DEFAULT_METRIC})"
                         + (f"; {DEFAULT_METRIC} elsewhere" if DEFAULT_METRIC in used else ""))
    else:
        lines.append(f"metric: {', '.join(used)}")
    lines.append(f"statistics over seeds: mean, median, IQM; 95 % CIs by the percentile bootstrap ({stats.RESAMPLES} "
                 "resamples, each task's and variant's runs resampled apart; scipy.stats.bootstrap, fixed seed). At 3 "
                 "seeds the interval of a mean is the range of the 3 scores, a 75 % interval: a first look, not a proof.")
    if sel.include_unfinished:
        other = counted[counted["status"] != "FINISHED"]["status"]
        if len(other):
            lines.append("counted although not FINISHED (--include_unfinished): "
                         + ", ".join(f"{k} {s}" for s, k in sorted(other.value_counts().items())))
    return lines


def settings_lines(study: Study) -> list[str]:
    """Per task, the model and data settings that all its counted runs share (the variants' own
    differences are in their names)."""
    counted, out = study.counted, []
    params = [c for c in counted.columns if c.startswith(("model.", "data."))]
    for task, runs in counted.groupby("task", sort=False):
        shared = [f"{p}={runs[p].iloc[0]}" for p in params if runs[p].notna().all() and runs[p].astype(str).nunique() == 1]
        ends = sorted(set(runs["last_step"]))
        out.append(f"{task}: runs end at {', '.join(f'{e:,}' for e in ends)} updates; seeds "
                   f"{', '.join(sorted(set(runs['seed'])))}" + (f"; {', '.join(shared)}" if shared else ""))
    return out


def _describe(row) -> str:
    what = " ".join(x for x in (row["task"], row["actor"] or "", "" if pd.isna(row["lam"]) else f"λ={row['lam']:g}",
                                f"seed {row['seed']}") if x)
    why = f": {row['failure_reason']}" if row["failure_reason"] else ""
    return f"{row['run_name']} [{row['run_id'][:8]}] {what}{why}"


def _listed(rows: pd.DataFrame, limit: int = 10) -> str:
    shown = "; ".join(_describe(r) for _, r in rows.head(limit).iterrows())
    return shown + (f"; and {len(rows) - limit} more" if len(rows) > limit else "")


def run_notes(study: Study, sel: Selection) -> list[str]:
    """Why runs were left out, and the flagged cells."""
    runs, notes = study.loaded.runs, []
    reason = runs["left_out"]
    unfinished = runs[reason == "unfinished"]
    for status, rows in sorted(unfinished.groupby("status"), key=lambda kv: kv[0] != "FAILED"):
        notes.append(f"not counted: {_plural(len(rows), status + ' run')} ({_listed(rows)}); --include_unfinished counts them")
    other = runs[reason.str.startswith("not isep")]
    if len(other):
        notes.append(f"skipped {_plural(len(other), 'run')}: " + "; ".join(
            f"{r['run_name']} ({r['run_id'][:8]}, {r['experiment']}): {r['left_out'].split(': ', 1)[1]}" for _, r in other.iterrows()))
    for key, text in (("no evaluations", f"without any evaluation of {sel.metric}"),
                      ("not finite", "whose score is not a number (NaN or infinite evaluations)")):
        rows = runs[reason == key]
        if len(rows):
            notes.append(f"left out {_plural(len(rows), 'run')} {text}: {_listed(rows)}")
    for _, r in runs[reason.str.startswith("duplicate seed")].iterrows():
        notes.append(f"seed {r['seed']} counted once in {r['task']}: {r['run_name']} [{r['run_id'][:8]}] is left out, "
                     f"the {r['left_out'].split(': ', 1)[1]}")
    for (_, task, _, _), fam in study.cells[study.cells["uneven"]].groupby(FAMILY, sort=False):
        ends = "; ".join(f"{c['variant']} at {c['first_end']:,}" + (f"–{c['last_end']:,}" if c["last_end"] != c["first_end"] else "")
                         for _, c in fam.iterrows())
        notes.append(f"{tables.UNEVEN} {task}: runs of different lengths, scored after different training: they end "
                     f"at {ends} updates")
    few = study.cells[study.cells["few_seeds"]]
    if len(few):
        notes.append(f"{tables.FEW} fewer than 3 seeds: " + "; ".join(f"{c['task']} {c['variant']} (n={c['n']})"
                                                                      for _, c in few.iterrows()))
    return notes


def sections(study: Study, sel: Selection, reference: pd.DataFrame | None) -> list[tuple[str, list[str]]]:
    out = [("", header(study, sel)), ("Scores", tables.main_tables(study)),
           ("Per cell", tables.statistics_table(study)),
           ("Against λ = 0 (same task, actor and settings)", tables.comparison_rows(study)),
           ("Best variant per task", tables.verdict_lines(study)),
           ("Probability of improvement over λ = 0", tables.poi_lines(study) or ["(no λ > 0 variant has a baseline)"])]
    if reference is not None:
        out.append(("Reference", tables.reference_section(study, reference)))
    notes = run_notes(study, sel)
    if notes:
        out.append(("Notes", notes))
    return out


def _bullets(lines: list[str]) -> list[str]:
    return lines if any(line.startswith("|") for line in lines) else [f"- {line}" for line in lines]


def write_report(study: Study, sel: Selection, out: Path, reference: pd.DataFrame | None = None) -> str:
    """Writes report.md, the CSVs and the figures into `out`; returns the console text."""
    parts = sections(study, sel, reference)
    drawn = [(name, title) for name, title, draw in FIGURES if draw(study, out / name) is not False]
    files = ["report.md", *write_csvs(study, out), *(name for name, _ in drawn)]
    md = ["# isep compare", "", *["  \n".join(parts[0][1]), ""]]
    for title, lines in parts[1:]:
        md += [f"## {title}", "", *_bullets(lines), ""]
    md += ["## Settings", "", *_bullets(settings_lines(study)), "", "## Figures", ""]
    md += [f"### {title}\n\n![{title}]({name})\n" for name, title in drawn]
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    console = ["\n".join(parts[0][1])] + [f"{title}:\n" + "\n".join(lines) for title, lines in parts[1:]]
    return "\n\n".join(console + [f"wrote {', '.join(files)} to {out}"])


def write_csvs(study: Study, out: Path) -> list[str]:
    frames = {"table.csv": study.cells[TABLE_COLUMNS], "runs.csv": study.loaded.runs,
              "evaluations.csv": study.loaded.evaluations, "comparisons.csv": study.comparisons}
    if len(study.aggregates):
        frames["aggregates.csv"] = study.aggregates
    for name, frame in frames.items():
        frame.to_csv(out / name, index=False)
    return list(frames)
