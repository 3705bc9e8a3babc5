"""What the trainer measures about itself: model FLOPs per token, the device's peak FLOP/s (for MFU) and the
memory in use on the training device."""

from __future__ import annotations

import math
import resource
from dataclasses import dataclass
from typing import Any

import torch

# Dense bf16 tensor-core peak per device (no sparsity), from the vendors' data sheets; matched on
# torch.cuda.get_device_name(). MFU is reported against bf16 whatever the precision, as torchtitan does.
PEAK_BF16_FLOPS = (
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM and NVL
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 125e12),
    ("A10", 125e12),
)


@dataclass(frozen=True)
class Device:
    name: str  # "cpu" or the GPU's name
    peak_flops: float  # per device; NaN when unknown

    @classmethod
    def detect(cls, device: torch.device) -> Device:
        if device.type != "cuda":
            return cls("cpu", math.nan)  # a CPU's peak depends on cores, clocks and ISA: unknown
        name = torch.cuda.get_device_name(device)
        peak = next((flops for key, flops in PEAK_BF16_FLOPS if key in name), math.nan)
        return cls(name, peak)


@dataclass(frozen=True)
class ModelFlops:
    """Training FLOPs per token, forward and backward: 6·N for the weights (N without the embeddings, which
    are a lookup) plus 12·L·H·S for attention scores and values at sequence length S (PaLM appendix B, as
    torchtitan counts them)."""

    dense: float  # 6·N
    attention: float  # 12·L·H, times S

    @classmethod
    def of(cls, model: Any) -> ModelFlops:
        config = model.config
        params = sum(p.numel() for p in model.parameters())
        embedding = model.get_input_embeddings().weight.numel()
        return cls(6.0 * (params - embedding), 12.0 * config.num_hidden_layers * config.hidden_size)

    def per_token(self, seq_len: float) -> float:
        return self.dense + self.attention * seq_len


def device_memory(device: torch.device) -> tuple[float, float]:
    """(in use, peak) bytes on the training device: torch's allocations on a GPU, the process RSS on CPU."""
    if device.type == "cuda":
        return float(torch.cuda.memory_allocated(device)), float(torch.cuda.max_memory_allocated(device))
    with open("/proc/self/status") as f:
        rss = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    return float(rss), float(max(peak, rss))
