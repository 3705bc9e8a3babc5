"""FSDP2 on two CPU processes (gloo), through `torchrun -m gradatim.trainer`, against the real SeaweedFS: each
process holds half of the model, every process uploads its own shard of each checkpoint, and when a rank is
killed mid-run the retry resumes from the last complete checkpoint (passing over a partial one) and reaches
the losses and the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import torch

from gradatim.storage import s3
from gradatim.api.resolved import ResolvedSource
from gradatim.cluster.kubelet import free_port
from gradatim.storage.s3 import S3Location
from gradatim.trainer.artifacts import MANIFEST, read_manifest
from gradatim.trainer.checkpoints import checkpoints_in
from gradatim.trainer.runtime import Runtime
from gradatim.trainer.sources import load_model
from tests.test_trainer_sft import INPUTS, logged_losses
from tests.trainer_harness import REPO, run_trainer, stage_spec

PARAMS = {"learningRate": 3e-3, "batchSize": 16, "microBatchSize": 8, "maxSteps": 12, "maxLength": 256, "precision": "fp32",
          "gradientCheckpointing": False, "systemMessage": "Think step by step.", "warmupRatio": 0.0, "sharding": "fsdp"}


def assert_sharded_in_halves(results) -> None:
    """Each of the two processes held about half of the parameters, as Shard(dim=0) DTensors."""
    ranks = results["sharding"]
    assert [r["rank"] for r in ranks] == [0, 1], ranks
    assert sum(r["localElements"] for r in ranks) == ranks[0]["elements"], ranks
    for r in ranks:
        assert 0.45 < r["fraction"] < 0.55 and r["placements"] == ["(Shard(dim=0),)"], ranks


def rank_processes(torchrun: subprocess.Popen) -> dict[int, psutil.Process]:
    workers = {}
    for child in psutil.Process(torchrun.pid).children(recursive=True):
        try:
            env = child.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if "RANK" in env and "gradatim.trainer" in " ".join(child.cmdline()):
            workers[int(env["RANK"])] = child
    return workers


def stored_checkpoints(store, checkpoint_uri: str) -> list[int]:
    """Steps of the checkpoints that have any object in S3."""
    loc = S3Location.parse(checkpoint_uri)
    keys = [o["Key"] for page in store.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key) for o in page.get("Contents", [])]
    return sorted({int(k[len(loc.key):].split("/")[0].removeprefix("checkpoint-")) for k in keys})


def copy_prefix(store, src: str, dst: str, keep) -> None:
    a, b = S3Location.parse(src), S3Location.parse(dst)
    for obj in store.list_objects_v2(Bucket=a.bucket, Prefix=a.key).get("Contents", []):
        rel = obj["Key"][len(a.key):]
        if keep(rel):
            store.copy_object(Bucket=b.bucket, Key=b.key + rel, CopySource={"Bucket": a.bucket, "Key": obj["Key"]})


def test_fsdp_shards_and_a_killed_rank_resumes_from_the_last_complete_checkpoint(cluster, tmp_path):
    store = cluster.s3_client()
    straight = stage_spec(cluster, "sft", PARAMS, INPUTS, checkpoint_interval=4)
    plain = run_trainer(cluster, straight, tmp_path / "straight", nproc=2)
    assert plain.returncode == 0, plain.stdout[-3000:] + plain.stderr[-5000:]
    assert_sharded_in_halves(s3.read_json(store, straight.output.uri + "results.json"))
    expected = logged_losses(plain)
    assert len(expected) == 12

    spec = stage_spec(cluster, "sft", PARAMS, INPUTS, checkpoint_interval=4)
    work = tmp_path / "killed"
    work.mkdir()
    (work / "stage-1.json").write_text(json.dumps(spec.to_wire()))
    env = {**os.environ, **cluster.env, "PYTHONPATH": str(REPO), "GRADATIM_METRICS_PORT": str(free_port()), "GRADATIM_WORKDIR": str(work / "w1")}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={free_port()}", "-m",
                             "gradatim.trainer", "--spec", str(work / "stage-1.json")], env=env, cwd=work,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while read_manifest(store, spec.output.checkpoint_uri + "checkpoint-8/") is None:
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
            time.sleep(0.1)
        workers = rank_processes(proc)
        assert sorted(workers) == [0, 1], workers
        workers[1].kill()  # the pod of rank 1 dies; torchrun then stops rank 0, as Kubeflow ends the attempt
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    assert s3.read_json(store, spec.output.uri + "results.json") is None

    manifest = read_manifest(store, spec.output.checkpoint_uri + "checkpoint-8/")
    for rank in (0, 1):  # each process's shard, model and optimiser, is in the checkpoint
        assert {f"pytorch_model_fsdp_0/__{rank}_0.distcp", f"optimizer_0/__{rank}_0.distcp", f"rng_state_{rank}.pth"} <= set(manifest["files"])
    assert manifest["worldSize"] == 2
    # A later checkpoint some rank had not finished: rank 0's files and part, no rank 1 part, no manifest. Any
    # real later checkpoint loses its manifest too, which makes the resume point 8 every time.
    for step, uri in checkpoints_in(store, spec.output.checkpoint_uri):
        if step > 8:
            loc = S3Location.parse(uri + MANIFEST)
            store.delete_object(Bucket=loc.bucket, Key=loc.key)
    copy_prefix(store, spec.output.checkpoint_uri + "checkpoint-8/", spec.output.checkpoint_uri + "checkpoint-10/",
                keep=lambda rel: rel != MANIFEST and "__1_" not in rel and "rank-1" not in rel and "rng_state_1" not in rel)
    assert read_manifest(store, spec.output.checkpoint_uri + "checkpoint-10/") is None

    retry = run_trainer(cluster, spec.model_copy(update={"attempt": 2}), work, nproc=2)
    out = retry.stdout + retry.stderr
    assert retry.returncode == 0, out[-5000:]
    assert "Resuming from checkpoint 8" in out
    steps = [line for line in out.splitlines() if "INFO gradatim.trainer: Step " in line]
    assert steps and steps[0].split("Step ")[1].startswith("9/"), steps[:2]
    resumed = logged_losses(retry)
    assert len(resumed) == 4
    for x, y in zip(expected[8:], resumed):
        assert abs(x - y) < 1e-4 * max(1.0, abs(x)), (expected, resumed)
    assert_sharded_in_halves(s3.read_json(store, spec.output.uri + "results.json"))

    # Only the newest two complete checkpoints stay; the partial one and the oldest are gone. (Objects, not
    # prefixes: SeaweedFS may list an emptied directory for a while.)
    assert stored_checkpoints(store, spec.output.checkpoint_uri) == [8, 12]
    assert read_manifest(store, spec.output.checkpoint_uri + "checkpoint-12/") is not None

    # The final model is one full state dict, in the training precision (fp32 on CPU), equal to the straight run's.
    assert "model.safetensors" in read_manifest(store, spec.output.uri + "model/")["files"]
    a, _ = load_model(ResolvedSource(uri=straight.output.uri + "model/"), store, Runtime.single(tmp_path / "a"))
    b, _ = load_model(ResolvedSource(uri=spec.output.uri + "model/"), store, Runtime.single(tmp_path / "b"))
    assert b.dtype == torch.float32
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=1e-4, atol=1e-5, msg=name)
