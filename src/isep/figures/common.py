"""What the figures share: a run's policy from its checkpoint, and matplotlib's object API."""

from __future__ import annotations

from pathlib import Path

from isep.errors import ConfigError


def load_policy(run_dir: str | Path, device: str = "cpu"):
    """The trained agent of a run folder (its `checkpoints/last.ckpt`; a stacked run's folder
    names its stack's checkpoint and its index), in evaluation mode."""
    from isep.module import ISEPModule
    from isep.runs import run_checkpoint

    ckpt, index = run_checkpoint(Path(run_dir))
    if not ckpt.is_file():
        raise ConfigError(f"no checkpoint at {ckpt}: the figure needs the run's trained policy (was the run folder moved?)")
    module = ISEPModule.load_from_checkpoint(ckpt, map_location=device)
    return (module.agent if index is None else module.agent.select_run(index)).eval()


def run_dirs(study) -> dict:
    """Cell key (`isep.results.analysis.CellKey`) → the run folders of its runs (the `run_dir` tag), in seed order."""
    return {key: list(study.cell_runs(key)["run_dir"]) for key in study.keys()}


def figure(nrows: int, ncols: int, width: float = 4.0, height: float = 3.6):
    """A Figure with an Agg canvas and its axes grid (no pyplot, no global backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)
