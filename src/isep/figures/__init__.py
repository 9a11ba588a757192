"""The paper's figures from MLflow runs: `isep figure fig2 | fig5 | fig6 | fig7`.

Each figure has a config in `configs/figures/` naming the sweep that produces its runs; the
command runs that sweep (resumable: finished trials are skipped) and draws the figure from the
sweep's MLflow experiment.
"""
