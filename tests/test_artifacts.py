"""Artifacts on the real SeaweedFS: multipart uploads, a manifest written last, verified downloads."""

from __future__ import annotations

import os
import uuid

import pytest
from boto3.s3.transfer import TransferConfig

from gradatim.trainer.artifacts import MANIFEST, IncompleteArtifact, download_dir, read_manifest, upload_dir

SMALL_PARTS = TransferConfig(multipart_threshold=5 * 2**20, multipart_chunksize=5 * 2**20)


@pytest.fixture
def store(cluster):
    return cluster.s3_client()


def test_round_trip_with_multipart_and_manifest(cluster, store, tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "sub" / "weights.bin").write_bytes(os.urandom(12 * 2**20))  # three 5 MiB parts
    uri = f"s3://{cluster.s3_bucket}/artifacts/{uuid.uuid4().hex}/model/"
    manifest = upload_dir(store, src, uri, SMALL_PARTS)
    assert set(manifest["files"]) == {"config.json", "sub/weights.bin"}
    assert read_manifest(store, uri) == manifest
    out = download_dir(store, uri, tmp_path / "copy", SMALL_PARTS)
    assert (out / "sub" / "weights.bin").read_bytes() == (src / "sub" / "weights.bin").read_bytes()
    assert not (out / MANIFEST).exists()


def test_a_prefix_without_manifest_is_not_an_artifact(cluster, store, tmp_path):
    uri = f"s3://{cluster.s3_bucket}/artifacts/{uuid.uuid4().hex}/half/"
    store.put_object(Bucket=cluster.s3_bucket, Key=uri.split("/", 3)[3] + "part.bin", Body=b"x")
    with pytest.raises(IncompleteArtifact, match="no _manifest.json"):
        download_dir(store, uri, tmp_path / "half")
    assert not (tmp_path / "half").exists()


def test_a_corrupted_file_is_caught(cluster, store, tmp_path):
    src = tmp_path / "data"
    src.mkdir()
    (src / "train.jsonl").write_text('{"x": 1}\n')
    uri = f"s3://{cluster.s3_bucket}/artifacts/{uuid.uuid4().hex}/data/"
    upload_dir(store, src, uri)
    store.put_object(Bucket=cluster.s3_bucket, Key=uri.split("/", 3)[3] + "train.jsonl", Body=b'{"x": 2}\n')
    with pytest.raises(IncompleteArtifact, match="does not match its manifest"):
        download_dir(store, uri, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()
