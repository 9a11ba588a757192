"""The ISEP agent in plain PyTorch: networks, optimizers, losses, the update and the policy.

Nothing here imports Lightning: any training loop can drive `ISEPAgent` (`isep.module.ISEPModule`
is the Lightning shell around it). The names load on first use, so that `isep.agent.config`
(settings, stack fields) is read without importing torch (`isep compare`, `isep data`).
"""

from __future__ import annotations

from importlib import import_module

_WHERE = {
    "ISEPAgent": "isep.agent.agent",
    "AgentConfig": "isep.agent.config",
    "POLICY_MIXES": "isep.agent.config",
    "STACK_FIELDS": "isep.agent.config",
    "stack_length": "isep.agent.config",
    "TargetEMAUpdate": "isep.agent.hooks",
    "UpdateHook": "isep.agent.hooks",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'isep.agent' has no attribute {name!r}")
