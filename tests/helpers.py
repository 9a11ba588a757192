"""Small builders shared by the tests: a tiny agent on random data, batches, the update's draws,
callbacks that steer a run from the CLI, and the run folders a fit writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch

from isep.data.buffer import TransitionBuffer
from isep.data.transitions import Transitions
from isep.agent import ISEPAgent
from isep.rng import Draws

OBS_DIM, ACT_DIM, B = 3, 2, 32
ISEP = Path(sys.executable).with_name("isep")  # the installed console script


def run_isep(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`isep ARGS` as a user runs it (in `cwd`, with `env` added to the environment)."""
    return subprocess.run([str(ISEP), *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=timeout)


def isep_here(capfd, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`isep ARGS` through its entry point (`isep.cli.main`) in this process, returned as `run_isep`
    returns it: for the many bad-input cases, which need no fresh interpreter (~5 s each). An
    exception that escapes `main` (a user would see its traceback) fails the test."""
    from isep.cli import main

    capfd.readouterr()
    here = Path.cwd()
    os.chdir(cwd or here)
    try:
        code = main(list(args))
    finally:
        os.chdir(here)
    out = capfd.readouterr()
    return subprocess.CompletedProcess(list(args), code, out.out, out.err)


def tiny_fit(config: Path, root: Path, *extra: str) -> tuple[dict, dict]:
    """`isep fit` (the CLI's entry point, in this process) of a config shrunk by TINY to 20 updates,
    evaluated once at the end: its last checkpoint and its evaluation record."""
    from isep.cli import main
    from tests.conftest import TINY

    assert main(["fit", "--config", str(config), "--trainer.default_root_dir", str(root), *TINY,
                 "--trainer.max_steps", "20", *extra]) == 0
    (ckpt,) = root.rglob("last.ckpt")
    (record,) = [json.loads(line) for line in next(root.rglob("eval_returns.jsonl")).read_text().splitlines()]
    assert record["step"] == 20
    return torch.load(ckpt, weights_only=False), record


def make_agent(actor: str = "gaussian", lam: float | list[float] = 0.0, **kw) -> ISEPAgent:
    """An agent with tiny networks (no Trainer, no data)."""
    kw.setdefault("critic_hidden", [16, 16])
    kw.setdefault("actor_hidden", [16, 16])
    kw.setdefault("label_embed_dim", 4)
    kw.setdefault("flow_steps", 3)
    kw.setdefault("seed", 0)
    return ISEPAgent(OBS_DIM, ACT_DIM, actor=actor, lam=lam, **kw)



def small_buffer(n: int = 500, seed: int = 0) -> TransitionBuffer:
    """Random transitions of the tiny shapes, resident on the CPU."""
    return TransitionBuffer.from_transitions(Transitions.random(n, OBS_DIM, ACT_DIM, seed, terminal_prob=0.1,
                                                                action_bound=0.9))


def ready_agent(actor: str, lam: float | list[float], max_reward: float = 1.0, **kw) -> ISEPAgent:
    """`make_agent` with data attached (batch 16) and statistics set: ready to step.
    `max_reward` sets the bound max r / (1 − γ) of the optional clip of Q̂."""
    agent = make_agent(actor, lam, **kw)
    agent.attach_data(small_buffer(), 16)
    agent.set_data_stats(torch.zeros(OBS_DIM), torch.ones(OBS_DIM), torch.tensor(max_reward), torch.tensor(1.0))
    return agent

def make_batch(seed: int = 1, batch: int = B) -> dict:
    """One run's batch, (B, ·)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "observations": torch.randn(batch, OBS_DIM, generator=g),
        "actions": torch.rand(batch, ACT_DIM, generator=g) * 1.8 - 0.9,
        "rewards": torch.randn(batch, generator=g),
        "next_observations": torch.randn(batch, OBS_DIM, generator=g),
        "dones": (torch.rand(batch, generator=g) < 0.3).float(),
    }


def stacked(batch: dict, runs: int = 1) -> dict:
    """The same (B, ·) batch for each of `runs` runs: (R, B, ·)."""
    return {k: v.unsqueeze(0).expand(runs, *v.shape).contiguous() for k, v in batch.items()}


def draws_for(agent: ISEPAgent, update: int = 0) -> Draws:
    """The draws the agent's update number `update` uses."""
    return Draws(agent.keys, torch.tensor(update))


def perturb_targets(agent: ISEPAgent, seed: int = 2) -> None:
    """Make the target critics differ from the online ones (as after some training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in agent.target_critic.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints' state dicts are equal bit for bit (tensors), and equal (the rest: the
    agent's extra state)."""
    assert a.keys() == b.keys()
    for name, value in a.items():
        if torch.is_tensor(value):
            torch.testing.assert_close(b[name], value, rtol=0, atol=0, msg=name)
        else:
            assert b[name] == value, name


def params_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))



