"""Checkpoints load as they were meant: older layouts, and fits that `max_steps` stopped.

Checkpoints written before the agent split (isep ≤ 0.1, main up to e5b4f88) load as they are.

Then the module held the networks itself (keys `critic.…`, `lam`, …), the Adam moments lived in the
optimizers' state, and frozen runs sat in `isep_failures`. Now the module holds an `ISEPAgent`
(keys `agent.…`) whose state carries the moments and the frozen runs. `upgrade_checkpoint` rewrites
such a checkpoint's dictionary in place (Lightning's `on_load_checkpoint`, before the state loads);
a current checkpoint passes unchanged.
"""

from __future__ import annotations

from isep.agent.agent import NETWORKS

PREFIX = "agent."


def is_legacy(checkpoint: dict) -> bool:
    state = checkpoint.get("state_dict") or {}
    return bool(state) and not any(k.startswith(PREFIX) for k in state)


def upgrade_checkpoint(checkpoint: dict) -> dict:
    """The checkpoint in today's layout (the same dictionary, changed in place)."""
    if not is_legacy(checkpoint):
        return checkpoint
    state = {PREFIX + k: v for k, v in checkpoint["state_dict"].items()}
    for name, optimizer in zip(NETWORKS, checkpoint.get("optimizer_states") or []):
        for index, moments in (optimizer.get("state") or {}).items():
            state[f"{PREFIX}moments.{name}.exp_avg_{index}"] = moments["exp_avg"]
            state[f"{PREFIX}moments.{name}.exp_avg_sq_{index}"] = moments["exp_avg_sq"]
    state[f"{PREFIX}_extra_state"] = {"failures": dict(checkpoint.get("isep_failures") or {}), "schedule_total": None}
    checkpoint["state_dict"] = state
    return checkpoint


def reopen_stopped_epoch(checkpoint: dict, iteration_based: bool) -> dict:
    """A fit that `max_steps` stopped inside an epoch, or at its last batch, wrote its last checkpoint
    after Lightning counted that epoch as processed but not completed. Resumed with a `max_steps`
    (Lightning 2.6 then restarts "on the epoch's end"), the epoch is counted a second time: a resume
    to a larger `max_steps` ended after 1 more update, or at the end of the unfinished epoch, with
    `max_epochs` seemingly reached. Here the epoch is either completed (all its batches ran: the
    resume starts the next one) or reopened (the resume finishes it). Changed in place; a checkpoint
    of a completed epoch, or a resume by epochs alone (which Lightning reads right), passes as it is.
    """
    loop = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    epochs, batches = loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")
    if not iteration_based or not epochs or not batches or epochs["total"]["processed"] <= epochs["total"]["completed"]:
        return checkpoint
    if batches.get("is_last_batch"):  # every batch of the epoch ran: it is complete
        for counts in (epochs["total"], epochs["current"]):
            counts["completed"] = counts["processed"]
        batches["current"] = {name: 0 for name in batches["current"]}
        batches["is_last_batch"] = False
    else:  # stopped inside the epoch: the resume finishes it
        for counts in (epochs["total"], epochs["current"]):
            counts["processed"] = counts["completed"]
    return checkpoint
