"""Checkpoints written before the agent split (isep ≤ 0.1, main up to e5b4f88) load as they are.

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
