"""`isep fit --help`: isep's own options first and short — the method, the data, the evaluation,
tracking and stacks — with a pointer to the full list (Lightning's Trainer has ~60 more)."""

from __future__ import annotations

import inspect
import re
import textwrap

WIDTH, NAME = 100, 36  # the help's width, and its column of option names

# The Trainer options a user of isep reaches for; the rest are in `--help=full`.
TRAINER = {
    "trainer.max_epochs": "epochs of 1000 updates (paper: 2000 Gym-MuJoCo, 1000 Adroit/Kitchen)",
    "trainer.max_steps": "stop after this many updates (overrides max_epochs when smaller)",
    "trainer.default_root_dir": "where run folders go (default: runs)",
    "trainer.accelerator": "cpu, gpu, auto",
    "trainer.check_val_every_n_epoch": "epochs between validation losses on fixed batches",
    "trainer.enable_progress_bar": "the progress line (updates, updates/s, losses, score)",
    "trainer.logger+": "add a logger beside isep's MLflow run and CSV: TensorBoardLogger, CSVLogger, WandbLogger (+ .save_dir DIR)",
    "trainer.callbacks+": "add a callback (e.g. isep.callbacks.target_ema.TargetEMA --trainer.callbacks.rate 0.01)",
}
GENERAL = {
    "config": "a YAML config (configs/<task>.yaml: the paper's Appendix C values)",
    "print_config": "print the resolved config and stop",
    "seed_everything": "the run's seed (initial weights and every random draw)",
    "ckpt_path": "a checkpoint to resume, or `last` (this config's newest run)",
    "stack.lam, --stack.seed, ...": "train the product of these values (also .expectile, .beta, .guidance, .policy_guidance, "
                                    ".policy_mix) as runs stacked in one model",
    "mlflow.enabled, --mlflow.tracking_uri": "the MLflow record (default: sqlite:///mlflow.db here)",
}


def _documented(cls) -> dict[str, tuple[object, str]]:
    """`{name: (default, one line)}` for the parameters of `cls.__init__` (or a dataclass), from its
    signature and the `Args:` section of its docstring."""
    import docstring_parser

    doc = {p.arg_name: " ".join((p.description or "").split()) for p in docstring_parser.parse(cls.__doc__ or "").params}
    out = {}
    for name, param in inspect.signature(cls).parameters.items():
        if name in ("self", "obs_dim", "act_dim") or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        default = None if param.default is inspect.Parameter.empty else param.default
        out[name] = (default, doc.get(name, ""))
    return out


def _entry(head: str, text: str) -> list[str]:
    """One option: its name (and default) in the first column, the first sentence of its help beside it."""
    sentence = re.split(r"(?<=\.)\s+(?=[A-Z(])", text, maxsplit=1)[0].rstrip(".") if text else ""
    if not sentence:
        return [head]
    wrapped = textwrap.wrap(sentence, WIDTH - NAME - 1, max_lines=3, placeholder=" …")
    first = f"{head:<{NAME}} {wrapped[0]}" if len(head) < NAME else f"{head}\n{'':<{NAME}} {wrapped[0]}"
    return [first] + [f"{'':<{NAME}} {line}" for line in wrapped[1:]]


def _lines(prefix: str, options: dict[str, tuple[object, str]]) -> list[str]:
    lines = []
    for name, (default, text) in options.items():
        shown = "" if default is None else f" {default!r}".replace("'", "")
        lines += _entry(f"  --{prefix}{name}{shown}", text)
    return lines


def _plain(options: dict[str, str]) -> list[str]:
    return [line for name, text in options.items() for line in _entry(f"  --{name}", text)]


def short_help(command: str = "fit") -> str:
    """The help text of `isep fit` (validate/test take the same options)."""
    from isep.data.datamodule import D4RLDataModule
    from isep.evaluation import Evaluator
    from isep.module import ISEPModule

    model = _documented(ISEPModule)
    evaluation = {"every": (10, "epochs between rollout evaluations (0: none, not even at the end)"),
                  **_documented(Evaluator)}
    parts = [
        f"usage: isep {command} --config configs/<task>.yaml [--model.lam 0.3] [--trainer.max_epochs 5] ...",
        "",
        "Every field of the config is an option; values on the command line override the file.",
        "",
        "general:", *_plain(GENERAL), "",
        "the method (--model.*; IQL/CFGRL at lam 0, BC at lam 0 and beta 0):", *_lines("model.", model), "",
        "the data (--data.*):", *_lines("data.", _documented(D4RLDataModule)), "",
        "rollout evaluation (--evaluation.*):", *_lines("evaluation.", evaluation), "",
        "the Trainer (a few of Lightning's; all of them: --help=full):", *_plain(TRAINER),
        "",
        f"isep {command} --help=full   every option, Lightning's included",
    ]
    return "\n".join(parts)
