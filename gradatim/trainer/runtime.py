"""Where the trainer runs: its rank among the torchrun processes, its device, its scratch space."""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

log = logging.getLogger("gradatim.trainer")


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    workdir: Path

    @property
    def is_rank0(self) -> bool:
        """The one process that writes: outputs, results, progress and metrics."""
        return self.rank == 0

    @classmethod
    def from_env(cls, timeout: timedelta = timedelta(minutes=30)) -> Runtime:
        """Reads the env torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK) and joins the process group: NCCL on
        GPUs, gloo on CPU. `timeout`: how long a collective waits for every process (the stage spec's
        processGroupTimeoutSeconds) before the job fails."""
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
            device = torch.device("cuda", local_rank)
        else:
            device = torch.device("cpu")
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        workdir = Path(os.environ.get("GRADATIM_WORKDIR") or tempfile.mkdtemp(prefix="gradatim-"))
        workdir.mkdir(parents=True, exist_ok=True)
        return cls(rank, world, local_rank, device, workdir)

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()
