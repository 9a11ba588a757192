"""What bf16 changes, part by part: the measurement behind `isep.precision`'s rule.

From a trained checkpoint (a real run's `last.ckpt`), on fixed batches of its dataset, each part
alone in bf16 (the others fp32) and the rules `safe`, `sampler` and `all`:

- Q̂ and V: the mean |Δ| of the target twins' Q̂(s, a) and of V(s) against fp32, beside the mean
  |TD error| of the batch (what the Bellman and expectile losses resolve);
- the losses: the relative change of the critic, value and actor losses;
- the gradients: the cosine similarity of each network's gradient with the fp32 one;
- a_π: the mean |Δ| of the policy's sampled action (same noise).

    python benchmarks/precision_parts.py --ckpt runs/.../checkpoints/last.ckpt --out bench-results/precision_parts.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from isep.precision import LOW, Layers, Plan, plan_for

HIDDEN, ALL = Layers(LOW, None), Layers(LOW, LOW)
PARTS = {
    "fp32": Plan(),
    "sampler": Plan("bf16-mixed", "sampler", sampler=ALL),
    "actor": Plan("bf16-mixed", "actor", actor=ALL),
    "critic+V hidden": Plan("bf16-mixed", "hidden", critic=HIDDEN, target=HIDDEN, value=HIDDEN),
    "critic+V heads too": Plan("bf16-mixed", "heads", critic=ALL, target=ALL, value=ALL),
    "safe (rule)": plan_for("bf16-mixed", "safe"),
    "all": plan_for("bf16-mixed", "all"),
}


def measure(agent, batch: dict, draws, plan: Plan) -> dict:
    """Q̂, V, a_π, losses and gradients of one update's computations under `plan` (nothing stepped)."""
    agent.precision = plan
    obs, act = batch["observations"], batch["actions"]
    out = {}
    with torch.no_grad():
        out["q_hat"] = agent.target_critic.min(obs, act, plan.target)
        out["v"] = agent.value(obs, plan.value)
        out["td"] = batch["rewards"] + agent.gamma * (1 - batch["dones"]) * agent.value(batch["next_observations"], plan.value) \
            - agent.critic(obs, act, plan.critic).amin(1)
    targets = agent.targets(batch, draws)
    out["a_pi"] = targets.a_pi
    for name, loss_of, network in (("value", lambda: agent.value_loss(batch, targets, draws), agent.value),
                                   ("actor", lambda: agent.actor_loss(batch, targets, draws), agent.actor),
                                   ("critic", lambda: agent.critic_loss(batch), agent.critic)):
        loss, _ = loss_of()
        out[f"{name}_loss"] = float(loss.sum().detach())
        grads = torch.autograd.grad(loss.sum(), list(network.parameters()))
        out[f"{name}_grad"] = torch.cat([g.flatten() for g in grads])
    agent.precision = Plan()
    return out


def compare(ref: dict, got: dict) -> dict:
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))  # noqa: E731
    row = {
        "q_hat_abs_diff": float((got["q_hat"] - ref["q_hat"]).abs().mean()),
        "v_abs_diff": float((got["v"] - ref["v"]).abs().mean()),
        "td_error_abs_mean (fp32)": float(ref["td"].abs().mean()),
    }
    if ref["a_pi"] is not None:
        row["a_pi_abs_diff"] = float((got["a_pi"] - ref["a_pi"]).abs().mean())
    for name in ("value", "actor", "critic"):
        row[f"{name}_loss_rel_change"] = abs(got[f"{name}_loss"] - ref[f"{name}_loss"]) / abs(ref[f"{name}_loss"])
        row[f"{name}_grad_cosine"] = cos(got[f"{name}_grad"], ref[f"{name}_grad"])
    return {k: round(v, 6) for k, v in row.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="a trained run's checkpoint (its config.yaml beside it)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    import yaml

    from isep.data.datamodule import D4RLDataModule
    from isep.module import ISEPModule
    from isep.rng import Draws

    ckpt = Path(args.ckpt)
    agent = ISEPModule.load_from_checkpoint(ckpt, map_location="cpu").agent
    data = (yaml.safe_load((ckpt.parent.parent / "config.yaml").read_text()) or {})["data"]
    dm = D4RLDataModule(**{k: data[k] for k in ("dataset", "reward_transform", "normalize_states", "batch_size")})
    dm.setup()
    agent.attach_data(dm.buffer, dm.batch_size)
    rows = {}
    for b in range(args.batches):
        draws = Draws(agent.keys, torch.tensor(10_000_000 + b))
        batch = dm.buffer.sample(draws, dm.batch_size)
        ref = measure(agent, batch, draws, PARTS["fp32"])
        for name, plan in PARTS.items():
            if name != "fp32":
                row = compare(ref, measure(agent, batch, draws, plan))
                rows.setdefault(name, []).append(row)
    result = {"checkpoint": str(ckpt), "q_hat_mean": None,
              "parts": {name: {k: round(sum(r[k] for r in rs) / len(rs), 6) for k in rs[0]} for name, rs in rows.items()}}
    with torch.no_grad():
        batch = dm.buffer.sample(Draws(agent.keys, torch.tensor(10_000_000)), dm.batch_size)
        result["q_hat_mean"] = round(float(agent.target_critic.min(batch["observations"], batch["actions"]).mean()), 3)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
