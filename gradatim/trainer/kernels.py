"""Which SIMD kernels torch computes with on a CPU, pinned so that a run gives the same numbers on any x86-64 CPU.

torch picks ATen's kernels (ATEN_CPU_CAPABILITY), MKL its GEMM branch (MKL_CBWR) and oneDNN its ISA
(ONEDNN_MAX_CPU_ISA) by the CPU it finds: AVX-512 on one machine, AVX2 on another. Each sums in another order, so
the same seed trains another model and samples other tokens: a small recipe's table moves by a few points, as a
seed does. The trainer pins all three to AVX2 where the CPU has it (every x86-64 server CPU since 2013-2015); MKL
documents its AVX2 branch as giving the same results on every CPU with AVX2 at a fixed thread count, which the
trainer takes from the container's CPU limit. A value already set (the stage's `env`, or the shell of a local run)
wins. Nothing here imports torch at module level: torch reads these once, at its first op, so they must be set
before it loads.
"""

from __future__ import annotations

import os
import platform
from collections.abc import MutableMapping

# What the trainer sets, unless already set, where the CPU has AVX2 and FMA.
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def cpuinfo(field: str, path: str = "/proc/cpuinfo") -> str:
    """The first CPU's `field` line in /proc/cpuinfo ("flags", "model name"); empty where unknown."""
    try:
        with open(path) as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == field), "")
    except OSError:
        return ""


def pin_cpu_kernels(env: MutableMapping[str, str] | None = None, flags: str | None = None, machine: str | None = None) -> dict[str, str]:
    """Sets AVX2_KERNELS in `env` (os.environ) where the CPU runs them and the name is not set yet; returns what it
    set. A CPU without AVX2 (or not x86) keeps its own kernels: AVX2 code would stop there on an illegal instruction."""
    env = os.environ if env is None else env
    if (machine or platform.machine()).lower() not in ("x86_64", "amd64"):
        return {}
    if not {"avx2", "fma"} <= set((cpuinfo("flags") if flags is None else flags).split()):
        return {}
    pinned = {name: value for name, value in AVX2_KERNELS.items() if not env.get(name)}
    env.update(pinned)
    return pinned


def cpu_kernels() -> dict[str, str]:
    """What this process computes with on its CPU: ATen's capability, MKL's and oneDNN's branch ('auto': the CPU's
    best), torch's threads and the CPU. Two CPU runs give the same numbers where all but `cpu` agree."""
    import torch

    return {"aten": torch.backends.cpu.get_cpu_capability(), "mkl": os.environ.get("MKL_CBWR") or "auto",
            "onednn": os.environ.get("ONEDNN_MAX_CPU_ISA") or "auto", "threads": str(torch.get_num_threads()),
            "cpu": cpuinfo("model name") or platform.processor() or "unknown"}


def describe(kernels: dict[str, str]) -> str:
    """`ATen AVX2, MKL AVX2, oneDNN AVX2, 2 thread(s) on <CPU>`: for logs, results and a test's failure message."""
    return f"ATen {kernels['aten']}, MKL {kernels['mkl']}, oneDNN {kernels['onednn']}, {kernels['threads']} thread(s) on {kernels['cpu']}"
