"""Figure 2 (Section 4.3): the danger-zone bandit — the learned policy's action samples over the
reward landscape, one panel per λ of a sweep.

The claim of the figure: λ controls extrapolation. Moderate λ moves the policy's mass towards the
high-reward region (support expansion) while it stays out of the danger zone beside it; large λ
extrapolates further and lets mass into the danger zone. `region_shares` gives the numbers each
panel states (and the tests check).
"""

from __future__ import annotations

from pathlib import Path

import torch

from isep.data.toy import TOY_BANDITS, danger_zone_reward

BANDIT = "toy/danger-zone"
HIGH, DANGER = 0.5, -0.5  # reward above: the high-reward region; below: the danger zone


def region_shares(actions: torch.Tensor) -> dict:
    """Expected reward of the samples, the shares in the high-reward region and the danger zone,
    and their mean action."""
    reward = danger_zone_reward(actions)
    return {"expected_reward": float(reward.mean()), "share_high": float((reward > HIGH).float().mean()),
            "share_danger": float((reward < DANGER).float().mean()),
            "mean_action": [round(float(x), 3) for x in actions.mean(0)]}


def policy_samples(module, n: int = 2000, seed: int = 0) -> torch.Tensor:
    """n stochastic actions of a trained bandit policy (its single state), drawn with `seed`."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return module.act(torch.zeros(n, 1), stochastic=True).cpu()


def draw(samples: dict[float, torch.Tensor], path: Path, toy_size: int = 10_000, toy_seed: int = 0) -> dict:
    """Dataset, reward landscape, then one panel of samples per λ; returns each λ's shares."""
    from isep.figures.common import figure

    bandit = TOY_BANDITS[BANDIT]
    data = bandit.transitions(toy_size, toy_seed).actions
    grid = torch.linspace(-1, 1, 201)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    landscape = danger_zone_reward(torch.stack([xx, yy], -1)).numpy()
    fig, axes = figure(1, 2 + len(samples), width=3.3, height=3.5)
    axes = axes[0]
    axes[0].scatter(data[:, 0], data[:, 1], s=1, alpha=0.25, color="tab:gray")
    axes[0].set_title(f"dataset ({len(data)} uniform actions)")
    image = axes[1].imshow(landscape, extent=(-1, 1, -1, 1), origin="lower", cmap="RdYlGn", vmin=-1, vmax=1)
    axes[1].set_title("reward r(a)")
    fig.colorbar(image, ax=axes[1], fraction=0.046)
    shares = {}
    for ax, (lam, actions) in zip(axes[2:], sorted(samples.items())):
        shares[lam] = region_shares(actions)
        ax.contourf(grid.numpy(), grid.numpy(), landscape, levels=[-1.01, DANGER, HIGH, 1.01],
                    colors=["#f4a6a6", "white", "#a6dba0"], alpha=0.8)
        ax.scatter(actions[:, 0], actions[:, 1], s=2, alpha=0.35, color="tab:blue")
        s = shares[lam]
        ax.set_title(f"λ = {lam:g}: E[r] = {s['expected_reward']:.2f}\n"
                     f"high {100 * s['share_high']:.0f}%, danger {100 * s['share_danger']:.0f}%", fontsize=9)
    for ax in axes:
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
    fig.suptitle("Section 4.3 bandit: high-reward region (green) at (0.6, 0.6), danger zone (red) at (0.1, 0.6)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return shares
