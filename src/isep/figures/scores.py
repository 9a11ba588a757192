"""Figure 5 (score against λ per task) and Figure 7 (stochastic selection against deterministic
interpolation), from the runs of a sweep, grouped as `isep compare` groups them."""

from __future__ import annotations

import math
from pathlib import Path

from isep.compare import Group, GroupKey, mean_curve, plot_score_vs_lambda


def figure5(groups: dict[GroupKey, Group], path: Path) -> None:
    """Normalized score against λ per task: mean ± std over seeds (one line per actor and mix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_score_vs_lambda(groups, "last evaluation", path)


def figure7(groups: dict[GroupKey, Group], path: Path) -> dict:
    """Per task: final score of the stochastic and the deterministic mix (bars, mean ± std over seeds),
    and their learning curves. Compares each (actor, λ > 0) that has both mixes; returns the numbers."""
    from isep.figures.common import figure

    pairs: dict[tuple[str, str, float], dict[str, Group]] = {}
    for key, group in groups.items():
        if key.lam > 0:
            pairs.setdefault((key.task, key.actor, key.lam), {})[key.policy_mix] = group
    pairs = {k: v for k, v in sorted(pairs.items()) if {"stochastic", "deterministic"} <= set(v)}
    if not pairs:
        raise ValueError("Figure 7 needs runs of both policy_mix values (stochastic and deterministic) at some λ > 0")
    fig, axes = figure(2, len(pairs), width=4.2, height=3.4)
    numbers = {}
    colors = {"stochastic": "tab:blue", "deterministic": "tab:orange"}
    for col, ((task, actor, lam), by_mix) in enumerate(pairs.items()):
        bars, curves = axes[0][col], axes[1][col]
        for i, mix in enumerate(("stochastic", "deterministic")):
            g = by_mix[mix]
            std = 0.0 if math.isnan(g.std) else g.std
            bars.bar(i, g.mean, yerr=std, capsize=5, color=colors[mix], label=f"{mix} (n={g.n})")
            x, mean, sd = mean_curve(g.runs)
            curves.plot(x, mean, color=colors[mix], label=mix)
            curves.fill_between(x, mean - sd, mean + sd, color=colors[mix], alpha=0.2, linewidth=0)
            numbers[f"{task} {actor} λ={lam:g} {mix}"] = {"mean": g.mean, "std": g.std, "n": g.n}
        bars.set_xticks([0, 1], ["stochastic", "deterministic"])
        bars.set_title(f"{task}\n{actor}, λ = {lam:g}", fontsize=9)
        bars.set_ylabel(next(iter(by_mix.values())).key.metric)
        curves.set_xlabel("gradient updates")
        curves.legend(fontsize="small")
        for ax in (bars, curves):
            ax.grid(alpha=0.3)
    fig.suptitle("stochastic action selection (ISEP) against deterministic interpolation (Appendix B)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return numbers
