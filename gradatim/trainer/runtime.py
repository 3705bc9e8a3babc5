"""Where the trainer runs: its rank among the torchrun processes, its device, its scratch space."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

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
    def from_env(cls, workdir: str | os.PathLike | None = None, timeout: timedelta = timedelta(minutes=30)) -> Runtime:
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
        set_cpu_threads(os.environ, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
        return cls(rank, world, local_rank, device, _workdir(workdir))

    @classmethod
    def single(cls, workdir: str | os.PathLike) -> Runtime:
        """One process on the CPU, no process group: tests and tools that load what a stage would."""
        return cls(0, 1, 0, torch.device("cpu"), _workdir(workdir))

    def node_first(self) -> AbstractContextManager[None]:
        """Local rank 0 runs the block first (a download into the node's scratch, a tokenisation cache), then
        the node's other ranks run it and find the work done. Every rank must enter it, in the same order."""
        return self._leader_first(self.local_rank == 0)

    def rank0_first(self) -> AbstractContextManager[None]:
        """Global rank 0 runs the block first, then every other rank (each must enter it): work whose progress is
        rank 0's to report, and whose result the others may find in a cache they share with it."""
        return self._leader_first(self.rank == 0)

    @contextmanager
    def _leader_first(self, leader: bool) -> Iterator[None]:
        if not leader:
            self.barrier()
        try:
            yield
        finally:
            if leader:
                self.barrier()

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def from_rank0(self, value: Any) -> Any:
        """Rank 0's `value` on every rank, for a decision they must all act on alike (what each rank reads of S3
        on its own can differ, as a write lands between their reads)."""
        if not dist.is_initialized() or self.world_size == 1:
            return value
        box = [value if self.is_rank0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def cpu_threads(env: Mapping[str, str], local_world_size: int) -> int | None:
    """Threads for torch's CPU ops in each of a node's processes: the container's CPU limit (GRADATIM_CPU_LIMIT, from
    the downward API) shared among them. None when OMP_NUM_THREADS says it (set by the user, or by torchrun for
    several processes a node) or no limit is known."""
    if env.get("OMP_NUM_THREADS") or not env.get("GRADATIM_CPU_LIMIT", "").isdigit():
        return None
    return max(1, int(env["GRADATIM_CPU_LIMIT"]) // max(1, local_world_size))


def set_cpu_threads(env: Mapping[str, str], local_world_size: int) -> None:
    threads = cpu_threads(env, local_world_size)
    if threads is None:
        return
    # Exported too: accelerate's CPU setup otherwise sets torch's threads to the machine's cores again.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if threads != torch.get_num_threads():
        log.info("Using %d CPU thread(s): the container's CPU limit over %d process(es) on this node", threads, local_world_size)
        torch.set_num_threads(threads)


def _workdir(given: str | os.PathLike | None) -> Path:
    """The node's scratch: `--workdir` (the pod's scratch volume), else GRADATIM_WORKDIR, else a temp dir that
    the node's ranks share (under torchrun they are children of one agent process)."""
    given = given or os.environ.get("GRADATIM_WORKDIR")
    if given:
        path = Path(given)
    elif "LOCAL_RANK" in os.environ:
        path = Path(tempfile.gettempdir()) / f"gradatim-{os.getppid()}"
    else:
        path = Path(tempfile.mkdtemp(prefix="gradatim-"))
    path.mkdir(parents=True, exist_ok=True)
    return path
