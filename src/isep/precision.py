"""Mixed precision of the update: which parts compute their matrix products in bfloat16.

The master weights, Adam's moments, the target critics, the EMA, the metric sums, TD targets and
every loss stay float32; a part "in bf16" runs its matrix products on bf16 copies of its weights
and inputs (oneDNN and cuBLAS accumulate them in fp32) and hands float32 back. The parts
(`Plan`): the a_π sampler (10 guided Euler steps of the flow field over a doubled batch: ~80 %
of ISEP-FM's FLOP at λ > 0), the actor's training pass, and the hidden layers and the output
heads of the critics (online and target) and of V.

The rule (`bf16_parts`, measured by `benchmarks/precision_parts.py`, docs/guides/precision-and-speed.md, "Precision"):
- `safe` (default of `--trainer.precision bf16-mixed`): the sampler, the actor, and the hidden
  layers of the critics and of V in bf16; the heads of the critics and V in fp32. Q̂ is 100-300 on
  locomotion, where bf16's spacing (0.5-2) is larger than many TD errors: a bf16 head would round
  every value the Bellman and expectile losses compare.
- `sampler`: only the a_π sampler in bf16 (most of the gain for ISEP-FM at λ > 0).
- `all`: every layer, heads included (for measurement; not for training).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch

from isep.errors import ConfigError

LOW = torch.bfloat16
SUPPORTED = ("32-true", "bf16-mixed")
Parts = Literal["safe", "sampler", "all"]


@dataclass(frozen=True)
class Layers:
    """The dtype of a network's hidden layers and of its head (None: float32)."""

    hidden: torch.dtype | None = None
    head: torch.dtype | None = None

    @property
    def low(self) -> bool:
        return self.hidden is not None or self.head is not None


FP32 = Layers()


@dataclass(frozen=True)
class Plan:
    """Each part's `Layers` (`critic`: the online twins' training pass; `target`: the target twins'
    Q̂; `value`: V everywhere; `actor`: the actor's training pass and its mean action; `sampler`:
    a_π and the flow policy's actions in evaluation)."""

    name: str = "32-true"
    parts: str = "safe"
    critic: Layers = FP32
    target: Layers = FP32
    value: Layers = FP32
    actor: Layers = FP32
    sampler: Layers = FP32


def plan_for(precision: str = "32-true", parts: Parts = "safe") -> Plan:
    """The plan of a Lightning precision name and a bf16 rule."""
    precision = normalize(precision)
    if precision == "32-true":
        return Plan()
    hidden, everything = Layers(LOW, None), Layers(LOW, LOW)
    if parts == "sampler":
        return Plan(precision, parts, sampler=everything)
    if parts == "all":
        return Plan(precision, parts, everything, everything, everything, everything, everything)
    if parts != "safe":
        raise ConfigError(f"model.bf16_parts must be safe, sampler or all, got {parts!r}")
    return Plan(precision, parts, critic=hidden, target=hidden, value=hidden, actor=everything, sampler=everything)


def normalize(precision) -> str:
    """Lightning's spellings (32, "32", "32-true", "bf16", "bf16-mixed") → one name; the others are
    refused with what to use instead."""
    name = str(precision)
    if name in ("32", "32-true"):
        return "32-true"
    if name in ("bf16", "bf16-mixed"):
        return "bf16-mixed"
    if name in ("16", "16-mixed"):
        raise ConfigError("--trainer.precision 16-mixed needs loss scaling, which isep's captured update does not "
                          "do (float16's range is too small for the Q values unscaled): use bf16-mixed, or 32-true")
    raise ConfigError(f"--trainer.precision {name}: isep trains in 32-true or bf16-mixed (master weights fp32, matrix "
                      "products in bf16 where safe); choose one of those")


def no_autocast(device: torch.device):
    """Lightning's bf16-mixed wraps each training step in autocast, which would cast every matrix
    product, the fp32 heads included: the agent's own plan decides instead."""
    return torch.autocast(device_type=device.type, enabled=False)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` multiplies bf16 matrices in hardware: a GPU of compute capability ≥ 8.0, or
    a CPU with AMX or AVX-512 BF16 (read from /proc/cpuinfo)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and bool(cpu_bf16_units())


def cpu_bf16_units(cpuinfo: str = "/proc/cpuinfo") -> str:
    """This CPU's bf16 matrix units as named in /proc/cpuinfo: "AMX" (Intel Sapphire Rapids and newer:
    bf16 matmuls ~7× fp32), "AVX-512 BF16" (AMD Zen 4: 2.4-2.8× measured here), or "" (none, or not Linux)."""
    flags = set(_cpuinfo_field("flags", cpuinfo).split())
    return "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else ""


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("" where there is none)."""
    return _cpuinfo_field("model name")


def _cpuinfo_field(name: str, cpuinfo: str = "/proc/cpuinfo") -> str:
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return ""


# Where bf16 is native, `--trainer.precision` defaults to this: the fastest setting that passed the
# fidelity check of docs/guides/precision-and-speed.md, "Precision" (fp32 against bf16-mixed, 3 seeds × 4 variants on
# local/halfcheetah/medium-v0, `benchmarks/precision_fidelity.py`). bf16-mixed has not passed it
# (the Gaussian actor at λ 0.3 scored 2.5 points lower on the final evaluation, a CI excluding 0 at
# 3 seeds; the other three variants, ISEP-FM λ 0.3 included, agree within seed noise), so the
# default stays fp32 and bf16 is a choice.
NATIVE_DEFAULT = "32-true"


def default_precision(device: torch.device) -> str:
    """`--trainer.precision` when none is given: NATIVE_DEFAULT where bf16 is native, else 32-true."""
    return NATIVE_DEFAULT if native_bf16(device) else "32-true"


def training_device(accelerator) -> torch.device:
    """The device a Trainer with `accelerator` (auto, cpu, gpu, cuda) trains on."""
    name = str(accelerator or "auto").lower()
    if name in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def check_device(precision: str, device: torch.device) -> None:
    """bf16 where the device has no bf16 matrix units would run, slowly, in emulation: refuse it."""
    if normalize(precision) == "bf16-mixed" and not native_bf16(device) and not os.environ.get("ISEP_ALLOW_EMULATED_BF16"):
        raise ConfigError(f"--trainer.precision bf16-mixed: this {device.type} has no bf16 matrix units (a GPU of "
                          "compute capability ≥ 8.0, or a CPU with AMX/AVX-512 BF16), where bf16 is slower than fp32; "
                          "use 32-true (set ISEP_ALLOW_EMULATED_BF16=1 to run it anyway)")
