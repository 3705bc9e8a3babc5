"""The S3 store of a local run: the one the environment names (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`), or else a SeaweedFS started under the run's state dir, with the control plane's own
command line, kept between runs (so a re-run finds its cache) and stopped when the run ends."""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from gradatim.storage import s3
from gradatim.api import TrainingPipeline
from gradatim.cluster import components, health
from gradatim.cluster.controlplane import COMPONENT_PORTS, STOP_GRACE_SECONDS, START_TIMEOUT_SECONDS, write_private
from gradatim.cluster.errors import ClusterError
from gradatim.cluster.layout import StateLayout
from gradatim.cluster.process import is_running, pick_free_ports, require_running, spawn, stop_groups, tail, wait_for
from gradatim.cluster.progress import Progress
from gradatim.cluster.render import render_s3_identities
from gradatim.cluster.state import S3_REGION

log = logging.getLogger("gradatim.local")

ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


class StorageError(RuntimeError):
    """S3 cannot be used; the message says what to set or fix."""


@dataclass(frozen=True)
class Storage:
    """Where and as whom the run reads and writes S3."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    origin: str
    """For humans: `AWS_ENDPOINT_URL` or `SeaweedFS in <dir>`."""

    def secret_data(self, pipeline: TrainingPipeline) -> dict[str, bytes]:
        """The Secret `spec.storage.secretRef` names, as the trainer pods would get it: these credentials."""
        ref = pipeline.spec.storage.secret_ref
        data = {ref.access_key_id_key: self.access_key, ref.secret_access_key_key: self.secret_key, "AWS_ENDPOINT_URL": self.endpoint}
        return {k: v.encode() for k, v in data.items()}

    def quick_client(self) -> Any:
        """A fast-failing client for the run's small reads, built as the operator builds its own."""
        return s3.client_from_secret({"k": self.access_key, "s": self.secret_key}, "k", "s", self.endpoint, self.region)

    def client(self) -> Any:
        """A retrying client, for uploads."""
        return s3.client(self.endpoint, self.access_key, self.secret_key, self.region)


def from_environment(env: Mapping[str, str], region: str) -> Storage | None:
    """The S3 the environment configures, or None when it names no endpoint."""
    if not env.get("AWS_ENDPOINT_URL"):
        return None
    missing = [k for k in ENV_KEYS[1:] if not env.get(k)]
    if missing:
        raise StorageError(f"AWS_ENDPOINT_URL is set but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not; "
                           "set them, or unset AWS_ENDPOINT_URL to let the run start its own SeaweedFS")
    return Storage(env["AWS_ENDPOINT_URL"], env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], region, "AWS_ENDPOINT_URL")


def check_bucket(storage: Storage, pipeline: TrainingPipeline) -> None:
    """Fails before anything runs when the pipeline's bucket cannot be read, naming what to fix."""
    bucket, where = pipeline.spec.storage.bucket, f"TrainingPipeline {pipeline.metadata['name']}"
    try:
        storage.quick_client().head_bucket(Bucket=bucket)
    except EndpointConnectionError as err:
        raise StorageError(f"cannot reach S3 at {storage.endpoint} ({storage.origin}): {err}") from err
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(f"{where} spec.storage.bucket: bucket {bucket!r} does not exist at {storage.endpoint} ({storage.origin}); create it") from err
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise StorageError(f"S3 at {storage.endpoint} refused AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for bucket {bucket!r} ({code})") from err
        raise StorageError(f"cannot read bucket {bucket!r} at {storage.endpoint}: {err}") from err
    except BotoCoreError as err:
        raise StorageError(f"cannot read bucket {bucket!r} at {storage.endpoint}: {err}") from err


