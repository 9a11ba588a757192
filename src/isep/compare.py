"""`isep compare`: the runs logged to MLflow, summarised in the layout of the paper's tables.

Reads the MLflow store (never writes to it), groups the runs by (task, actor, λ, policy_mix), takes
one final score per run from the history of one metric, and reports per group the mean ± std over
seeds: a Markdown table (one row per task, one column per variant, as in Tables 1-2), one line per
task naming the best variant and its margins, `table.md` / `table.csv`, `learning_curves.png` and
`score_vs_lambda.png` (Figure 5's form).

The schema it reads (one run per training run):
- experiment named by the dataset string; tags `task`, `actor` (gaussian | flow), `lam`,
  `policy_mix` (stochastic | deterministic), `seed`; params `model.lam`, `data.dataset`, ... are
  the fallbacks where a tag is missing;
- metrics with step = gradient updates done: `eval/normalized_score` (D4RL, 0-100), or on the toy
  bandits `eval/expected_reward`.

Lightning is never imported here (it costs ≈ 4.5 s); MLflow and matplotlib are imported lazily.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from isep.errors import ISEPError
from isep.sweeps.records import SWEEP_TAG

DEFAULT_METRIC = "eval/normalized_score"
FALLBACK_METRIC = "eval/expected_reward"  # what the toy bandits log instead of a normalized score
DEFAULT_STORE = "sqlite:///mlflow.db"
FINAL_MODES = {
    "last": "last logged value",
    "best": "best logged value",
    "mean_last_k": "mean of the last {k} logged values",
}
ACTOR_ORDER = {"gaussian": 0, "flow": 1}
MIX_ORDER = {"stochastic": 0, "deterministic": 1}
CSV_FIELDS = ("task", "actor", "lam", "policy_mix", "mean", "std", "n", "seeds", "metric", "label")


class CompareError(ISEPError, ValueError):
    """`isep compare` cannot produce its report; the message says why and what to do."""


# ----------------------------------------------------------------------------------------------
# Data model


@dataclass
class RunResult:
    run_id: str
    name: str
    experiment: str
    status: str
    task: str
    actor: str
    lam: float
    policy_mix: str
    seed: str
    metric: str
    steps: list[int]
    values: list[float]
    final: float
    run_dir: str | None = None  # the run's folder (tag `run_dir`): its checkpoints and records


@dataclass(frozen=True)
class GroupKey:
    metric: str
    task: str
    actor: str
    lam: float
    policy_mix: str


@dataclass
class Group:
    key: GroupKey
    runs: list[RunResult] = field(default_factory=list)

    @property
    def finals(self) -> list[float]:
        return [r.final for r in self.runs]

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def mean(self) -> float:
        return sum(self.finals) / self.n

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (ddof = 1); NaN for a single run."""
        if self.n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((x - m) ** 2 for x in self.finals) / (self.n - 1))

    @property
    def seeds(self) -> list[str]:
        return sorted((r.seed for r in self.runs), key=seed_sort_key)

    @property
    def label(self) -> str:
        return variant_label(self.key.actor, self.key.lam, self.key.policy_mix)


def seed_sort_key(seed: str):
    """Seeds in numeric order (then any that are not numbers)."""
    try:
        return (0, int(seed), seed)
    except ValueError:
        return (1, 0, seed)


def fmt_lam(lam: float) -> str:
    return f"{lam:g}"


def variant_label(actor: str, lam: float, policy_mix: str) -> str:
    """The paper's names: IQL / CFGRL at λ = 0, ISEP / ISEP-FM above; ` det.` for the ablation."""
    if actor == "flow":
        label = "CFGRL (λ=0)" if lam == 0 else f"ISEP-FM λ={fmt_lam(lam)}"
    elif actor == "gaussian":
        label = "IQL (λ=0)" if lam == 0 else f"ISEP λ={fmt_lam(lam)}"
    else:
        label = f"{actor} λ={fmt_lam(lam)}"
    return label + (" det." if policy_mix == "deterministic" else "")


