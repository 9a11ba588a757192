"""`isep demo`: the embedded default run (no download) — Figure 1 on the Section 4.5 bandit.

Trains a Gaussian actor (ISEP), ISEP-FM at λ = 0 (CFGRL) and ISEP-FM at λ > 0 from the configs in
`configs/toy/` through the same CLI, module and DataModule as every D4RL run, then draws the data,
the reward landscape and each policy's action samples, and writes the figures' numbers to JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "toy"
VARIANTS = (
    ("sparse_gaussian.yaml", "ISEP, Gaussian actor"),
    ("sparse_cfgrl.yaml", "λ = 0 (CFGRL)"),
    ("sparse_isep_fm.yaml", "ISEP-FM"),
)
SUBOPTIMUM = (-0.5, -0.5)
# What 5 seeds per setting said (docs/guides/policy-draw.md; one demo run is one seed).
MEASURED = """\
Measured over 5 seeds per setting (3,000 updates; E[r] of the final policy, mean [95 % bootstrap CI]):
  CFGRL (λ = 0)                        0.613 [0.572, 0.639]
  ISEP-FM λ 0.3, a_π drawn at w = 1    0.553 [0.512, 0.606]   vs CFGRL −0.060 [−0.114, +0.004], P(>) 0.28
  ISEP-FM λ 0.3, a_π drawn at w = 2    0.467 [0.440, 0.500]   vs CFGRL −0.146 [−0.188, −0.094], P(>) 0.00
  ISEP-FM λ 0.1, a_π drawn at w = 1    0.613 [0.489, 0.725]   vs CFGRL +0.000 [−0.125, +0.117], P(>) 0.56
The paper's Figure 1 claim (ISEP-FM above CFGRL on this bandit) does not reproduce here: no setting beats
CFGRL with a CI above 0. On halfcheetah medium (3 seeds, 20,000 updates, normalized score, last 3 evaluations):
  CFGRL 51.1 [50.9, 51.6]; ISEP-FM λ 0.3 drawn at w = 1: 52.9 [51.7, 55.0] (vs CFGRL +1.7 [+0.4, +3.8]);
  drawn at w = 2: 37.4 [30.8, 46.1] (−13.7 [−20.1, −5.1]). Commands and the full tables: docs/guides/policy-draw.md."""


def train_variant(config: Path, root: Path, extra: Sequence[str] = ()):
    """Fit one toy config through the real CLI; returns (model, datamodule, updates/s)."""
    from isep.cli import build_cli

    cli = build_cli(
        ["--config", str(config), "--trainer.default_root_dir", str(root / config.stem), *extra], run=False
    )
    start = time.perf_counter()
    cli.trainer.fit(cli.model, cli.datamodule)
    elapsed = time.perf_counter() - start
    return cli.model, cli.datamodule, cli.trainer.global_step / elapsed


def policy_summary(model, bandit, n: int = 2000) -> dict:
    """Expected reward of policy samples and the share of samples near each mode."""
    import torch

    torch.manual_seed(0)
    obs = torch.zeros(n, 1)
    actions = model.agent.act(obs, stochastic=True).cpu()
    reward = bandit.reward(actions)
    summary = {
        "expected_reward": reward.mean().item(),
        "share_near_optimum": bandit.share_near(actions).item(),
        "share_near_suboptimum": bandit.share_near(actions, SUBOPTIMUM).item(),
        "samples": actions.numpy(),
    }
    if model.hparams.actor == "gaussian":  # what IQL deploys: the mean action
        mean = model.agent.act(obs[:1]).cpu()
        summary["mean_action"] = [round(v, 3) for v in mean[0].tolist()]
        summary["reward_at_mean"] = bandit.reward(mean).item()
    return summary


def draw_figure(bandit, dataset_actions, results: dict, path: Path) -> None:
    """Figure 1's layout: data, reward landscape, then one panel of samples per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    grid = torch.linspace(-1, 1, 201)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    landscape = bandit.reward(torch.stack([xx, yy], -1)).numpy()
    panels = 2 + len(results)
    fig, axes = plt.subplots(1, panels, figsize=(3.4 * panels, 3.6), constrained_layout=True)
    axes[0].scatter(dataset_actions[:, 0], dataset_actions[:, 1], s=2, alpha=0.3, color="tab:gray")
    axes[0].set_title(f"dataset ({len(dataset_actions)} actions)")
    im = axes[1].imshow(landscape, extent=(-1, 1, -1, 1), origin="lower", cmap="viridis")
    axes[1].set_title("reward r(a)")
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    for ax, (label, res) in zip(axes[2:], results.items()):
        ax.contour(grid.numpy(), grid.numpy(), landscape, levels=6, cmap="viridis", linewidths=0.8)
        s = res["samples"]
        ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.4, color="tab:red")
        ax.set_title(f"{label}\nE[r] = {res['expected_reward']:.3f}, near opt. {100 * res['share_near_optimum']:.0f}%")
    for ax in axes:
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("a₁")
    axes[0].set_ylabel("a₂")
    fig.suptitle("Section 4.5 bandit: 90% dense suboptimal mode at (-0.5, -0.5), 10% sparse optimum at (0.5, 0.5)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def demo_main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="isep demo", description=__doc__)
    parser.add_argument("--out", default="outputs/demo", help="folder for the figure, its numbers and the runs' logs")
    parser.add_argument("--config_dir", default=str(CONFIG_DIR), help="where the toy configs live")
    parser.add_argument("--max_epochs", type=int, help="override every variant's trainer.max_epochs (1 epoch = 1000 updates)")
    parser.add_argument("--steps_per_epoch", type=int, help="override data.steps_per_epoch (for quick checks)")
    args = parser.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = ["--trainer.max_epochs", str(args.max_epochs)] if args.max_epochs else []
    extra += ["--data.steps_per_epoch", str(args.steps_per_epoch)] if args.steps_per_epoch else []
    extra += ["--trainer.enable_model_summary", "false"]
    results, summary, bandit, data = {}, {}, None, None
    for config_name, label in VARIANTS:
        model, dm, speed = train_variant(Path(args.config_dir) / config_name, out / "runs", extra)
        bandit, data = dm.toy, dm.transitions
        res = policy_summary(model, bandit)
        results[f"{label} (λ = {model.hparams.lam})"] = res
        summary[label] = {
            "config": config_name,
            "lam": model.hparams.lam,
            "updates": int(model.global_step),
            "updates_per_s": round(speed, 1),
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in res.items() if k != "samples"},
        }
        print(f"{label:24} E[r] = {res['expected_reward']:.3f}   near optimum {100 * res['share_near_optimum']:5.1f}%   "
              f"near suboptimum {100 * res['share_near_suboptimum']:5.1f}%   ({speed:.0f} updates/s)")
    figure = out / "figure1.png"
    draw_figure(bandit, data.actions, results, figure)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(MEASURED)
    print(f"wrote {figure} and {out / 'summary.json'}")
    return 0
