"""The report's figures, PNG, with matplotlib's object API and the Agg canvas (no pyplot, no global
backend): score against λ per task with CI bands (Figure 5's form), learning curves with CI bands,
performance profiles (rliable's) and the probability of improvement over λ = 0. Every panel
labels its axes with units, every line or point says its n, and legends sit below the axes, off
the data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from isep.results import stats
from isep.results.analysis import COLUMN, CellKey, Study
from isep.results.frames import CELL, MIX_MARK, column_order

UNITS = {"eval/normalized_score": "D4RL normalized score (0–100)",
         "eval/expected_reward": "expected reward of the policy's samples"}
BAND = "band: 95 % bootstrap CI of the mean over seeds"


def y_label(metric: str) -> str:
    return UNITS.get(metric, metric)


def figure(panels: int, width: float = 5.4, height: float = 4.4, ncols: int = 3):
    """A Figure with an Agg canvas and `panels` axes (constrained layout keeps legends in view)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, panels))
    nrows = math.ceil(max(panels, 1) / ncols)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes


def suptitle(fig, axes, text: str) -> None:
    """The figure's title, wrapped to the width of its visible panels."""
    import textwrap

    width = sum(ax.get_visible() for ax in axes[:3]) * 62
    fig.suptitle(textwrap.fill(text, width=max(width, 62)), fontsize=10)


def legend_below(ax, ncol: int = 2) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, fontsize="small", frameon=False)


def colors(study: Study) -> dict[tuple, str]:
    """One colour per variant (actor, settings, mix, λ), the same in every figure."""
    keys = sorted({tuple(r) for r in study.cells[COLUMN].itertuples(index=False)}, key=lambda k: column_order(*k))
    return {k: f"C{i % 10}" for i, k in enumerate(keys)}


def _panels(cells: pd.DataFrame) -> dict[tuple[str, str], pd.DataFrame]:
    return {key: rows for key, rows in cells.groupby(["metric", "task"], sort=False)}


def plot_score_vs_lambda(study: Study, path: Path) -> None:
    """Per task: the mean score over seeds against λ, a line per actor (and mix, settings), with
    its CI band and each point's n."""
    panels = _panels(study.cells)
    lines = sorted({tuple(k) for k in study.cells[["actor", "settings", "policy_mix"]].itertuples(index=False)},
                   key=lambda k: column_order(k[0], k[1], k[2], 0.0))
    palette = {k: f"C{i % 10}" for i, k in enumerate(lines)}  # one colour per line, the same in every panel
    fig, axes = figure(len(panels))
    for ax, ((metric, task), cells) in zip(axes, panels.items()):
        for (actor, settings, mix), line in cells.groupby(["actor", "settings", "policy_mix"], sort=False):
            line = line.sort_values("lam")
            name, base = {"flow": ("ISEP-FM", "CFGRL"), "gaussian": ("ISEP", "IQL")}.get(actor, (actor, actor))
            name += MIX_MARK.get(mix, "") + (f" [{settings}]" if settings else "")
            style = {"deterministic": "--", "weighted_sum": ":"}.get(mix, "-")
            color = palette[(actor, settings, mix)]
            ax.plot(line["lam"], line["mean"], style, marker="o", color=color, label=f"{name} (λ = 0: {base})")
            ax.fill_between(line["lam"], line["mean_low"], line["mean_high"], color=color, alpha=0.2, linewidth=0)
            ax.errorbar(line["lam"], line["mean"], yerr=[line["mean"] - line["mean_low"], line["mean_high"] - line["mean"]],
                        fmt="none", ecolor=color, capsize=4, alpha=0.7)  # the CI also where a band has one point
            for _, c in line.iterrows():
                ax.annotate(f"n={c['n']}", (c["lam"], c["mean"]), textcoords="offset points", xytext=(6, 5),
                            ha="left", fontsize=7, color=color)
        ax.set_title(task, fontsize=10)
        ax.margins(x=0.08, y=0.15)
        ax.set_xlabel("λ (share of policy actions in the targets)")
        ax.set_ylabel(y_label(metric))
        ax.grid(alpha=0.3)
        legend_below(ax, ncol=1)
    suptitle(fig, axes, f"score against λ; score {study.rule.describe()}; mean over seeds, {BAND}")
    fig.savefig(path, dpi=110)


def cell_curve(study: Study, key: CellKey) -> tuple[np.ndarray, ...]:
    """(steps, mean, CI low, CI high, n per step) of one cell's evaluations over its seeds."""
    runs = study.cell_runs(key)["run_id"]
    evals = study.loaded.evaluations
    evals = evals[evals["run_id"].isin(runs) & (evals["metric"] == key.metric)]
    matrix = evals.pivot_table(index="run_id", columns="step", values="value", aggfunc="last")
    mean, low, high, count = stats.curve_band(matrix.to_numpy())
    return matrix.columns.to_numpy(dtype=float), mean, low, high, count


