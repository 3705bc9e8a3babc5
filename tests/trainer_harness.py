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


def trainer_command(cluster, spec: ResolvedStageSpec, workdir: Path, nproc: int = 1, env: dict[str, str] | None = None,
                    python: str = sys.executable) -> tuple[list[str], dict[str, str]]:
    """The torchrun command line and environment that run `spec` under `workdir` (with `python`: another venv's)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"stage-{spec.attempt}.json"
    path.write_text(json.dumps(spec.to_wire()))
    from gradatim.cluster.kubelet import free_port

    full_env = {**os.environ, **cluster.env, "PYTHONPATH": str(REPO), "GRADATIM_METRICS_PORT": str(free_port()),
                "GRADATIM_WORKDIR": str(workdir / f"work-{spec.attempt}"), **(env or {})}
    argv = [python, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={nproc}", f"--master-port={free_port()}",
            "-m", "gradatim.trainer", "--spec", str(path)]
    return argv, full_env


def run_trainer(cluster, spec: ResolvedStageSpec, workdir: Path, nproc: int = 1, timeout: float = 600,
                env: dict[str, str] | None = None, python: str = sys.executable) -> subprocess.CompletedProcess:
    argv, full_env = trainer_command(cluster, spec, workdir, nproc, env, python)
    return subprocess.run(argv, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=workdir)


def start_trainer(cluster, spec: ResolvedStageSpec, workdir: Path, nproc: int = 1, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The trainer started in the background; `kill_trainer` ends it as a lost pod ends."""
    argv, full_env = trainer_command(cluster, spec, workdir, nproc, env)
    log = open(workdir / f"trainer-{spec.attempt}.log", "w")
    return subprocess.Popen(argv, env=full_env, stdout=log, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)


def kill_trainer(process: subprocess.Popen) -> None:
    """SIGKILL to torchrun and every rank at once (torchrun starts each rank in a session of its own)."""
    import psutil

    try:
        tree = psutil.Process(process.pid)
        victims = [tree, *tree.children(recursive=True)]
    except psutil.NoSuchProcess:
        victims = []
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait()
    psutil.wait_procs(victims, timeout=30)