def line_label(actor: str, policy_mix: str) -> str:
    name = {"flow": "ISEP-FM", "gaussian": "ISEP"}.get(actor, actor)
    return name + (" det." if policy_mix == "deterministic" else "")


def column_order(key: GroupKey):
    return (ACTOR_ORDER.get(key.actor, 9), key.actor, key.lam, MIX_ORDER.get(key.policy_mix, 9), key.policy_mix)


# ----------------------------------------------------------------------------------------------
# Arguments, output directory, store


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="isep compare",
        description="Compare the runs logged to MLflow: mean ± std over seeds per (task, actor, λ, policy_mix), "
        "the best λ per task, learning curves and score against λ. Read-only on the MLflow store.",
    )
    p.add_argument("--experiment", action="append", metavar="NAME",
                   help="experiment (task) name; repeat it or separate names by commas "
                   "(default: every experiment that has runs)")
    p.add_argument("--tracking_uri",
                   help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else {DEFAULT_STORE} in the working directory)")
    p.add_argument("--filter", default="", metavar="FILTER",
                   help="MLflow search filter, e.g. \"tags.actor = 'flow'\" or \"params.`model.tau` = '0.7'\"")
    p.add_argument("--metric", default=DEFAULT_METRIC,
                   help=f"metric whose history gives the score (default: {DEFAULT_METRIC}; a run without it "
                   f"that has {FALLBACK_METRIC} (toy bandits) uses that, and the output says so)")
    p.add_argument("--final", choices=sorted(FINAL_MODES), default="last",
                   help="a run's score: its last logged value (default), its best, or the mean of its last --k")
    p.add_argument("--k", type=int, default=3, help="how many last values --final mean_last_k averages (default 3)")
    p.add_argument("--include_unfinished", action="store_true",
                   help="also count runs that are not FINISHED (RUNNING, KILLED, FAILED) with their values so far; "
                   "by default only FINISHED runs count and the others are listed apart")
    p.add_argument("--out", default="outputs/compare", type=Path,
                   help="directory for table.md, table.csv, learning_curves.png, score_vs_lambda.png "
                   "(default: outputs/compare)")
    return p


def prepare_out_dir(out: Path) -> list[Path]:
    """Create `out` and prove it writable; returns the directories created (to undo on failure)."""
    if out.exists() and not out.is_dir():
        raise CompareError(f"the output directory {out} exists and is not a directory; pass another --out")
    missing = []
    p = out.absolute()
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".isep-compare-probe-{os.getpid()}"
        with open(probe, "w") as fh:
            fh.write("probe")
        probe.unlink()
    except OSError as err:
        remove_empty_dirs(reversed(missing))
        reason = err.strerror or str(err)
        raise CompareError(f"cannot write to the output directory {out}: {reason}; pass a writable --out") from None
    return list(reversed(missing))


def remove_empty_dirs(dirs: Iterable[Path]) -> None:
    for d in reversed(list(dirs)):  # deepest first
        try:
            d.rmdir()
        except OSError:
            pass


def resolve_tracking_uri(arg: str | None) -> str:
    uri = arg or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_STORE
    local = local_store_path(uri)
    if local is not None and not local.exists():
        where = "" if arg else " (from $MLFLOW_TRACKING_URI)" if os.environ.get("MLFLOW_TRACKING_URI") else \
            " (the default: run from the directory holding mlflow.db, or pass --tracking_uri)"
        raise CompareError(f"no MLflow store at {local.absolute()} for tracking URI {uri}{where}")
    return uri


def local_store_path(uri: str) -> Path | None:
    """The file or directory a local tracking URI points at (None for servers and databases)."""
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///"):].split("?", 1)[0]
        return None if path in ("", ":memory:") else Path(path)
    if uri.startswith("file://"):
        return Path(uri[len("file://"):])
    if "://" not in uri and ":" not in uri[:2]:
        return Path(uri)  # a bare path is MLflow's file store
    return None