class SeaweedFS:
    """SeaweedFS (master, volume, filer, S3 gateway) in `root`: data, identities, ports and log, kept between runs."""

    PORTS = COMPONENT_PORTS["seaweedfs"]

    def __init__(self, root: Path) -> None:
        self.layout = StateLayout(Path(root))
        self.record = self.layout.root / "process.json"  # pid, command, ports, credentials of the last start
        self.pid: int | None = None

    @property
    def log_file(self) -> Path:
        return self.layout.log_file("seaweedfs")

    def start(self, bucket: str, progress: Progress) -> Storage:
        root = self.layout.root
        root.mkdir(parents=True, exist_ok=True)
        self.layout.seaweedfs_dir.mkdir(parents=True, exist_ok=True)
        previous = json.loads(self.record.read_text()) if self.record.exists() else {}
        old_pid, old_command = previous.get("pid"), previous.get("command") or [""]
        if old_pid and is_running(old_pid, old_command[0]):  # a run killed before it could stop its store
            with progress.step(f"Stopped a SeaweedFS left running by an earlier run (pid {old_pid})"):
                stop_groups({"seaweedfs": old_pid}, STOP_GRACE_SECONDS)
        access_key = previous.get("accessKey") or "GRADATIM" + secrets.token_hex(6).upper()
        secret_key = previous.get("secretKey") or secrets.token_urlsafe(30)
        ports = pick_free_ports(self.PORTS, previous.get("ports") or {}, components.HOST)
        write_private(self.layout.s3_config, render_s3_identities(access_key, secret_key))
        command = components.seaweedfs_command(components.find_weed(), self.layout, ports)
        self.pid = spawn(command, self.log_file, cwd=root)
        write_private(self.record, json.dumps({"pid": self.pid, "command": command, "ports": ports, "accessKey": access_key, "secretKey": secret_key}, indent=2))
        storage = Storage(f"http://{components.HOST}:{ports['s3']}", access_key, secret_key, S3_REGION, f"SeaweedFS in {root}")
        try:
            with progress.step(f"SeaweedFS S3 answering at {storage.endpoint} (data in {self.layout.seaweedfs_dir})"):
                def ready() -> bool:
                    require_running("seaweedfs", self.pid, command[0], self.log_file)
                    return health.s3_answering(storage.endpoint, access_key, secret_key, S3_REGION)

                if not wait_for(ready, START_TIMEOUT_SECONDS, interval=0.25):
                    raise ClusterError(f"SeaweedFS not answering after {START_TIMEOUT_SECONDS}s; last lines of {self.log_file}:\n{tail(self.log_file)}")
            with progress.step(f"S3 bucket '{bucket}' exists"):
                client = storage.client()
                if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                    client.create_bucket(Bucket=bucket)
            with progress.step("SeaweedFS reads back what earlier runs wrote"):
                if not wait_for(lambda: reads_back(storage.quick_client(), bucket), START_TIMEOUT_SECONDS, interval=0.5):
                    raise ClusterError(f"SeaweedFS does not read back objects in {bucket!r} after {START_TIMEOUT_SECONDS}s; see {self.log_file}")
        except BaseException:
            self.stop()
            raise
        return storage

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period (the filer takes ~15 s to let go of its S3 subscription)."""
        if self.pid is None:
            return
        left = stop_groups({"seaweedfs": self.pid}, STOP_GRACE_SECONDS)
        if left.get("seaweedfs"):
            log.warning("SeaweedFS processes survived SIGKILL: %s", left["seaweedfs"])
        self.pid = None


def reads_back(client: Any, bucket: str) -> bool:
    """True once an object already in `bucket` (if any) can be read. A restarted SeaweedFS answers S3 requests
    before its volume server has reported its volumes to the master, and until then every read fails."""
    try:
        listed = client.list_objects_v2(Bucket=bucket, MaxKeys=50).get("Contents") or []
        sample = next((o["Key"] for o in listed if o.get("Size", 0) > 0), None)
        if sample is not None:
            client.get_object(Bucket=bucket, Key=sample, Range="bytes=0-0")["Body"].read()
        return True
    except (BotoCoreError, ClientError):
        return False


@contextmanager
def run_storage(pipeline: TrainingPipeline, state_dir: Path, progress: Progress, env: Mapping[str, str] | None = None) -> Iterator[Storage]:
    """The run's S3, checked: the environment's, or a SeaweedFS under `state_dir/s3` for as long as the block runs."""
    env = os.environ if env is None else env
    region = pipeline.spec.storage.region
    storage = from_environment(env, region)
    if storage is not None:
        check_bucket(storage, pipeline)
        yield storage
        return
    seaweed = SeaweedFS(Path(state_dir) / "s3")
    try:
        storage = seaweed.start(pipeline.spec.storage.bucket, progress)
        yield storage
    finally:
        if seaweed.pid is not None:
            with progress.step("Stopped SeaweedFS"):
                seaweed.stop()