class PauseAtStart(L.Callback):
    """For kill tests: the run sleeps before its first update (its folder and records exist, no
    checkpoint yet), so that a test kills it inside its first epoch."""

    def __init__(self, seconds: float = 300.0) -> None:
        self.seconds = seconds

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        time.sleep(self.seconds)


class PauseAfterFirstEpoch(L.Callback):
    """For kill tests: after epoch 0 (its checkpoint written) the run sleeps, so that a test kills
    it at a known step instead of racing it."""

    def __init__(self, seconds: float = 300.0) -> None:
        self.seconds = seconds

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch >= 1:
            time.sleep(self.seconds)


class CtrlCInCheckpoint(L.Callback):
    """For resume tests: a real Ctrl-C (SIGINT to the process itself) while the checkpoint of epoch
    `epoch` is being saved, i.e. after that epoch's evaluation and CSV rows reached the disk and
    before its `last.ckpt` does: the worst moment, reached every time instead of by a race."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.current_epoch == self.epoch:
            # Python's own Ctrl-C handler, as in a terminal: a process started in the background by a
            # non-interactive shell (CI, nohup) inherits SIGINT ignored, and would train on.
            signal.signal(signal.SIGINT, signal.default_int_handler)
            os.kill(os.getpid(), signal.SIGINT)


class RecordFastMode(L.Callback):
    """Records, as training starts, the update path (`eager` / `compile` / `graph`) the fit uses."""

    seen: list[str] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        RecordFastMode.seen.append(pl_module.fast_mode())


def open_record_together(uri: str, barrier, results) -> None:
    """For the store race test (a spawned process): wait for the others, then open a run record."""
    from isep.callbacks.tracking import make_mlflow_logger

    barrier.wait()
    try:
        results.put(make_mlflow_logger("together", f"run-{os.getpid()}", uri, {}, None).run_id)
    except Exception as err:  # noqa: BLE001 - the test reports it
        results.put(f"error: {err!r}"[:300])


def callback_arg(cls: type, **init) -> list[str]:
    """The CLI arguments that add callback `cls` (a class of the tests package) to a run."""
    return ["--trainer.callbacks+", json.dumps({"class_path": f"{cls.__module__}.{cls.__name__}", "init_args": init})]


class StopAfter(L.Callback):
    """Ends training gracefully after `epochs` epochs (the epoch's checkpoint is still written)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


class PoisonAt(L.Callback):
    """Sets the critic's weights to NaN once `step` updates are done (a forced divergence): all of
    them, or only run `run`'s twins in a stack."""

    def __init__(self, step: int, run: int | None = None):
        self.step, self.run = step, run

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == self.step:
            rows = slice(None) if self.run is None else slice(2 * self.run, 2 * self.run + 2)
            with torch.no_grad():
                for p in pl_module.agent.critic.parameters():
                    p[rows].fill_(float("nan"))


class DivergenceListener(L.Callback):
    """A user's callback that hears of a run's divergence (`on_run_diverged`): writes each to `path`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_run_diverged(self, trainer: L.Trainer, pl_module: L.LightningModule, run: int, reason: str) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"run": run, "step": trainer.global_step, "reason": reason}) + "\n")


def run_folders(root: Path) -> list[Path]:
    """The run folders under `root` (a stack's folder, not its runs' sub-folders), sorted."""
    return sorted(p.parent for p in root.rglob("config.yaml") if (p.parent / "checkpoints").is_dir())


def tree_digest(root: Path) -> dict[str, str]:
    """Every file (its sha256) and folder (`dir`) under `root`: compare before and after a command
    to prove it changed nothing on disk."""
    import hashlib

    out = {}
    for p in sorted(Path(root).rglob("*")):
        key = p.relative_to(root).as_posix()
        out[key] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out
