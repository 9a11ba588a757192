"""Figure 5 (score against λ per task) and Figure 7 (stochastic selection against deterministic
interpolation), from the runs of a sweep, with the statistics and plots of `isep compare`
(`isep.results`): means over seeds with 95 % bootstrap CIs."""

from __future__ import annotations

from pathlib import Path

from isep.results.analysis import CellKey, Study
from isep.results.plots import BAND, cell_curve, legend_below, plot_score_vs_lambda, y_label


def figure5(study: Study, path: Path) -> dict:
    """Normalized score against λ per task (one line per actor and mix); returns its numbers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_score_vs_lambda(study, path)
    return {f"{c['task']} {c['actor']} λ={c['lam']:g} {c['policy_mix']}": _numbers(c) for _, c in study.cells.iterrows()}


def _numbers(cell) -> dict:
    return {"mean": cell["mean"], "ci95": [cell["mean_low"], cell["mean_high"]], "n": int(cell["n"])}


def figure7(study: Study, path: Path) -> dict:
    """Per task: the score of the stochastic and the deterministic mix (bars: mean over seeds with
    its CI), and their learning curves. Compares each (actor, λ > 0) that has both mixes; returns
    the numbers."""
    from isep.figures.common import figure

    cells = study.cells[study.cells["lam"] > 0]
    pairs = {k: rows.set_index("policy_mix") for k, rows in cells.groupby(["task", "actor", "settings", "lam"])
             if {"stochastic", "deterministic"} <= set(rows["policy_mix"])}
    if not pairs:
        raise ValueError("Figure 7 needs runs of both policy_mix values (stochastic and deterministic) at some λ > 0")
    fig, axes = figure(2, len(pairs), width=4.2, height=3.6)
    numbers = {}
    colors = {"stochastic": "tab:blue", "deterministic": "tab:orange"}
    for col, ((task, actor, settings, lam), by_mix) in enumerate(pairs.items()):
        bars, curves = axes[0][col], axes[1][col]
        for i, mix in enumerate(("stochastic", "deterministic")):
            c = by_mix.loc[mix]
            err = [[c["mean"] - c["mean_low"]], [c["mean_high"] - c["mean"]]]
            bars.bar(i, c["mean"], yerr=err, capsize=5, color=colors[mix], label=f"{mix} (n={c['n']})")
            steps, mean, low, high, _ = cell_curve(study, CellKey(c["metric"], task, actor, settings, mix, lam))
            curves.plot(steps, mean, color=colors[mix], label=f"{mix} (n={c['n']})")
            curves.fill_between(steps, low, high, color=colors[mix], alpha=0.2, linewidth=0)
            numbers[f"{task} {actor} λ={lam:g} {mix}"] = _numbers(c)
        metric = by_mix["metric"].iloc[0]
        bars.set_xticks([0, 1], ["stochastic", "deterministic"])
        bars.set_title(f"{task}\n{actor}, λ = {lam:g}" + (f" [{settings}]" if settings else ""), fontsize=9)
        bars.set_ylabel(y_label(metric))
        curves.set_xlabel("gradient updates")
        curves.set_ylabel(y_label(metric))
        legend_below(curves, ncol=1)
        for ax in (bars, curves):
            ax.grid(alpha=0.3)
    fig.suptitle("stochastic action selection (ISEP) against deterministic interpolation (Appendix B); "
                 f"bars: mean over seeds with 95 % CI, {BAND}", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return numbers
