"""Resumable checkpoints in S3, written by every process and complete or absent.

The Trainer saves `checkpoint-<step>/` on local disk: with FSDP, torch.distributed.checkpoint writes one
`__<rank>_0.distcp` per process (model and optimiser) and the first process the `.metadata`, trainer state and
scheduler; every process writes its own `rng_state_<rank>.pth`. Each process then uploads the files it wrote,
in a background thread so that training goes on, and records them in `_parts/rank-<r>.json`. The first process
writes `_manifest.json` (artifacts.py) only once every part is there, so a reader never takes a checkpoint some
process had not finished, and then deletes all but the newest `checkpointsToKeep` complete checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from gradatim.api.resolved import ResolvedStageSpec
from gradatim.storage.s3 import S3Location, read_json
from gradatim.trainer.artifacts import MANIFEST, TRANSFER, download_dir, manifest_of, read_manifest
from gradatim.trainer.runtime import Runtime

log = logging.getLogger("gradatim.trainer")
CHECKPOINT = re.compile(r"checkpoint-(\d+)/$")
PARTS = "_parts/"
# Files one process writes for itself; every other file of a checkpoint is the first process's.
PER_RANK = (re.compile(r"(?:^|/)__(\d+)_\d+\.distcp$"), re.compile(r"(?:^|/)rng_state_(\d+)\.pth$"))


def owner(rel: str) -> int:
    """The rank that wrote a checkpoint file."""
    for pattern in PER_RANK:
        if m := pattern.search(rel):
            return int(m.group(1))
    return 0


def stage_own_files(local: Path, rank: int, staging: Path) -> Path:
    """Hard links to this process's files of `local` in `staging`, so the Trainer may rotate `local` away while
    the upload still reads them."""
    if staging.exists():
        shutil.rmtree(staging)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = path.relative_to(local)
        if owner(str(rel)) != rank:
            continue
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:  # another filesystem
            shutil.copy2(path, target)
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def checkpoints_in(store: Any, checkpoint_uri: str) -> list[tuple[int, str]]:
    """(step, uri) of every checkpoint prefix under `checkpoint_uri`, complete or not, oldest first."""
    loc = S3Location.parse(checkpoint_uri)
    found = []
    for page in store.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key, Delimiter="/"):
        for prefix in page.get("CommonPrefixes", []):
            if match := CHECKPOINT.search(prefix["Prefix"]):
                found.append((int(match.group(1)), f"s3://{loc.bucket}/{prefix['Prefix']}"))
    return sorted(found)


def latest_checkpoint(store: Any, checkpoint_uri: str) -> tuple[int, str] | None:
    """(step, uri) of the newest complete checkpoint under `checkpoint_uri`."""
    for step, uri in reversed(checkpoints_in(store, checkpoint_uri)):
        if read_manifest(store, uri) is not None:
            return step, uri
    return None


def delete_prefix(store: Any, uri: str) -> None:
    """Deletes everything under `uri`, its manifest first so that no reader takes it while it goes."""
    loc = S3Location.parse(uri)
    store.delete_object(Bucket=loc.bucket, Key=loc.key + MANIFEST)
    for page in store.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            store.delete_objects(Bucket=loc.bucket, Delete={"Objects": keys, "Quiet": True})


def prune(store: Any, checkpoint_uri: str, keep: int) -> list[int]:
    """Keeps the `keep` newest complete checkpoints and deletes every other one older than the newest complete
    one: older complete ones, and incomplete leftovers of killed attempts (uploads finish in step order, so an
    incomplete one below a complete one never completes). Newer incomplete ones may still be uploading and stay.
    Returns the deleted steps."""
    found = checkpoints_in(store, checkpoint_uri)
    complete = [step for step, uri in found if read_manifest(store, uri) is not None]
    if not complete:
        return []
    kept = set(complete[-keep:])
    doomed = [(step, uri) for step, uri in found if step < complete[-1] and step not in kept]
    for _, uri in doomed:
        delete_prefix(store, uri)
    return [step for step, _ in doomed]


class CheckpointSync(TrainerCallback):
    """Uploads every checkpoint the Trainer saves (model, optimizer, scheduler, RNG, data position) to S3 from
    every process, off the training thread, and keeps the newest `checkpointsToKeep` of them."""

    def __init__(self, store: Any, spec: ResolvedStageSpec, rt: Runtime) -> None:
        self.store, self.rt = store, rt
        self.uri, self.keep = spec.output.checkpoint_uri, spec.output.checkpoints_to_keep
        self.wait_seconds = spec.process_group_timeout_seconds  # for the other processes' parts
        self.staging = rt.workdir / "checkpoint-uploads" / f"rank-{rt.rank}"
        # One worker: checkpoints go up in order, and the first process writes manifests in step order.
        self.uploader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-upload")
        self.pending: list[Future] = []
        self.uploaded: list[int] = []

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        staged = stage_own_files(Path(args.output_dir) / f"checkpoint-{step}", self.rt.rank, self.staging / f"checkpoint-{step}")
        self.pending.append(self.uploader.submit(self._upload, step, staged))

    def on_train_end(self, args, state, control, **kwargs):
        self.wait()

    def wait(self) -> None:
        """Blocks until every queued upload has finished (or failed, which is logged)."""
        for future in self.pending:
            future.result()
        self.pending.clear()

    def _upload(self, step: int, staged: Path) -> None:
        uri = f"{self.uri}checkpoint-{step}/"
        base = S3Location.parse(uri)
        try:
            started = time.monotonic()
            part = manifest_of(staged)
            for rel in part["files"]:
                self.store.upload_file(str(staged / rel), base.bucket, base.key + rel, Config=TRANSFER)
            self.store.put_object(Bucket=base.bucket, Key=f"{base.key}{PARTS}rank-{self.rt.rank}.json", Body=json.dumps(part).encode())
            log.info("Uploaded rank %d's part of checkpoint %d (%d files) in %.2fs", self.rt.rank, step, len(part["files"]), time.monotonic() - started)
            if self.rt.is_rank0:
                self._complete(step, uri)
            self.uploaded.append(step)
        except Exception:
            log.exception("Checkpoint %d was not uploaded; a retry resumes from an earlier one", step)
        finally:
            shutil.rmtree(staged, ignore_errors=True)

    def _complete(self, step: int, uri: str) -> None:
        """Merges every process's part into the manifest once all are there, then prunes old checkpoints."""
        deadline = time.monotonic() + self.wait_seconds
        parts: dict[int, dict[str, Any]] = {}
        while len(parts) < self.rt.world_size:
            for rank in range(self.rt.world_size):
                if rank not in parts and (part := read_json(self.store, f"{uri}{PARTS}rank-{rank}.json")) is not None:
                    parts[rank] = part
            if len(parts) < self.rt.world_size:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"checkpoint {step}: only ranks {sorted(parts)} of {self.rt.world_size} uploaded their part")
                time.sleep(0.2)
        manifest = {"files": {rel: meta for part in parts.values() for rel, meta in part["files"].items()},
                    "step": step, "worldSize": self.rt.world_size}
        base = S3Location.parse(uri)
        self.store.put_object(Bucket=base.bucket, Key=base.key + MANIFEST, Body=json.dumps(manifest, indent=1, sort_keys=True).encode(),
                              ContentType="application/json")
        log.info("Uploaded checkpoint %d to %s", step, self.uri)
        if deleted := prune(self.store, self.uri, self.keep):
            log.info("Deleted checkpoints %s (keeping the newest %d)", ", ".join(map(str, deleted)), self.keep)


def resume_point(store: Any, spec: ResolvedStageSpec, rt: Runtime, output_dir: Path) -> str | None:
    """Downloads the newest complete checkpoint of this run, if an earlier attempt left one, for
    `resume_from_checkpoint`. Every process needs the whole of it (DCP may have put a replicated item, such as
    the optimiser's step, in any process's file); the first process of a node downloads it into the node's
    scratch, and the others reuse its copy."""
    latest = latest_checkpoint(store, spec.output.checkpoint_uri)
    if latest is None:
        return None
    step, uri = latest
    local = output_dir.parent / f"{output_dir.name}-resume" / f"checkpoint-{step}"
    with rt.node_first():
        if not local.exists():
            download_dir(store, uri, local)
    log.info("Resuming from checkpoint %d (%s)", step, uri)
    return str(local)
