"""Run identity: folder names, the keys that find a run again, and the runs of a stack.

A run is one (dataset, settings, seed). Its folder is `<root>/<dataset>/<actor>-lam<λ>-<mix>-seed<s>-<hash>`
(the hash covers every model and data setting that changes results); its `isep.trial` key in
MLflow adds the training length. A *stack* trains R runs in one model (lists in `model.lam`,
`model.seed`, ...; `--stack.*` builds them as a grid); it lives in `<root>/<dataset>/stack<R>-<actor>-<hash>`
with one sub-folder per run, and each run's config (`per_run_configs`) is the config the run would
have had alone, so its key, its MLflow params and tags are those of a separate run.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from pathlib import Path

from isep.agent.config import STACK_FIELDS, stack_length
from isep.errors import ConfigError

STACK_FILE = "stack.json"  # in a stacked run's folder: where its checkpoint is, and its index
RUN_ID_FILE = "mlflow_run_id"  # in a run's folder: its MLflow run, which a resumed fit continues
# Performance switches and bookkeeping: they do not change what a run computes.
HASH_EXCLUDE = {"model.log_every", "model.fast", "model.fast_check", "model.updates_per_call", "data.val_batches",
                "data.download"}
# Settings added after runs existed: at these values (a checkpoint without them had them) a run
# keeps the key it had, and a resume of an older checkpoint sees no difference.
ADDED = {"model.tf32": False, "model.bf16_parts": "safe", "model.policy_guidance": None, "model.policy_flow_steps": None}
_UNSET = object()
# The a_π draw's settings (`--model.*`): a λ = 0 run draws no a_π, so they mean nothing there.
DRAW_SETTINGS = ("policy_guidance", "policy_flow_steps")
STACK_TYPES = {"lam": float, "expectile": float, "beta": float, "guidance": float, "policy_guidance": float, "policy_mix": str, "seed": int}


def flat(prefix: str, value) -> dict:
    """{'a': {'b': 1}} → {'a.b': 1}."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: value}


def run_seed(config: dict):
    """The run's seed: `model.seed` when set, else `seed_everything` (the module's default)."""
    model = config.get("model") or {}
    return model.get("seed") if model.get("seed") is not None else config.get("seed_everything")


def stack_size(config: dict) -> int:
    """R: the length of the model's per-run lists (1 for an ordinary run)."""
    model = config.get("model") or {}
    return stack_length({f: model.get(f) for f in STACK_FIELDS})


def _dataset_slug(data: dict) -> str:
    dataset = data.get("dataset", "dataset")
    dataset = "+".join(dataset) if isinstance(dataset, list) else str(dataset)
    return re.sub(r"[^\w.+-]+", "_", dataset.replace("/", "__"))


def precision_name(value) -> str:
    """A run's `trainer.precision` as one name: `32-true` for fp32's spellings (and for None, or the
    "None" that runs from before precisions logged), else as given (`bf16-mixed`)."""
    name = "None" if value is None else str(value)
    return "32-true" if name in ("None", "32", "32-true") else name


def draws_nothing(model: dict) -> bool:
    """Every run's λ is 0: no a_π is drawn, so the draw's settings change nothing it computes."""
    lam = model.get("lam", 0.0)
    return all(float(x) == 0 for x in (lam if isinstance(lam, (list, tuple)) else [lam]))


def _digest(config: dict) -> str:
    model, data = config.get("model") or {}, config.get("data") or {}
    inert = {f"model.{name}" for name in DRAW_SETTINGS} if draws_nothing(model) else ()  # a CFGRL run keeps one key
    settings = {k: v for k, v in flat("", {"model": model, "data": data}).items()
                if k not in HASH_EXCLUDE and k not in inert and ADDED.get(k, _UNSET) != v}
    precision = precision_name((config.get("trainer") or {}).get("precision"))
    if precision != "32-true":  # a bf16 run is another run
        settings["trainer.precision"] = precision
    else:  # which parts multiply in bf16 means nothing in fp32: fp32 runs keep the keys they had
        settings.pop("model.bf16_parts", None)
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]


def run_name(config: dict) -> str:
    """<actor>-lam<λ>-<mix>-seed<s>: a run's name (its folder, its MLflow run name)."""
    model = config.get("model") or {}
    return f"{model.get('actor', 'flow')}-lam{model.get('lam', 0.0)}-{model.get('policy_mix', 'stochastic')}-seed{run_seed(config)}"