def check_sqlite_store(path: Path, uri: str) -> None:
    """Refuse a sqlite file that MLflow would write to when opening it: MLflow creates (migrates) the
    tables of a database that lacks some, and re-creates a missing default experiment. Checked
    through a read-only connection with MLflow's own table test."""
    import sqlite3

    import sqlalchemy
    from mlflow.store.db.utils import _all_tables_exist
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    ro = path.absolute().as_uri() + "?mode=ro"
    engine = sqlalchemy.create_engine("sqlite://", creator=lambda: sqlite3.connect(ro, uri=True),
                                      poolclass=sqlalchemy.pool.NullPool)
    try:
        if not _all_tables_exist(engine):
            raise CompareError(
                f"{path.absolute()} ({uri}) is not an MLflow store of this MLflow version (tables are missing); "
                "compare never creates or migrates tables — if it is an older store, upgrade it yourself with "
                f"`mlflow db upgrade {uri}`"
            )
        with engine.connect() as con:
            default = con.execute(sqlalchemy.text("SELECT 1 FROM experiments WHERE experiment_id = :i"),
                                  {"i": int(SqlAlchemyStore.DEFAULT_EXPERIMENT_ID)}).first()
        if default is None:
            raise CompareError(f"the MLflow store {uri} has no default experiment (id 0); MLflow would re-create it on "
                               "opening the store, and compare does not write to the store")
    except sqlalchemy.exc.DBAPIError as err:
        raise CompareError(f"{path.absolute()} ({uri}) is not a readable MLflow sqlite store: {err.orig}") from None
    finally:
        engine.dispose()


def open_client(uri: str):
    from mlflow.tracking import MlflowClient

    local = local_store_path(uri)
    if uri.startswith("sqlite:///") and local is not None:
        check_sqlite_store(local, uri)
    return MlflowClient(tracking_uri=uri)


def paged(fetch) -> list:
    """Every page of an MLflow search: `fetch(page_token)` returns one page (with `.token`)."""
    out, token = [], None
    while True:
        page = fetch(token)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


def list_experiments(client) -> list:
    from mlflow.entities import ViewType

    return paged(lambda t: client.search_experiments(view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=t))


def select_experiments(all_exps: list, requested: list[str] | None) -> list:
    if not requested:
        return sorted(all_exps, key=lambda e: e.name)
    by_name = {e.name: e for e in all_exps}
    names: list[str] = []
    for item in requested:
        parts = [item] if item in by_name else [s.strip() for s in item.split(",") if s.strip()]
        names.extend(p for p in parts if p not in names)
    unknown = [n for n in names if n not in by_name]
    if unknown:
        known = ", ".join(sorted(by_name)) or "(none)"
        raise CompareError(f"unknown experiment {', '.join(repr(n) for n in unknown)}; known experiments: {known}")
    return [by_name[n] for n in names]


def search_runs(client, exps: list, filter_string: str) -> list:
    from mlflow.entities import ViewType

    ids = [e.experiment_id for e in exps]
    return paged(lambda t: client.search_runs(ids, filter_string=filter_string, run_view_type=ViewType.ACTIVE_ONLY,
                                               max_results=1000, page_token=t))


# ----------------------------------------------------------------------------------------------
# Runs → results


def _tag_or_param(run, tag: str, *params: str) -> str | None:
    value = run.data.tags.get(tag)
    if value not in (None, ""):
        return value
    for p in params:
        value = run.data.params.get(p)
        if value not in (None, ""):
            return value
    return None


def run_name(run) -> str:
    return run.info.run_name or run.data.tags.get("mlflow.runName") or run.info.run_id[:8]


def final_score(values: list[float], mode: str, k: int) -> float:
    if mode == "last":
        return values[-1]
    if mode == "best":
        finite = [v for v in values if not math.isnan(v)]
        return max(finite) if finite else math.nan
    tail = values[-k:]
    return sum(tail) / len(tail)


def sorted_history(history) -> tuple[list[int], list[float]]:
    """Values ordered by step (then time); a step logged twice keeps its latest value."""
    by_step: dict[int, float] = {}
    for m in sorted(history, key=lambda m: (m.step, m.timestamp)):
        by_step[int(m.step)] = float(m.value)
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


