"""The numbers of the report, from the runs that count: per cell (a variant on a task: metric,
task, actor, settings, policy_mix, λ) the mean, median and IQM over seeds with their CIs; per
variant with λ > 0 the difference of means to its λ = 0 baseline (same task, actor and settings;
the same policy_mix where there is one) and the probability of improvement over it; across the
tasks of a metric, the IQM and the mean of task means (the paper's "total") of each variant that
every task has, and its probability of improvement over its baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd

from isep.results import stats
from isep.results.frames import CELL, DEFAULT_METRIC, Loaded, ScoreRule, column_order, in_seed_order, variant_label, without_draw

FEW_SEEDS = 3  # cells with fewer seeds are flagged
COLUMN = ["actor", "settings", "policy_mix", "lam"]  # a variant, across tasks
FAMILY = ["metric", "task", "actor", "settings"]  # the variants compared with one λ = 0


class CellKey(NamedTuple):
    metric: str
    task: str
    actor: str
    settings: str
    policy_mix: str
    lam: float


@dataclass
class Study:
    """Everything a report (or a figure) is built from."""

    uri: str
    rule: ScoreRule
    loaded: Loaded
    cells: pd.DataFrame  # one row per cell
    comparisons: pd.DataFrame  # one row per cell with λ > 0 that has a baseline
    aggregates: pd.DataFrame  # one row per (metric, variant) over the metric's tasks (≥ 2 tasks)
    rivals: pd.DataFrame  # per task and actor: its best-mean λ > 0 against each other λ > 0

    @property
    def counted(self) -> pd.DataFrame:
        return self.loaded.counted

    def keys(self) -> list[CellKey]:
        return [CellKey(*row) for row in self.cells[CELL].itertuples(index=False)]

    def cell_runs(self, key: CellKey) -> pd.DataFrame:
        """The runs of one cell, in seed order."""
        runs = self.counted
        return in_seed_order(runs[(runs[CELL] == pd.Series(key._asdict())).all(axis=1)])

    def scores(self, key: CellKey) -> np.ndarray:
        return self.cell_runs(key)["score"].to_numpy(dtype=float)


def _estimate_columns(prefix: str, e: stats.Estimate) -> dict:
    return {prefix: e.value, f"{prefix}_low": e.low, f"{prefix}_high": e.high}


def cell_table(counted: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: n, seeds, mean / median / IQM with CIs, std, update counts, flags."""
    rows = []
    for key, runs in counted.groupby(CELL, sort=False):
        runs = in_seed_order(runs)
        scores = runs["score"].to_numpy(dtype=float)
        row = dict(zip(CELL, key))
        ends = sorted(set(runs["last_step"]))
        row.update(variant=variant_label(row["actor"], row["lam"], row["policy_mix"], row["settings"]),
                   n=len(scores), seeds=";".join(runs["seed"]), std=float(np.std(scores, ddof=1)) if len(scores) > 1 else np.nan,
                   first_end=ends[0], last_end=ends[-1], few_seeds=len(scores) < FEW_SEEDS)
        for name, e in stats.cell_estimates(scores).items():
            row.update(_estimate_columns(name, e))
        rows.append(row)
    table = pd.DataFrame(rows)
    # runs of different lengths: within the cell, or against the other variants it is compared with
    family = table.groupby(FAMILY, sort=False)
    table["uneven"] = (family["first_end"].transform("min") != family["last_end"].transform("max"))
    order = table.apply(lambda r: (r["metric"] != DEFAULT_METRIC, r["metric"], r["task"],
                                   column_order(r["actor"], r["settings"], r["policy_mix"], r["lam"])), axis=1)
    return table.iloc[sorted(range(len(table)), key=lambda i: order.iloc[i])].reset_index(drop=True)


def baseline_of(cells: pd.DataFrame, cell: pd.Series) -> pd.Series | None:
    """The λ = 0 cell of the same metric, task, actor and settings (same policy_mix if it exists);
    the a_π draw's settings, which a λ = 0 run ignores, do not count."""
    same = cells[(cells["metric"] == cell["metric"]) & (cells["task"] == cell["task"]) & (cells["actor"] == cell["actor"])
                 & (cells["settings"].map(without_draw) == without_draw(cell["settings"])) & (cells["lam"] == 0)]
    if same.empty:
        return None
    mix = same[same["policy_mix"] == cell["policy_mix"]]
    return (mix if len(mix) else same).iloc[0]


