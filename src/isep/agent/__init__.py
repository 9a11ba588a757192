"""The ISEP agent in plain PyTorch: networks, optimizers, losses, the update and the policy.

Nothing here imports Lightning: any training loop can drive `ISEPAgent` (`isep.module.ISEPModule`
is the Lightning shell around it).
"""

from isep.agent.agent import ISEPAgent
from isep.agent.config import POLICY_MIXES, STACK_FIELDS, AgentConfig, stack_length
from isep.agent.hooks import TargetEMAUpdate, UpdateHook

__all__ = ["POLICY_MIXES", "STACK_FIELDS", "AgentConfig", "ISEPAgent", "TargetEMAUpdate", "UpdateHook", "stack_length"]