@dataclass
class Collected:
    results: list[RunResult]
    not_counted: dict[str, list]  # status → runs left out of the table
    skipped: list[str]  # notes on counted runs that could not be used
    fallback_tasks: dict[str, set]  # metric used instead of the requested one → tasks


def collect(client, runs: list, exp_names: dict[str, str], args) -> Collected:
    counted, not_counted = [], {}
    for run in runs:
        if SWEEP_TAG in run.data.tags:  # a sweep's parent run: bookkeeping; its trials are the runs
            continue
        status = run.info.status
        if status == "FINISHED" or args.include_unfinished:
            counted.append(run)
        else:
            not_counted.setdefault(status, []).append(run)

    skipped: list[str] = []
    missing_metric = []
    fallback_tasks: dict[str, set] = {}
    results: list[RunResult] = []
    for run in counted:
        name, exp = run_name(run), exp_names.get(run.info.experiment_id, run.info.experiment_id)
        task = _tag_or_param(run, "task", "data.dataset") or exp
        actor = _tag_or_param(run, "actor", "model.actor")
        lam_s = _tag_or_param(run, "lam", "model.lam")
        if actor is None or lam_s is None:
            skipped.append(f"{name} ({run.info.run_id[:8]}, {exp}): no `actor`/`lam` tag — not an isep training run")
            continue
        try:
            lam = float(lam_s)
        except ValueError:
            skipped.append(f"{name} ({run.info.run_id[:8]}, {exp}): tag lam = {lam_s!r} is not a number")
            continue
        policy_mix = _tag_or_param(run, "policy_mix", "model.policy_mix") or "stochastic"
        seed = _tag_or_param(run, "seed", "seed_everything", "seed") or "?"

        metric = args.metric
        if metric not in run.data.metrics:
            if args.metric == DEFAULT_METRIC and FALLBACK_METRIC in run.data.metrics:
                metric = FALLBACK_METRIC
                fallback_tasks.setdefault(metric, set()).add(task)
            elif run.info.status == "FINISHED":
                missing_metric.append(run)
                continue
            else:
                skipped.append(f"{name} ({run.info.run_id[:8]}, {run.info.status}): no {args.metric} logged yet")
                continue
        steps, values = sorted_history(client.get_metric_history(run.info.run_id, metric))
        if not values:
            skipped.append(f"{name} ({run.info.run_id[:8]}): empty history of {metric}")
            continue
        results.append(RunResult(run.info.run_id, name, exp, run.info.status, task, actor, lam, policy_mix, seed,
                                 metric, steps, values, final_score(values, args.final, args.k),
                                 run.data.tags.get("run_dir")))

    if missing_metric:
        shown = []
        for run in missing_metric[:5]:
            evals = sorted(k for k in run.data.metrics if k.startswith("eval/")) or sorted(run.data.metrics)[:5]
            has = ", ".join(evals) if evals else "no metrics"
            shown.append(f"{run_name(run)} ({run.info.run_id[:8]}; has {has})")
        more = f" and {len(missing_metric) - 5} more" if len(missing_metric) > 5 else ""
        alt = f" or {FALLBACK_METRIC}" if args.metric == DEFAULT_METRIC else ""
        raise CompareError(
            f"{len(missing_metric)} FINISHED run(s) have no metric {args.metric!r}{alt}: {'; '.join(shown)}{more}. "
            "Pass --metric with a metric they logged, or leave them out with --filter."
        )
    if not results:
        statuses = ", ".join(f"{len(rs)} {st}" for st, rs in sorted(not_counted.items()))
        detail = "; ".join(skipped[:5]) if skipped else \
            f"no run is FINISHED ({statuses}; --include_unfinished counts them)"
        raise CompareError(f"no run can be compared: {detail}")
    return Collected(results, not_counted, skipped, fallback_tasks)


