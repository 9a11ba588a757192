"""Lightning callbacks: rollout evaluation, checkpoints, MLflow records.

The target-network EMA is part of the update itself (`ISEPModule.train_step`), so that the whole
update is one captured step.
"""