def plot_learning_curves(study: Study, path: Path) -> None:
    """Per task: each variant's evaluations against updates, mean over seeds with its CI band."""
    panels, palette = _panels(study.cells), colors(study)
    fig, axes = figure(len(panels))
    for ax, ((metric, task), cells) in zip(axes, panels.items()):
        for _, c in cells.iterrows():
            steps, mean, low, high, _ = cell_curve(study, CellKey(*c[CELL]))
            color = palette[tuple(c[COLUMN])]
            ax.plot(steps, mean, color=color, marker="." if len(steps) < 30 else None, label=f"{c['variant']} (n={c['n']})")
            ax.fill_between(steps, low, high, color=color, alpha=0.18, linewidth=0)
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("gradient updates")
        ax.set_ylabel(y_label(metric))
        ax.grid(alpha=0.3)
        legend_below(ax)
    suptitle(fig, axes, f"learning curves: mean over seeds at each evaluation; {BAND}")
    fig.savefig(path, dpi=110)


def plot_performance_profiles(study: Study, path: Path) -> None:
    """Per metric: the fraction of runs (all tasks) scoring above τ, per variant, with CI bands."""
    metrics = list(dict.fromkeys(study.cells["metric"]))
    palette = colors(study)
    fig, axes = figure(len(metrics), width=6.0)
    for ax, metric in zip(axes, metrics):
        cells = study.cells[study.cells["metric"] == metric]
        scores = {k: study.scores(k) for k in study.keys() if k.metric == metric}
        every = np.concatenate(list(scores.values()))
        span = max(every.max() - every.min(), 1e-9)
        taus = np.linspace(every.min() - 0.05 * span, every.max() + 0.05 * span, 121)
        for column, rows in cells.groupby(COLUMN, sort=False):
            per_task = [scores[CellKey(*r[CELL])] for _, r in rows.iterrows()]
            frac, low, high = stats.performance_profile(per_task, taus)
            color = palette[tuple(column)]
            label = f"{rows['variant'].iloc[0]} ({sum(len(s) for s in per_task)} runs, {len(per_task)} task(s))"
            ax.plot(taus, frac, color=color, drawstyle="steps-post", label=label)
            ax.fill_between(taus, low, high, color=color, alpha=0.15, linewidth=0, step="post")
        ax.set_xlabel(f"score τ: {y_label(metric)}")
        ax.set_ylabel("fraction of runs with score > τ")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        legend_below(ax)
    suptitle(fig, axes, f"performance profiles ({study.rule.name} score of each run); "
             "band: 95 % stratified-bootstrap CI")
    fig.savefig(path, dpi=110)


def plot_probability_of_improvement(study: Study, path: Path) -> bool:
    """P(a run of the variant scores above a run of its λ = 0 baseline), per task and across
    tasks, with CIs; False (nothing drawn) when no variant has a baseline."""
    rows = [(f"{c['task']}\n{c['variant']} vs {c['baseline']} (n={c['n']} vs {c['n_baseline']})", c)
            for _, c in study.comparisons.iterrows()]
    agg = study.aggregates
    if len(agg) and "poi" in agg:
        rows += [(f"over {a['tasks']} tasks\n{a['variant']} vs {a['baseline']} ({a['runs']} runs)", a)
                 for _, a in agg[agg["baseline"] != ""].iterrows()]
    if not rows:
        return False
    fig, axes = figure(1, width=7.5, height=1.0 + 0.62 * len(rows))
    ax = axes[0]
    for i, (_, r) in enumerate(rows):
        y = len(rows) - 1 - i
        if not (math.isnan(r["poi_low"]) or math.isnan(r["poi_high"])):
            ax.plot([r["poi_low"], r["poi_high"]], [y, y], color="C0", linewidth=6, alpha=0.35, solid_capstyle="butt")
        ax.plot([r["poi"]], [y], "o", color="C0")
        ax.annotate(f"{r['poi']:.2f}", (r["poi"], y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
    ax.axvline(0.5, color="gray", linestyle="--", linewidth=1)
    ax.set_yticks(range(len(rows)), [label for label, _ in reversed(rows)], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlim(-0.04, 1.06)
    ax.set_xlabel("P(a run of the variant scores above a run of λ = 0); 0.5: no difference")
    ax.grid(alpha=0.3, axis="x")
    suptitle(fig, axes, f"probability of improvement over λ = 0 ({study.rule.name} score); bar: 95 % bootstrap CI")
    fig.savefig(path, dpi=110)
    return True