def comparison_table(cells: pd.DataFrame, scores: dict) -> pd.DataFrame:
    """Per cell with λ > 0: Δ mean and P(improvement) over its baseline, with CIs."""
    rows = []
    for _, cell in cells[cells["lam"] > 0].iterrows():
        base = baseline_of(cells, cell)
        if base is None:
            continue
        x, y = scores[CellKey(*cell[CELL])], scores[CellKey(*base[CELL])]
        row = {**{c: cell[c] for c in CELL}, "variant": cell["variant"], "baseline": base["variant"],
               "n": len(x), "n_baseline": len(y)}
        row.update(_estimate_columns("diff", stats.difference(x, y)))
        row.update(_estimate_columns("poi", stats.probability_of_improvement([x], [y])))
        rows.append(row)
    columns = [*CELL, "variant", "baseline", "n", "n_baseline", "diff", "diff_low", "diff_high", "poi", "poi_low", "poi_high"]
    return pd.DataFrame(rows, columns=columns)


def aggregate_table(cells: pd.DataFrame, scores: dict) -> pd.DataFrame:
    """Per metric with ≥ 2 tasks, per variant every task has: IQM and mean over tasks with CIs, and
    the probability of improvement over the baseline variant (when every task has it too)."""
    rows = []
    for metric, mcells in cells.groupby("metric", sort=False):
        tasks = list(dict.fromkeys(mcells["task"]))
        if len(tasks) < 2:
            continue
        columns = {}
        for _, cell in mcells.iterrows():
            columns.setdefault(tuple(cell[COLUMN]), {})[cell["task"]] = cell
        complete = {k: v for k, v in columns.items() if len(v) == len(tasks)}
        for column, by_task in complete.items():
            per_task = [scores[CellKey(*by_task[t][CELL])] for t in tasks]
            first = by_task[tasks[0]]
            row = {"metric": metric, **dict(zip(COLUMN, column)), "variant": first["variant"], "tasks": len(tasks),
                   "runs": sum(len(s) for s in per_task), "baseline": ""}
            for name, e in stats.across_tasks(per_task).items():
                row.update(_estimate_columns(name, e))
            bases = [baseline_of(mcells, by_task[t]) for t in tasks] if column[-1] > 0 else []
            if bases and all(b is not None for b in bases):
                row["baseline"] = bases[0]["variant"]
                e = stats.probability_of_improvement(per_task, [scores[CellKey(*b[CELL])] for b in bases])
                row.update(_estimate_columns("poi", e))
            rows.append(row)
    return pd.DataFrame(rows)


def rival_table(cells: pd.DataFrame, scores: dict) -> pd.DataFrame:
    """Per family, the λ > 0 variant with the highest mean against each other λ > 0 variant:
    Δ mean with its CI (is the best λ told apart from the next ones?)."""
    rows = []
    for _, fam in cells[cells["lam"] > 0].groupby(FAMILY, sort=False):
        best = fam.loc[fam["mean"].idxmax()]
        for _, other in fam.drop(index=best.name).iterrows():
            e = stats.difference(scores[CellKey(*best[CELL])], scores[CellKey(*other[CELL])])
            rows.append({**{c: best[c] for c in CELL}, "variant": best["variant"], "other": other["variant"],
                         **_estimate_columns("diff", e)})
    return pd.DataFrame(rows, columns=[*CELL, "variant", "other", "diff", "diff_low", "diff_high"])


def build_study(uri: str, rule: ScoreRule, loaded: Loaded) -> Study:
    cells = cell_table(loaded.counted)
    scores = {CellKey(*key): in_seed_order(runs)["score"].to_numpy(dtype=float)
              for key, runs in loaded.counted.groupby(CELL, sort=False)}
    return Study(uri, rule, loaded, cells, comparison_table(cells, scores), aggregate_table(cells, scores),
                 rival_table(cells, scores))
