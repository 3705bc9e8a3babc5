"""A stage run's files in S3 (results.json, progress.json, error.json), read through the types the trainer writes
them with; and what a failed read means: a fault that may pass, or a pipeline field a user must fix."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from pydantic import ValidationError

from gradatim.api.pipeline import TrainingPipeline
from gradatim.api.runfiles import ERROR_FILE, PROGRESS_FILE, RESULTS_FILE, RunProgress, RunResults, TrainerError
from gradatim.planner.observe import StorageFault
from gradatim.storage.s3 import read_json

log = logging.getLogger("gradatim.storage")

STORAGE_ERRORS = (BotoCoreError, ClientError)
# S3 error codes a user fixes in the pipeline's storage settings; every other code (5xx, SlowDown, timeouts) may pass.
REFUSED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "InvalidBucketName")


@dataclass(frozen=True)
class RunFiles:
    results: RunResults | None = None
    progress: RunProgress | None = None
    error: TrainerError | None = None


def read_run_files(store: Any, output_uri: str, *, results: bool, progress: bool, error: bool) -> RunFiles:
    """The files asked for, each None when not written (yet). Raises botocore's errors when S3 cannot be read."""
    return RunFiles(
        results=_read(store, output_uri + RESULTS_FILE, RunResults) if results else None,
        progress=_read(store, output_uri + PROGRESS_FILE, RunProgress) if progress else None,
        error=_read(store, output_uri + ERROR_FILE, TrainerError) if error else None,
    )


def _read(store: Any, uri: str, model: type) -> Any:
    record = read_json(store, uri)
    if record is None:
        return None
    try:
        return model.model_validate(record)
    except ValidationError as err:  # written by another trainer version: the job's own state still says how it went
        log.warning("Ignored %s: not a %s: %s", uri, model.__name__, err)
        return None


def storage_fault(pipeline: TrainingPipeline, uri: str, err: Exception) -> StorageFault:
    """What went wrong reading S3, naming the pipeline field a user would check, and whether it may pass."""
    where = f"TrainingPipeline {pipeline.metadata['name']}"
    storage = pipeline.spec.storage
    code = str(err.response.get("Error", {}).get("Code", "")) if isinstance(err, ClientError) else ""
    if code == "NoSuchBucket":
        return StorageFault(f"{where} spec.storage.bucket: bucket {storage.bucket!r} does not exist", transient=False)
    if code in REFUSED:
        return StorageFault(f"{where} spec.storage.secretRef: the credentials were refused reading {uri} ({code})", transient=False)
    if isinstance(err, EndpointConnectionError):
        endpoint = storage.endpoint or "the Secret's AWS_ENDPOINT_URL"
        return StorageFault(f"{where} spec.storage.endpoint: cannot reach S3 at {endpoint}: {err}", transient=True)
    return StorageFault(f"{where} spec.storage: cannot read {uri}: {err}", transient=True)
