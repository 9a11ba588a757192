"""Lightning callbacks: the target EMA (contributed to the captured update), the divergence guard,
rollout evaluation, checkpoints, tracking (per-run routes, MLflow records) and Tune reports."""