def make_groups(results: list[RunResult]) -> dict[GroupKey, Group]:
    groups: dict[GroupKey, Group] = {}
    for r in results:
        key = GroupKey(r.metric, r.task, r.actor, r.lam, r.policy_mix)
        groups.setdefault(key, Group(key)).runs.append(r)
    return dict(sorted(groups.items(), key=lambda kv: (kv[0].metric != DEFAULT_METRIC, kv[0].metric, kv[0].task,
                                                        column_order(kv[0]))))


# ----------------------------------------------------------------------------------------------
# Report


def decimals_for(values: Iterable[float]) -> int:
    finite = [abs(v) for v in values if not math.isnan(v) and not math.isinf(v)]
    top = max(finite, default=0.0)
    return 1 if top >= 10 else 2 if top >= 1 else 3


def fmt_num(x: float, d: int) -> str:
    return "nan" if math.isnan(x) else f"{x:.{d}f}"


def fmt_cell(g: Group, d: int) -> str:
    if g.n < 2:
        return f"{fmt_num(g.mean, d)} (n=1)"
    return f"{fmt_num(g.mean, d)} ± {fmt_num(g.std, d)} (n={g.n})"


def by_metric(groups: dict[GroupKey, Group]) -> dict[str, list[Group]]:
    out: dict[str, list[Group]] = {}
    for g in groups.values():
        out.setdefault(g.key.metric, []).append(g)
    return out


