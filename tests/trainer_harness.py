"""Runs `torchrun -m gradatim.trainer` on a resolved stage spec against the test cluster's SeaweedFS."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from gradatim.api.resolved import ResolvedStageSpec

REPO = Path(__file__).resolve().parents[1]


def stage_spec(cluster, type_: str, params: dict[str, Any], inputs: dict[str, Any], run: str | None = None, attempt: int = 1,
               checkpoint_interval: int | None = None) -> ResolvedStageSpec:
    run = run or uuid.uuid4().hex[:12]
    out = f"s3://{cluster.s3_bucket}/trainer-tests/{type_}/{run}/"
    return ResolvedStageSpec(
        namespace="tests", pipeline="trainer", stage=f"{type_}-{run}", type=type_, attempt=attempt, cache_key=run, params=params,
        inputs=inputs, output={"uri": out, "checkpointUri": out + "checkpoints/", "checkpointInterval": checkpoint_interval},
        storage={"bucket": cluster.s3_bucket, "endpoint": cluster.s3_endpoint},
    )


def run_trainer(cluster, spec: ResolvedStageSpec, workdir: Path, nproc: int = 1, timeout: float = 600,
                env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"stage-{spec.attempt}.json"
    path.write_text(json.dumps(spec.to_wire()))
    from gradatim.local.jobrunner import free_port

    full_env = {**os.environ, **cluster.env, "PYTHONPATH": str(REPO), "GRADATIM_METRICS_PORT": str(free_port()),
                "GRADATIM_WORKDIR": str(workdir / f"work-{spec.attempt}"), **(env or {})}
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
            "-m", "gradatim.trainer", "--spec", str(path)]
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=workdir)
