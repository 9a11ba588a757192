"""`isep compare`: the runs in MLflow as a statistical report (report.md, CSVs, figures).

    isep compare --experiment hc-medrep-gaussian
    isep compare --experiment walker2d-medium-v2 --filter "tags.actor = 'flow'" --score last:3
    isep compare --filter "params.`model.expectile` = '0.7'" --reference paper

Read-only on the MLflow store. Bad input ends with one line `isep: error: ...` (exit 2), and
nothing is written: not into the store, and no --out folder is left behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Iterable, Sequence

from isep.errors import CompareError, ISEPError
from isep.results.frames import DEFAULT_METRIC, FALLBACK_METRIC, ScoreRule

SCORE_DEFAULT = "final"


class Parser(argparse.ArgumentParser):
    """argparse whose errors are `isep: error: ...` lines (exit 2), not usage dumps."""

    def error(self, message: str):
        hint = "; a run's score is now --score final | last:K | auc" if "--final" in message else ""
        raise CompareError(f"{message}{hint} (see `isep compare --help`)")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="isep compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", action="append", metavar="NAME",
                   help="experiment (task or sweep) name; repeat it or separate names by commas "
                   "(default: every experiment that has runs)")
    p.add_argument("--tracking_uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlflow.db in the working directory)")
    p.add_argument("--filter", default="", metavar="FILTER",
                   help="MLflow search filter, e.g. \"tags.actor = 'flow'\" or \"params.`model.expectile` = '0.7'\"")
    p.add_argument("--metric", default=DEFAULT_METRIC,
                   help=f"metric whose evaluations give the score (default: {DEFAULT_METRIC}; a run without it that has "
                   f"{FALLBACK_METRIC} (toy bandits) uses that, and the report says so)")
    p.add_argument("--score", default=SCORE_DEFAULT, metavar="final|last:K|auc",
                   help="a run's score: final = its last evaluation (default, the paper's), last:K = the mean of its last "
                   "K evaluations, auc = the mean of all its evaluations")
    p.add_argument("--include_unfinished", action="store_true",
                   help="also count runs that are not FINISHED (RUNNING, KILLED, FAILED) with their values so far; "
                   "by default only FINISHED runs count and the others are listed apart")
    p.add_argument("--reference", metavar="paper|FILE.csv",
                   help="print a reference table beside the measured cells of matching tasks: `paper` (the paper's "
                   "Tables 1-2, shipped with isep) or a CSV with columns task, method, score[, pm, table, label]")
    p.add_argument("--out", default="outputs/compare", type=Path,
                   help="folder for report.md, the CSVs and the figures (default: outputs/compare)")
    return p


def prepare_out_dir(out: Path) -> list[Path]:
    """Create `out` and prove it writable; returns the directories created (to undo on failure)."""
    if out.exists() and not out.is_dir():
        raise CompareError(f"the output directory {out} exists and is not a directory; pass another --out")
    missing, p = [], out.absolute()
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".isep-compare-probe-{os.getpid()}"
        probe.write_text("probe")
        probe.unlink()
    except OSError as err:
        remove_empty_dirs(reversed(missing))
        raise CompareError(f"cannot write to the output directory {out}: {err.strerror or err}; "
                           "pass a writable --out") from None
    return list(reversed(missing))


def remove_empty_dirs(dirs: Iterable[Path]) -> None:
    for d in reversed(list(dirs)):  # deepest first
        try:
            d.rmdir()
        except OSError:
            pass


def load_study(experiments: list[str] | None, tracking_uri: str | None = None, metric: str = DEFAULT_METRIC,
               score: str = SCORE_DEFAULT, filter_string: str = "", include_unfinished: bool = False):
    """The runs of `experiments` (None: all) read, scored and summarised (`analysis.Study`)."""
    from mlflow.exceptions import MlflowException

    from isep.results import store
    from isep.results.analysis import build_study
    from isep.results.frames import read_runs

    rule = ScoreRule.parse(score)
    uri = store.resolve_tracking_uri(tracking_uri)
    try:
        with store.open_store(uri) as client:
            exps = store.select_experiments(store.list_experiments(client), experiments)
            runs = store.search_runs(client, exps, filter_string)
            if not runs:
                scope = ", ".join(e.name for e in exps) if experiments else f"all {len(exps)} experiments"
                if filter_string:
                    raise CompareError(f"the filter {filter_string!r} matches no run in experiment(s): {scope}")
                raise CompareError(f"no runs in experiment(s): {scope} (tracking URI {uri})")
            loaded = read_runs(client, runs, {e.experiment_id: e.name for e in exps}, metric, rule, include_unfinished)
    except MlflowException as err:
        raise CompareError(f"MLflow ({uri}): {err.message.strip().splitlines()[0]}") from None
    except ISEPError:
        raise
    except Exception as err:  # e.g. a server that does not answer
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CompareError(f"cannot read the MLflow store {uri}: {type(err).__name__}: {first}") from None
    if loaded.counted.empty:
        unfinished = loaded.runs[loaded.runs["left_out"] == "unfinished"]
        detail = (f"no run is FINISHED ({', '.join(f'{k} {s}' for s, k in unfinished['status'].value_counts().items())}; "
                  "--include_unfinished counts them)" if len(unfinished) else
                  "; ".join(f"{r['run_name']}: {r['left_out']}" for _, r in loaded.runs.head(5).iterrows()))
        raise CompareError(f"no run can be compared: {detail}")
    return build_study(uri, rule, loaded)


def run_compare(args) -> str:
    """The report for parsed arguments; writes into --out (checked before the store is read)."""
    from isep.results.reference import load_reference
    from isep.results.report import Selection, write_report

    ScoreRule.parse(args.score)
    reference = load_reference(args.reference) if args.reference else None
    created = prepare_out_dir(args.out)
    try:
        study = load_study(args.experiment, args.tracking_uri, args.metric, args.score, args.filter,
                           args.include_unfinished)
        sel = Selection(sorted(set(study.counted["experiment"])), args.filter, args.metric, args.include_unfinished)
        return write_report(study, sel, args.out, reference)
    except BaseException:
        remove_empty_dirs(created)
        raise


def compare_main(argv: Sequence[str]) -> int:
    """`isep compare [options]`; returns 0, or 2 after printing `isep: error: ...` to stderr."""
    try:
        args = build_parser().parse_args(list(argv))
        report = run_compare(args)
    except ISEPError as err:
        print(f"isep: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # writing an output failed midway
        print(f"isep: error: cannot write the outputs to {args.out}: {err}", file=sys.stderr)
        return 2
    print(report)
    return 0
