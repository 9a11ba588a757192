"""MLflow runs → pandas DataFrames: one row per run, one row per evaluation, and each run's score.

What it reads is what `isep fit` logs: tags `task`, `actor`, `lam`, `policy_mix`, `seed`, `run_dir`
(params `data.dataset`, `model.actor`, ... where a tag is missing); every resolved config value as
a param; evaluation metrics with step = gradient updates (`eval/normalized_score`, D4RL's 0-100,
or `eval/expected_reward` on the toy bandits).

Every run of the selection gets a row, and a row that does not count says why (`left_out`): not
FINISHED, not an isep training run, no evaluation of the metric, a score that is not a number, or
an older run of a seed that its cell already holds (a seed counts once: the newest run). Runs
that other runs are nested under (a sweep's parent run) are bookkeeping and get no row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from isep.errors import CompareError
from isep.results.store import metric_history
from isep.runs import ADDED, DRAW_SETTINGS, HASH_EXCLUDE, precision_name

DEFAULT_METRIC = "eval/normalized_score"
FALLBACK_METRIC = "eval/expected_reward"  # what the toy bandits log instead of a normalized score
# Params that can make two runs different variants: the model and data settings of the run's
# hash (`isep.runs`: not the performance switches), less those the cell key holds already.
KEY_PARAMS = {"model.lam", "model.seed", "model.actor", "model.policy_mix", "data.dataset"} | HASH_EXCLUDE
CELL = ["metric", "task", "actor", "settings", "policy_mix", "lam"]  # one cell: a variant on a task
ACTOR_ORDER = {"gaussian": 0, "flow": 1}
MIX_ORDER = {"stochastic": 0, "deterministic": 1, "weighted_sum": 2}
MIX_MARK = {"deterministic": " det.", "weighted_sum": " Eq. 26"}  # the ablations of Appendix B


@dataclass(frozen=True)
class ScoreRule:
    """A run's score from its evaluations (in step order): `final` (the paper's: the last one),
    `last:K` (the mean of the last K) or `auc` (the mean of all: the area under the learning
    curve per evaluation)."""

    kind: str
    k: int = 1

    @classmethod
    def parse(cls, text: str) -> "ScoreRule":
        if text in ("final", "auc"):
            return cls(text)
        head, _, k = text.partition(":")
        if head == "last" and k.isdigit() and int(k) >= 1:
            return cls("last", int(k))
        raise CompareError(f"--score {text!r}: use final (the last evaluation), last:K (the mean of the last K "
                           "evaluations, K ≥ 1) or auc (the mean of all evaluations)")

    @property
    def name(self) -> str:
        return f"last:{self.k}" if self.kind == "last" else self.kind

    def describe(self, most: int | None = None) -> str:
        """What a run's score is; `most`: the most evaluations any counted run has (said when
        `last:K` asks for more: the score is then the mean of all of them)."""
        last = f"last:{self.k} — the mean of each run's last {self.k} evaluations"
        if self.kind == "last" and most is not None and most < self.k:
            last = (f"last:{self.k} — but no run has more than {most} evaluation{'s' if most != 1 else ''}: "
                    f"the mean of all of each run's evaluations")
        return {"final": "final — each run's last evaluation (the paper's)", "last": last,
                "auc": "auc — the mean of all of each run's evaluations (area under its learning curve)"}[self.kind]

    def __call__(self, values: np.ndarray) -> float:
        if self.kind == "final":
            return float(values[-1])
        return float(np.mean(values[-self.k:] if self.kind == "last" else values))


@dataclass
class Loaded:
    runs: pd.DataFrame  # one row per run; `left_out` empty for the runs that count
    evaluations: pd.DataFrame  # one row per evaluation: run_id, metric, step, value
    fallback_tasks: dict[str, set] = field(default_factory=dict)  # metric used instead → its tasks

    @property
    def counted(self) -> pd.DataFrame:
        return self.runs[self.runs["left_out"] == ""]


def _tag_or_param(run, tag: str, *params: str) -> str | None:
    for value in (run.data.tags.get(tag), *(run.data.params.get(p) for p in params)):
        if value not in (None, ""):
            return value
    return None


def run_name(run) -> str:
    return run.info.run_name or run.data.tags.get("mlflow.runName") or run.info.run_id[:8]


def _row(run, experiment: str) -> dict:
    tags = run.data.tags
    row = {"run_id": run.info.run_id, "run_name": run_name(run), "experiment": experiment,
           "status": run.info.status, "start_time": run.info.start_time or 0,
           "task": _tag_or_param(run, "task", "data.dataset") or experiment,
           "actor": _tag_or_param(run, "actor", "model.actor"), "lam": math.nan,
           "policy_mix": _tag_or_param(run, "policy_mix", "model.policy_mix") or "stochastic",
           "seed": _tag_or_param(run, "seed", "seed_everything") or "?", "metric": "", "evaluations": 0,
           "last_step": -1, "score": math.nan, "run_dir": tags.get("run_dir") or "",
           "failure_reason": (tags.get("failure_reason") or "").split("\n")[0][:160], "left_out": "",
           "stacked": "isep.stack" in tags}
    row.update({k: v for k, v in run.data.params.items() if k.startswith(("model.", "data.")) and k not in KEY_PARAMS})
    return _precision_settings(row, run.data.params)


def _precision_settings(row: dict, params: dict) -> dict:
    """A run's precision is a setting of its variant (`trainer.precision`, 32-true for runs from
    before it had a default); the settings added since (`runs.ADDED`) take their defaults where a run
    lacks them, and `bf16_parts` means nothing in fp32 — so old and new fp32 runs are one variant."""
    row["trainer.precision"] = precision_name(params.get("trainer.precision"))
    for key, default in ADDED.items():
        row[key] = str(params.get(key, default))
        if key == "model.bf16_parts" and row["trainer.precision"] == "32-true":
            row[key] = str(default)
    return row


def read_runs(client, runs: list, exp_names: dict[str, str], metric: str, rule: ScoreRule,
              include_unfinished: bool) -> Loaded:
    """The rows of `runs` (MLflow `Run`s), their evaluations of `metric` and their scores."""
    parents = {r.data.tags.get("mlflow.parentRunId") for r in runs}
    rows, evals, fallback = [], [], {}
    for run in runs:
        if run.info.run_id in parents:  # a sweep's parent run: its trials are the runs
            continue
        row = _row(run, exp_names.get(run.info.experiment_id, run.info.experiment_id))
        rows.append(row)
        lam = _tag_or_param(run, "lam", "model.lam")
        if row["actor"] is None or lam is None:
            row["left_out"] = "not isep: no actor/lam tag — not an isep training run"
            continue
        try:
            row["lam"] = float(lam)
        except ValueError:
            row["left_out"] = f"not isep: tag lam = {lam!r} is not a number"
            continue
        used = metric
        if metric not in run.data.metrics and metric == DEFAULT_METRIC and FALLBACK_METRIC in run.data.metrics:
            used = FALLBACK_METRIC
            fallback.setdefault(used, set()).add(row["task"])
        if row["status"] != "FINISHED" and not include_unfinished:
            row["left_out"] = "unfinished"
        if used not in run.data.metrics:
            row["left_out"] = row["left_out"] or "no evaluations"
            continue
        row["metric"] = used
        history = metric_history(client, run.info.run_id, used)
        evals += [(run.info.run_id, used, step, value) for step, value in history]
        values = np.array([v for _, v in history], dtype=float)
        row.update(evaluations=len(values), last_step=history[-1][0] if history else -1,
                   score=rule(values) if len(values) else math.nan)
        if not row["left_out"] and not math.isfinite(row["score"]):
            row["left_out"] = "not finite" if len(values) else "no evaluations"
    if not rows:
        raise CompareError("the selection holds only runs that other runs are nested under (a sweep's parent "
                           "run): nothing to compare yet")
    frame = pd.DataFrame(rows)
    _check_metric(frame, metric)
    frame = _mark_duplicate_seeds(_add_settings(frame))
    evaluations = pd.DataFrame(evals, columns=["run_id", "metric", "step", "value"])
    return Loaded(frame, evaluations, fallback)


def _check_metric(frame: pd.DataFrame, metric: str) -> None:
    """A metric that no training run has is a mistake in --metric, not a run to leave out."""
    isep = frame[~frame["left_out"].str.startswith("not isep")]
    if len(isep) and not (isep["metric"] != "").any():
        where = f"({len(isep)} isep training run(s) in {', '.join(sorted(set(isep['experiment'])))})"
        if metric == DEFAULT_METRIC:  # neither it nor the toy bandits' fallback: no evaluation at all
            raise CompareError(f"no run has an evaluation ({DEFAULT_METRIC} or {FALLBACK_METRIC}) {where}: they were "
                               "trained with --evaluation.every 0 or stopped before their first; score their checkpoints "
                               "with `isep evaluate --ckpt_path RUN`, or pass --metric with a training metric "
                               "(e.g. train/critic/loss)")
        raise CompareError(f"no run has the metric {metric!r} {where}: pass --metric with one they logged, "
                           f"e.g. {DEFAULT_METRIC}")


def without_draw(settings: str) -> str:
    """A `settings` label without the draw settings (`isep.runs.DRAW_SETTINGS`): what a λ = 0 run,
    the baseline of every draw setting, is matched on."""
    return ", ".join(part for part in settings.split(", ") if part and not part.startswith(tuple(f"{d}=" for d in DRAW_SETTINGS)))


def _add_settings(frame: pd.DataFrame) -> pd.DataFrame:
    """`settings`: the params whose values differ between the runs of one task and actor (a τ or β
    swept beside λ), as `name=value` — what makes their variants different beyond λ and the mix.
    A λ = 0 run's label leaves out the a_π draw's settings (`DRAW_SETTINGS`), which it ignores."""
    frame = frame.assign(settings="")
    params = [c for c in frame.columns if c.startswith(("model.", "data.", "trainer."))]
    ok = frame["left_out"] == ""
    for _, rows in frame[ok].groupby(["metric", "task", "actor"]):
        varying = [p for p in params if rows[p].astype(str).nunique(dropna=False) > 1]
        labels = rows[varying].astype(str).apply(
            lambda r: ", ".join(f"{p.split('.', 1)[1]}={v}" for p, v in r.items()), axis=1) if varying else ""
        frame.loc[rows.index, "settings"] = labels
        if varying:
            idle = rows.index[rows["lam"].astype(float) == 0]
            frame.loc[idle, "settings"] = frame.loc[idle, "settings"].map(without_draw)
    return frame


def _mark_duplicate_seeds(frame: pd.DataFrame) -> pd.DataFrame:
    """A seed counts once per cell: the newest run of it; older ones are left out (and said). A
    stacked and a separate run of one seed are said apart: they are not a re-run of one computation
    (a stack equals its runs alone only within float rounding, and training lets the gap grow)."""
    ok = frame[frame["left_out"] == ""].sort_values("start_time")
    older = ok[ok.duplicated(CELL + ["seed"], keep="last")]
    for index, row in older.iterrows():
        newest = ok[(ok[CELL + ["seed"]] == row[CELL + ["seed"]]).all(axis=1)].iloc[-1]
        how = ""
        if bool(row.get("stacked")) != bool(newest.get("stacked")):
            how = (f" (one ran in a stack, the other alone: the same settings, not the same computation; "
                   f"scores {row['score']:.4g} and {newest['score']:.4g})")
        frame.loc[index, "left_out"] = f"duplicate seed: newer run {newest['run_name']} [{newest['run_id'][:8]}] counts{how}"
    return frame


def seed_sort_key(seed: str):
    """Seeds in numeric order (then any that are not numbers)."""
    try:
        return (0, int(seed), seed)
    except ValueError:
        return (1, 0, seed)


def in_seed_order(runs: pd.DataFrame) -> pd.DataFrame:
    """The rows of `runs` sorted by `seed_sort_key` of their seed."""
    order = sorted(range(len(runs)), key=lambda i: seed_sort_key(runs["seed"].iloc[i]))
    return runs.iloc[order]


def variant_label(actor: str, lam: float, policy_mix: str, settings: str = "") -> str:
    """The paper's names: IQL / CFGRL at λ = 0, ISEP / ISEP-FM above; ` det.` / ` Eq. 26` for the ablations."""
    lam_s = f"{lam:g}"
    if actor == "flow":
        label = "CFGRL (λ=0)" if lam == 0 else f"ISEP-FM λ={lam_s}"
    elif actor == "gaussian":
        label = "IQL (λ=0)" if lam == 0 else f"ISEP λ={lam_s}"
    else:
        label = f"{actor} λ={lam_s}"
    return label + MIX_MARK.get(policy_mix, "") + (f" [{settings}]" if settings else "")


def column_order(actor: str, settings: str, policy_mix: str, lam: float) -> tuple:
    return (ACTOR_ORDER.get(actor, 9), actor, settings, lam, MIX_ORDER.get(policy_mix, 9), policy_mix)
