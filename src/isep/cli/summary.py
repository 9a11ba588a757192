"""What `isep fit / validate / test` say at the start and at the end of a run (stderr, a few lines)."""

from __future__ import annotations

import sys

from lightning.pytorch.loggers import MLFlowLogger

from isep.callbacks.tracking import tracking_uri


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{seconds:.1f} s")


def planned_updates(trainer, datamodule) -> int | None:
    """Updates this fit will end at (`max_steps`, or `max_epochs` × updates per epoch, the smaller)."""
    ends = [trainer.max_steps] if trainer.max_steps and trainer.max_steps > 0 else []
    if trainer.max_epochs and trainer.max_epochs > 0:
        ends.append(trainer.max_epochs * datamodule.steps_per_epoch)
    return min(ends) if ends else None


def _mlflow_ids(module) -> list[str]:
    routes = module.routes
    return [lg.run_id for loggers in (routes.loggers if routes else []) for lg in loggers if isinstance(lg, MLFlowLogger)]


def print_start(cli) -> None:
    """`isep: fit …`: where the run lives, what trains, for how long, and where it is recorded."""
    module, trainer, plain = cli.model, cli.trainer, cli._cfg().as_dict()
    agent, total = module.agent, planned_updates(trainer, cli.datamodule)
    how = f"resuming {plain.get('ckpt_path')}" if cli.resuming else "a new run"
    what = f"{agent.runs} stacked runs" if agent.runs > 1 else f"λ = {float(agent.lam[0]):g}"
    if agent.actor_kind == "flow" and agent.draws_policy:  # the a_π draw (Eq. 7's sampler at its own w)
        drawing = zip(agent.config.draw_guidance(), agent.config.per_run("lam"))
        weights = sorted({f"{w:g}" for w, lam in drawing if float(lam) > 0})
        what += f" (a_π drawn at w = {', '.join(weights)}, {agent.config.draw_steps()} steps)"
    _say(f"isep: fit → {cli.claim.folder} ({how})")
    bf16 = plain["trainer"]["precision"] == "bf16-mixed"
    parts = f" ({module.hparams.bf16_parts} parts in bf16)" if bf16 else ""
    length = f", {total:,} updates" if total else ""
    _say(f"  {agent.actor_kind} actor, {what}, {plain['data']['dataset']}{length}; "
         f"precision {plain['trainer']['precision']}{parts}, {module.fast_mode(cli.trainer.strategy.root_device, total)} update")
    ids = _mlflow_ids(module)
    if ids:
        _say(f"  MLflow {tracking_uri(plain['mlflow']['tracking_uri'])}, run {', '.join(ids)}")


def print_summary(cli, seconds: float) -> None:
    """`isep: done …`: the run folder, MLflow run, updates, wall time and final score of each run."""
    module, trainer = cli.model, cli.trainer
    updates = trainer.global_step
    made = updates - getattr(module, "first_update", 0)  # this invocation's (a resume starts at its checkpoint)
    rate = f" ({made / seconds:,.1f} updates/s)" if seconds > 0 and made else ""
    _say(f"isep: done — {cli.claim.folder}")
    if made == 0 and updates:
        _say(f"  no update made: the run had already reached its end ({updates:,} updates)")
    else:
        since = f" ({made:,} in this fit)" if made != updates else ""
        _say(f"  {updates:,} updates{since}, {_duration(seconds)}{rate}")
    evaluations = [cb for cb in trainer.callbacks if hasattr(cb, "history") and hasattr(cb, "every")]
    history = evaluations[0].history if evaluations else []
    if history:
        last = history[-1]
        runs = last.get("runs", [last])
        for index, record in enumerate(runs):
            name = next(k for k in ("eval/normalized_score", "eval/expected_reward", "eval/score") if k in record)
            who = f"run {index}: " if len(runs) > 1 else ""
            failed = " (frozen: diverged)" if index in module.agent.failures and len(runs) > 1 else ""
            _say(f"  {who}final score {record[name]:.2f} ({name} at update {last['step']:,}){failed}")
    else:
        _say("  no evaluation (--evaluation.every 0)")
    ids = _mlflow_ids(module)
    if ids:
        _say(f"  MLflow run {', '.join(ids)}")


def print_eval_metrics(module, subcommand: str) -> None:
    """validate / test: each run's losses on the fixed batches (what Lightning's table would show)."""
    prefix = "val/" if subcommand == "validate" else "test/"
    per_run = getattr(module, "eval_metrics", [])
    if not per_run:
        _say(f"isep: {subcommand}: no batches were evaluated")
        return
    print(f"isep {subcommand}:")
    for index, metrics in enumerate(per_run):
        head = f"  run {index}" if len(per_run) > 1 else " "
        shown = "  ".join(f"{k[len(prefix):]} {v:.4g}" for k, v in metrics.items() if k.endswith(("loss", "q/mean", "v/mean")))
        print(f"{head} {shown}")
