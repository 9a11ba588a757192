"""Figure 6 (Section 5.3.2): t-SNE of the dataset's actions and of the actions that the λ = 0
policy and an ISEP policy take in the same states.

scikit-learn's `TSNE` embeds the three sets together (one embedding, so distances compare);
the figure also reports how far each policy's actions lie from the dataset's action in the same
state, the paper's "support expansion" in numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def embed(actions: dict[str, np.ndarray], seed: int = 0, perplexity: float = 30.0) -> dict[str, np.ndarray]:
    """One 2-D t-SNE of every set of actions; returns each set's points."""
    from sklearn.manifold import TSNE

    names = list(actions)
    stacked = np.concatenate([actions[n] for n in names])
    perplexity = min(perplexity, max(2.0, (len(stacked) - 1) / 3))
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                  random_state=seed).fit_transform(stacked.astype(np.float64))
    out, start = {}, 0
    for name in names:
        out[name] = points[start:start + len(actions[name])]
        start += len(actions[name])
    return out


def policy_actions(modules: dict[str, object], observations: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Each module's action in each state (Gaussian: the mean; flow: a guided sample, seeded)."""
    out = {}
    for name, module in modules.items():
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            out[name] = module.act(torch.as_tensor(observations, dtype=torch.float32)).cpu().numpy()
    return out


def draw(dataset_actions: np.ndarray, actions: dict[str, np.ndarray], path: Path, title: str, seed: int = 0) -> dict:
    from isep.figures.common import figure

    sets = {"dataset": dataset_actions, **actions}
    points = embed(sets, seed)
    fig, axes = figure(1, 1, width=6.0, height=5.2)
    ax = axes[0][0]
    colors = ["tab:gray", "tab:blue", "tab:red", "tab:green", "tab:purple"]
    numbers = {}
    for (name, xy), color in zip(points.items(), colors):
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.5 if name == "dataset" else 0.7, color=color, label=name)
        if name != "dataset":
            numbers[name] = {"mean_distance_to_dataset_action": float(np.linalg.norm(sets[name] - dataset_actions, axis=1).mean())}
    ax.legend(markerscale=3)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return numbers