def run_key(config: dict) -> str:
    """The run's folder below the root: `<dataset>/<name>-<hash>`, or `<dataset>/stack<R>-<actor>-<hash>`."""
    r = stack_size(config)
    if r > 1:
        return f"{_dataset_slug(config.get('data') or {})}/stack{r}-{(config.get('model') or {}).get('actor', 'flow')}-{_digest(config)}"
    return f"{_dataset_slug(config.get('data') or {})}/{run_name(config)}-{_digest(config)}"


def trial_key(config: dict) -> str:
    """What makes two runs the same experiment: the run key (dataset, model and data settings,
    seed) and the training length. Tagged `isep.trial` on each MLflow run; sweeps find finished
    trials by it."""
    trainer = config.get("trainer") or {}
    return f"{run_key(config)}|epochs={trainer.get('max_epochs')}|steps={trainer.get('max_steps')}"


def per_run_configs(config: dict) -> list[dict]:
    """Each run's config as if it had been run alone: the per-run value of every stacked field,
    `model.seed` unset and `seed_everything` the run's seed (a single run: the config itself)."""
    r = stack_size(config)
    if r == 1:
        return [config]
    runs = []
    for k in range(r):
        one = copy.deepcopy(config)
        model = one["model"]
        seed = model.get("seed")
        seed = seed[k] if isinstance(seed, (list, tuple)) else (seed if seed is not None else config.get("seed_everything"))
        for field in STACK_FIELDS:
            if isinstance(model.get(field), (list, tuple)):
                model[field] = model[field][k]
        model["seed"] = None
        one["seed_everything"] = seed
        if isinstance(one.get("stack"), dict):
            one["stack"] = {key: None for key in one["stack"]}
        runs.append(one)
    return runs


def parse_values(field: str, value) -> list:
    """`--stack.lam 0,0.3,0.5` (or a YAML list) → typed values."""
    from isep.sweeps.grid import parse_seeds, split_top_level

    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    elif field == "seed":
        items = parse_seeds(str(value))
    else:
        items = split_top_level(str(value))
    try:
        return [STACK_TYPES[field](v) for v in items]
    except ValueError as err:
        raise ConfigError(f"--stack.{field} {value!r}: {err}") from None


def expand_stack(stack: dict | None, model: dict) -> dict[str, list]:
    """`--stack.*` axes → per-run lists for the model (their cartesian product, seeds innermost).
    Empty when no axis is given."""
    axes = {f: parse_values(f, v) for f, v in (stack or {}).items() if v not in (None, "", [])}
    if not axes:
        return {}
    stacked = [f for f in STACK_FIELDS if isinstance(model.get(f), (list, tuple))]
    if stacked:
        raise ConfigError(f"--stack.* builds the per-run lists itself; model.{stacked[0]} is already a list")
    names = [f for f in STACK_FIELDS if f in axes]
    lists: dict[str, list] = {n: [] for n in names}
    for combo in itertools.product(*(axes[n] for n in names)):
        for name, value in zip(names, combo):
            lists[name].append(value)
    return lists


def used(folder: Path) -> bool:
    """A folder holds a run once it has a checkpoint, an evaluation record, a config or an MLflow
    run id: its identity, which no other run may take over."""
    ckpts = folder / "checkpoints"
    return (ckpts.is_dir() and any(ckpts.iterdir())) or any(
        (folder / name).is_file() for name in ("eval_returns.jsonl", "config.yaml", RUN_ID_FILE))


def choose_run_dir(base: Path, resume: bool, live=lambda folder: False) -> Path:
    """The run folder: `base`, or `base.1`, `base.2`, … so that nothing on disk is ever replaced.

    A fresh run takes the first folder that holds no run (`used`) and no live process (`live`);
    a resumed one (`--ckpt_path last`) the newest folder holding a `last.ckpt`, else a fresh one.
    """
    folders = [base] + [base.with_name(f"{base.name}.{i}") for i in range(1, 1000)]
    if resume:
        existing = [f for f in folders if (f / "checkpoints" / "last.ckpt").is_file()]
        if existing:
            return existing[-1]
    return next(f for f in folders if not used(f) and not live(f))




def stack_member(folder: Path) -> tuple[Path, int] | None:
    """(the stack's checkpoint, the run's index) for a stacked run's folder; None otherwise."""
    pointer = Path(folder) / STACK_FILE
    if not pointer.is_file():
        return None
    info = json.loads(pointer.read_text())
    return (Path(folder) / info["checkpoint"]).resolve(), int(info["index"])


def run_checkpoint(folder: Path) -> tuple[Path, int | None]:
    """A run folder's `last.ckpt` and the run's index in it: (its `checkpoints/last.ckpt`, None),
    or for a stacked run's folder (its stack's checkpoint, its index). The file may not exist."""
    member = stack_member(folder)
    return member if member else (Path(folder) / "checkpoints" / "last.ckpt", None)
