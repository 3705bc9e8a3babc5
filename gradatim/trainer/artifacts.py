"""Directories in S3 that appear complete or not at all.

`upload_dir` uploads every file (multipart above a threshold, retried by botocore), then writes
`_manifest.json` last with each file's size and sha256. A reader treats a prefix without a manifest as absent,
and `download_dir` checks every file it reads against the manifest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig

from gradatim.storage.s3 import S3Location, read_json

MANIFEST = "_manifest.json"
TRANSFER = TransferConfig(multipart_threshold=64 * 2**20, multipart_chunksize=64 * 2**20, max_concurrency=8)


class IncompleteArtifact(RuntimeError):
    """The prefix has no manifest (an upload never finished) or a file does not match it."""


class ArtifactMissing(IncompleteArtifact):
    """No manifest under the prefix: nothing was written there, or its upload never finished."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_of(local_dir: Path) -> dict[str, Any]:
    files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file() and p.name != MANIFEST)
    return {"files": {str(p.relative_to(local_dir)): {"size": p.stat().st_size, "sha256": sha256_of(p)} for p in files}}


def upload_dir(store: Any, local_dir: Path, uri: str, transfer: TransferConfig = TRANSFER) -> dict[str, Any]:
    """Uploads `local_dir` under `uri` (a prefix ending in `/`), manifest last. Returns the manifest."""
    manifest = upload_files(store, local_dir, uri, transfer)
    write_manifest(store, uri, manifest["files"])
    return manifest


def upload_files(store: Any, local_dir: Path, uri: str, transfer: TransferConfig = TRANSFER) -> dict[str, Any]:
    """Uploads `local_dir`'s files under `uri` without a manifest: one part of an artifact that is written piece
    by piece (a generate stage's chunks); `write_manifest` completes it. Returns the part's manifest."""
    base = S3Location.parse(uri if uri.endswith("/") else uri + "/")
    manifest = manifest_of(local_dir)
    for rel in manifest["files"]:
        store.upload_file(str(Path(local_dir) / rel), base.bucket, base.key + rel, Config=transfer)
    return manifest


def write_manifest(store: Any, uri: str, files: dict[str, Any]) -> None:
    """Marks the files under `uri` (uploaded before) as one complete artifact."""
    base = S3Location.parse(uri if uri.endswith("/") else uri + "/")
    store.put_object(Bucket=base.bucket, Key=base.key + MANIFEST, Body=json.dumps({"files": files}, indent=1, sort_keys=True).encode(),
                     ContentType="application/json")


def read_manifest(store: Any, uri: str) -> dict[str, Any] | None:
    return read_json(store, uri.rstrip("/") + "/" + MANIFEST)


def download_dir(store: Any, uri: str, local_dir: Path, transfer: TransferConfig = TRANSFER) -> Path:
    """Downloads a complete artifact to `local_dir`, verifying sizes and checksums; the directory appears
    only once everything checked out."""
    manifest = read_manifest(store, uri)
    if manifest is None:
        raise ArtifactMissing(f"{uri} has no {MANIFEST}: the upload never finished, or this is not an artifact")
    base = S3Location.parse(uri if uri.endswith("/") else uri + "/")
    local_dir = Path(local_dir)
    local_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=local_dir.parent))
    try:
        for rel, meta in manifest["files"].items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            store.download_file(base.bucket, base.key + rel, str(target), Config=transfer)
            if target.stat().st_size != meta["size"] or sha256_of(target) != meta["sha256"]:
                raise IncompleteArtifact(f"{uri}{rel} does not match its manifest (size or sha256)")
        if local_dir.exists():
            shutil.rmtree(local_dir)
        staging.rename(local_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return local_dir