def markdown_tables(groups: dict[GroupKey, Group], final_desc: str) -> tuple[str, dict[str, int]]:
    """One table per metric: a row per task, a column per variant; a mean-over-tasks row below."""
    blocks, decimals = [], {}
    for metric, gs in by_metric(groups).items():
        d = decimals_for(g.mean for g in gs)
        decimals[metric] = d
        columns: dict[tuple, str] = {}
        for g in sorted(gs, key=lambda g: column_order(g.key)):
            columns.setdefault(column_order(g.key), g.label)
        tasks = sorted({g.key.task for g in gs})
        cell = {(g.key.task, column_order(g.key)): g for g in gs}
        lines = [
            f"### {metric} — score of a run: {final_desc}; cells: mean ± std over seeds (n = seeds)",
            "",
            "| Task | " + " | ".join(columns.values()) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for task in tasks:
            cells = [fmt_cell(cell[(task, c)], d) if (task, c) in cell else "—" for c in columns]
            lines.append(f"| {task} | " + " | ".join(cells) + " |")
        if len(tasks) > 1:
            totals = []
            for c in columns:
                present = [cell[(t, c)].mean for t in tasks if (t, c) in cell]
                totals.append(fmt_num(sum(present) / len(present), d) if len(present) == len(tasks) else "—")
            lines.append("| mean over tasks | " + " | ".join(totals) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks), decimals


def _margin(a: Group, b: Group, d: int) -> str:
    diff = a.mean - b.mean
    text = f"{diff:+.{d}f} over {b.label}"
    noise = max((s for s in (a.std, b.std) if not math.isnan(s)), default=math.nan)
    if not math.isnan(noise) and abs(diff) < noise:
        text += " (within seed std)"
    return text


def best_lines(groups: dict[GroupKey, Group], decimals: dict[str, int], requested: str = DEFAULT_METRIC) -> list[str]:
    """Per task: the best variant, its margin over λ = 0 of the same actor and over the runner-up."""
    tasks: dict[tuple[str, str], list[Group]] = {}
    for g in groups.values():
        tasks.setdefault((g.key.metric, g.key.task), []).append(g)
    lines = []
    for (metric, task), gs in tasks.items():
        d = decimals[metric]
        ranked = sorted(gs, key=lambda g: (-g.mean if not math.isnan(g.mean) else math.inf, column_order(g.key)))
        best = ranked[0]
        head = f"{task}{f' [{metric}]' if metric != requested else ''}: "
        if len(ranked) == 1:
            lines.append(f"{head}only {best.label} = {fmt_cell(best, d)} (nothing to compare)")
            continue
        parts = [f"{head}best {best.label} = {fmt_cell(best, d)}"]
        second = ranked[1]
        if best.key.lam != 0:
            same = [g for g in gs if g.key.actor == best.key.actor and g.key.lam == 0]
            base = next((g for g in same if g.key.policy_mix == best.key.policy_mix), same[0] if same else None)
            if base is None:
                parts.append(f"no λ=0 run of the {best.key.actor} actor")
            elif base is not second:
                parts.append(_margin(best, base, d))
        parts.append(_margin(best, second, d))
        lines.append(", ".join(parts))
    return lines


def csv_rows(groups: dict[GroupKey, Group], decimals: dict[str, int]) -> list[dict]:
    rows = []
    for g in groups.values():
        rows.append({
            "task": g.key.task, "actor": g.key.actor, "lam": fmt_lam(g.key.lam), "policy_mix": g.key.policy_mix,
            "mean": repr(g.mean), "std": "" if math.isnan(g.std) else repr(g.std), "n": g.n,
            "seeds": ";".join(g.seeds), "metric": g.key.metric, "label": g.label,
        })
    return rows


def duplicate_seed_notes(groups: dict[GroupKey, Group]) -> list[str]:
    notes = []
    for g in groups.values():
        seen: dict[str, int] = {}
        for s in g.seeds:
            seen[s] = seen.get(s, 0) + 1
        dups = [s for s, c in seen.items() if c > 1]
        if dups:
            notes.append(f"{g.key.task} {g.label}: several runs with seed {', '.join(dups)} (all counted)")
    return notes


def uneven_length_notes(groups: dict[GroupKey, Group]) -> list[str]:
    """Runs of one group that stopped at different update counts are scored at different lengths."""
    notes = []
    for g in groups.values():
        ends = sorted({r.steps[-1] for r in g.runs})
        if len(ends) > 1:
            notes.append(f"{g.key.task} {g.label}: its runs end at different steps ({ends[0]}–{ends[-1]}); "
                         "their scores come from different training lengths")
    return notes


# ----------------------------------------------------------------------------------------------
# Figures (matplotlib's object API with the Agg canvas: no pyplot, no global backend switch)


def _figure(panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(3, panels)
    nrows = math.ceil(panels / ncols)
    width, height = 5.0 * ncols, 3.6 * nrows + 0.4
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    # fixed margins in inches: constrained layout would double the drawing time
    fig.subplots_adjust(left=0.8 / width, right=1 - 0.2 / width, bottom=0.6 / height, top=1 - 0.75 / height,
                        wspace=0.3, hspace=0.45)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes


def mean_curve(runs: list[RunResult]):
    """Mean and std over seeds on the union of the runs' steps; each run is linearly interpolated
    inside its own step range and left out beyond it (no extrapolation)."""
    import numpy as np

    grid = np.array(sorted({s for r in runs for s in r.steps}), dtype=float)
    rows = []
    for r in runs:
        x, y = np.asarray(r.steps, dtype=float), np.asarray(r.values, dtype=float)
        row = np.interp(grid, x, y)
        row[(grid < x[0]) | (grid > x[-1])] = np.nan
        rows.append(row)
    m = np.asarray(rows)
    count = (~np.isnan(m)).sum(axis=0)
    mean = np.nansum(m, axis=0) / np.maximum(count, 1)
    var = np.nansum((m - mean) ** 2, axis=0) / np.maximum(count - 1, 1)
    std = np.where(count > 1, np.sqrt(var), 0.0)
    return grid, mean, std


def plot_learning_curves(groups: dict[GroupKey, Group], path: Path) -> None:
    panels: dict[tuple[str, str], list[Group]] = {}
    for g in groups.values():
        panels.setdefault((g.key.metric, g.key.task), []).append(g)
    fig, axes = _figure(len(panels))
    colors = _colors(groups)
    for ax, ((metric, task), gs) in zip(axes, panels.items()):
        for g in gs:
            x, mean, std = mean_curve(g.runs)
            c = colors[column_order(g.key)]
            ax.plot(x, mean, color=c, label=f"{g.label} (n={g.n})", marker="." if len(x) < 30 else None)
            ax.fill_between(x, mean - std, mean + std, color=c, alpha=0.2, linewidth=0)
        ax.set_title(task)
        ax.set_xlabel("gradient updates")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle("mean over seeds ± std")
    fig.savefig(path, dpi=100)


def plot_score_vs_lambda(groups: dict[GroupKey, Group], final_desc: str, path: Path) -> None:
    panels: dict[tuple[str, str], list[Group]] = {}
    for g in groups.values():
        panels.setdefault((g.key.metric, g.key.task), []).append(g)
    fig, axes = _figure(len(panels))
    for ax, ((metric, task), gs) in zip(axes, panels.items()):
        lines: dict[tuple[str, str], list[Group]] = {}
        for g in sorted(gs, key=lambda g: column_order(g.key)):
            lines.setdefault((g.key.actor, g.key.policy_mix), []).append(g)
        for (actor, mix), lg in lines.items():
            lg.sort(key=lambda g: g.key.lam)
            ax.errorbar([g.key.lam for g in lg], [g.mean for g in lg],
                        yerr=[0.0 if math.isnan(g.std) else g.std for g in lg],
                        marker="o", capsize=4, linestyle="--" if mix == "deterministic" else "-",
                        label=line_label(actor, mix))
        ax.set_title(task)
        ax.set_xlabel("λ")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"final score against λ\n({final_desc}; mean ± std over seeds)")
    fig.savefig(path, dpi=100)


def _colors(groups: dict[GroupKey, Group]) -> dict[tuple, str]:
    keys = sorted({column_order(k) for k in groups})
    palette = [f"C{i}" for i in range(10)]
    return {k: palette[i % len(palette)] for i, k in enumerate(keys)}


# ----------------------------------------------------------------------------------------------
# Entry point


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def run_compare(args) -> str:
    if args.k < 1:
        raise CompareError(f"--k must be at least 1, got {args.k}")
    final_desc = FINAL_MODES[args.final].format(k=args.k)
    created = prepare_out_dir(args.out)  # before any work: fail fast on an unwritable --out
    try:
        return _run_compare(args, final_desc)
    except BaseException:
        remove_empty_dirs(created)
        raise


def load(args) -> tuple[str, Collected, dict[str, str]]:
    """(tracking URI, the collected runs, experiment id → name) for parsed `isep compare` args."""
    uri = resolve_tracking_uri(args.tracking_uri)
    from mlflow.exceptions import MlflowException

    try:
        client = open_client(uri)
        all_exps = list_experiments(client)
        exps = select_experiments(all_exps, args.experiment)
        runs = search_runs(client, exps, args.filter)
        exp_names = {e.experiment_id: e.name for e in exps}
        if not runs:
            scope = ", ".join(e.name for e in exps) if args.experiment else f"all {len(exps)} experiments"
            if args.filter:
                raise CompareError(f"the filter {args.filter!r} matches no run in experiment(s): {scope}")
            raise CompareError(f"no runs in experiment(s): {scope} (tracking URI {uri})")
        return uri, collect(client, runs, exp_names, args), exp_names
    except MlflowException as err:
        raise CompareError(f"MLflow ({uri}): {err.message}") from None
    except CompareError:
        raise
    except Exception as err:  # e.g. a server that does not answer
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CompareError(f"cannot read the MLflow store {uri}: {type(err).__name__}: {first}") from None


def load_groups(experiment: str, tracking_uri: str | None = None, metric: str = DEFAULT_METRIC,
                final: str = "last") -> dict[GroupKey, Group]:
    """The FINISHED runs of one experiment, grouped as `isep compare` groups them (for figures)."""
    args = build_parser().parse_args(["--experiment", experiment, "--metric", metric, "--final", final]
                                     + (["--tracking_uri", tracking_uri] if tracking_uri else []))
    return make_groups(load(args)[1].results)


def _run_compare(args, final_desc: str) -> str:
    uri, collected, exp_names = load(args)
    groups = make_groups(collected.results)
    table, decimals = markdown_tables(groups, final_desc)
    best = best_lines(groups, decimals, args.metric)

    used_exps = sorted({r.experiment for r in collected.results})
    statuses = "FINISHED run" if not args.include_unfinished else "run"
    head = [f"isep compare — {uri}: {_plural(len(collected.results), statuses)} counted in "
            f"{_plural(len(used_exps), 'experiment')}, {_plural(len(groups), 'group')}"
            + (f"; filter: {args.filter}" if args.filter else "")]
    metrics_used = list(by_metric(groups))
    if args.metric == DEFAULT_METRIC and collected.fallback_tasks:
        for m, tasks in collected.fallback_tasks.items():
            head.append(f"metric: {m} for {', '.join(sorted(tasks))} (those runs have no {DEFAULT_METRIC})"
                        + (f"; {DEFAULT_METRIC} elsewhere" if DEFAULT_METRIC in metrics_used else ""))
    else:
        head.append(f"metric: {', '.join(metrics_used)}")
    if args.include_unfinished:
        other = sorted({r.status for r in collected.results} - {"FINISHED"})
        if other:
            counts = ", ".join(f"{sum(r.status == s for r in collected.results)} {s}" for s in other)
            head.append(f"counted although not FINISHED (--include_unfinished): {counts}")

    notes = []
    for status, rs in sorted(collected.not_counted.items(), key=lambda kv: kv[0] != "FAILED"):
        listed = "; ".join(_describe(r, exp_names) for r in rs[:10]) + (" ..." if len(rs) > 10 else "")
        notes.append(f"not counted: {_plural(len(rs), status + ' run')} ({listed}); --include_unfinished counts them")
    if collected.skipped:
        shown = "; ".join(collected.skipped[:5]) + (f"; and {len(collected.skipped) - 5} more" if len(collected.skipped) > 5 else "")
        notes.append(f"skipped {_plural(len(collected.skipped), 'run')}: {shown}")
    notes += duplicate_seed_notes(groups)
    notes += uneven_length_notes(groups)

    write_outputs(args.out, table, best, head, notes, groups, decimals, final_desc)
    files = "table.md, table.csv, learning_curves.png, score_vs_lambda.png"
    parts = ["\n".join(head), table, "Best variant per task:\n" + "\n".join(best)]
    if notes:
        parts.append("\n".join(notes))
    parts.append(f"wrote {files} to {args.out}")
    return "\n\n".join(parts)


def _describe(run, exp_names: dict[str, str]) -> str:
    tags = run.data.tags
    what = " ".join(x for x in (tags.get("task") or exp_names.get(run.info.experiment_id, ""),
                                 tags.get("actor"), f"λ={tags['lam']}" if "lam" in tags else None,
                                 f"seed {tags['seed']}" if "seed" in tags else None) if x)
    reason = tags.get("failure_reason")
    why = f": {reason.splitlines()[0][:160]}" if reason else ""
    return f"{run_name(run)} [{run.info.run_id[:8]}] {what}{why}".strip()


def write_outputs(out: Path, table: str, best: list[str], head: list[str], notes: list[str],
                  groups: dict[GroupKey, Group], decimals: dict[str, int], final_desc: str) -> None:
    md = "\n\n".join(["  \n".join(head), table, "Best variant per task:\n\n"
                      + "\n".join(f"- {b}" for b in best)] + (["\n".join(f"- {n}" for n in notes)] if notes else []))
    (out / "table.md").write_text(md + "\n", encoding="utf-8")
    with open(out / "table.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(csv_rows(groups, decimals))
    plot_learning_curves(groups, out / "learning_curves.png")
    plot_score_vs_lambda(groups, final_desc, out / "score_vs_lambda.png")


def compare_main(argv: Sequence[str]) -> int:
    """`isep compare [options]`; returns 0, or 2 after printing `isep: error: ...` to stderr."""
    args = build_parser().parse_args(list(argv))
    try:
        report = run_compare(args)
    except ISEPError as err:
        print(f"isep: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # writing an output failed midway
        print(f"isep: error: cannot write the outputs to {args.out}: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(compare_main(sys.argv[1:]))
