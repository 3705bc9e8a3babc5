"""A stand-in trainer entrypoint for the Kubeflow controllers' tests (tests/test_kubeflow.py): every rank records the env Kubeflow and torchrun
gave it, then all ranks join one gloo all-reduce, which only completes if the rendezvous across the local
"nodes" worked."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> int:
    out = Path(os.environ["PROBE_DIR"])
    dist.init_process_group("gloo")
    total = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(total)
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK", "MASTER_ADDR", "PET_NNODES", "PET_NODE_RANK", "PET_NPROC_PER_NODE", "PYTHONUNBUFFERED", "FROM_SECRET")
    record = {k: os.environ.get(k) for k in keys} | {"sum": total.item(), "spec": open(sys.argv[sys.argv.index("--spec") + 1]).read()}
    (out / f"rank-{dist.get_rank()}.json").write_text(json.dumps(record))
    dist.destroy_process_group()
    return int(os.environ.get("PROBE_EXIT", "0"))


if __name__ == "__main__":
    sys.exit(main())
