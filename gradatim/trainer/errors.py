"""Why an attempt failed, in one line a user can act on: which field or input, what is wrong, what to change.

`classify` turns an exception into a `TrainerError`; `report` writes it where the operator reads it: `error.json`
beside results.json (rank 0) and the container's termination message (every rank; the first to fail wins).
The traceback stays in the pod log.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

from gradatim.api.resolved import ResolvedInputs, ResolvedSource, ResolvedStageSpec
from gradatim.api.runfiles import ERROR_FILE, TERMINATION_LOG, TERMINATION_LOG_ENV, TrainerError, memory_knobs
from gradatim.trainer.artifacts import ArtifactMissing, IncompleteArtifact
from gradatim.trainer.sources import InputError, SourceError

log = logging.getLogger("gradatim.trainer")
EXIT_CODE = 1
DENIED = ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden")
MISSING = ("NoSuchKey", "404", "NotFound")


class ParamError(ValueError):
    """A hyperparameter that does not work out for this run (e.g. batchSize against the processes); `param` is
    its name in the stage's block, camelCase, or a whole field path starting `spec.`."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def one_line(text: str, limit: int = 300) -> str:
    text = re.sub(r"\s+", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def field_of(source: ResolvedSource, inputs: ResolvedInputs) -> str:
    """The spec field an input came from: inputs.model, inputs.data[i] or inputs.evalData[i]."""
    if inputs.model is not None and source == inputs.model:
        return "inputs.model"
    for name, sources in (("data", inputs.data), ("evalData", inputs.eval_data)):
        for i, candidate in enumerate(sources):
            if candidate == source:
                return f"inputs.{name}[{i}]"
    return "inputs"


def is_out_of_memory(err: BaseException) -> bool:
    import torch

    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def classify(err: BaseException, spec: ResolvedStageSpec, rank: int = 0, device: str = "cpu") -> TrainerError:
    """The one-line record of `err`, naming the field or input to change."""

    def record(kind: str, field: str | None, message: str) -> TrainerError:
        return TrainerError(message=message, field=field, kind=kind, rank=rank, attempt=spec.attempt, exit_code=EXIT_CODE)

    cause = err.__cause__ if isinstance(err, InputError) and err.__cause__ is not None else err
    if is_out_of_memory(cause):
        advice = memory_knobs(spec.type) + ("" if device.startswith("cuda") else ", or raise spec.resources.memory")
        field = advice.split()[1] if advice.startswith("lower ") else "spec.resources.memory"
        return record("OutOfMemory", field, f"out of memory on {device}: {one_line(cause, 200)}: {advice}")
    if isinstance(err, InputError):
        return _input_failure(err.source, cause, spec, record)
    if isinstance(err, ParamError):
        field = err.param if err.param.startswith("spec.") else f"{spec.type}.{err.param}"
        return record("InvalidParams", field, f"{field}: {one_line(err)}")
    if isinstance(err, SourceError):
        field = m.group(1) if (m := re.match(r"(inputs\.[A-Za-z]+(\[\d+\])?)", str(err))) else "inputs"
        text = str(err) if str(err).startswith(field) else f"{field}: {err}"
        return record("InvalidInput", field, one_line(text))
    if (endpoint := _endpoint_failure(cause, spec, record)) is not None:
        return endpoint
    if isinstance(err, EndpointConnectionError):
        return record("Storage", "spec.storage.endpoint", f"spec.storage.endpoint: cannot reach S3 at {spec.storage.endpoint or 'AWS'}: {one_line(err)}; "
                      "check the endpoint and the network")
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return record("Storage", "spec.storage.bucket", f"spec.storage.bucket: bucket {spec.storage.bucket!r} does not exist; create it or fix the pipeline's storage")
        if code in DENIED:
            return record("Storage", "spec.storage.secretRef", f"spec.storage.secretRef: S3 refused the credentials writing under {spec.output.uri} ({code}); "
                          "give the pipeline's Secret read and write access")
        return record("Storage", "spec.storage", f"spec.storage: S3 failed under {spec.output.uri}: {one_line(err)}; see the pod log")
    return record("Unexpected", None, f"{type(err).__name__}: {one_line(err)}; see the pod log")


def _endpoint_failure(err: BaseException, spec: ResolvedStageSpec, record: Any) -> TrainerError | None:
    """An OpenAI-compatible teacher's failure, after the client's own retries: unreachable or overloaded is
    transient (a retry resumes from the chunks written), a refused key, an unknown model or a refused request is not."""
    try:
        import openai
    except ImportError:
        return None
    if not isinstance(err, openai.OpenAIError) or spec.inputs.model is None or spec.inputs.model.endpoint is None:
        return None
    endpoint = spec.inputs.model.endpoint
    where = f"inputs.model.endpoint ({endpoint.url}, model {endpoint.model})"
    kept = "the chunks written so far are kept and the stage's retry resumes from them"
    if isinstance(err, (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError)) or (
            isinstance(err, openai.APIStatusError) and err.status_code >= 500):
        return record("Endpoint", "inputs.model.endpoint", f"{where}: no answer after {endpoint.max_retries} retries ({one_line(err, 160)}); {kept}; "
                      "check the server, or raise endpoint.maxRetries or endpoint.timeoutSeconds")
    if isinstance(err, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return record("InvalidInput", "inputs.model.endpoint.apiKeySecretRef", f"{where}: the server refused the API key ({err.status_code}); "
                      "check the Secret that inputs.model.endpoint.apiKeySecretRef names")
    if isinstance(err, openai.NotFoundError):
        return record("InvalidInput", "inputs.model.endpoint.model", f"{where}: the server has no such model or path (404); "
                      "check endpoint.url (it ends before /chat/completions, e.g. .../v1) and endpoint.model against the server's /v1/models")
    if isinstance(err, openai.APIStatusError):
        return record("InvalidInput", "inputs.model.endpoint", f"{where}: the server refused the request ({err.status_code}: {one_line(err, 200)}); "
                      "check the generate settings it does not accept")
    return record("Endpoint", "inputs.model.endpoint", f"{where}: {type(err).__name__}: {one_line(err)}; {kept}")


def _input_failure(source: ResolvedSource, cause: BaseException, spec: ResolvedStageSpec, record: Any) -> TrainerError:
    field = field_of(source, spec.inputs)
    where = f"{field} (hf: {source.hf})" if source.hf else (f"{field} ({source.uri})" if source.uri else field)
    upstream = f"check the upstream stage {source.produced_by.stage} or the URI" if source.produced_by else "check the URI"
    if isinstance(cause, SourceError):
        return record("InvalidInput", field, f"{where}: {one_line(cause)}")
    if isinstance(cause, ArtifactMissing):
        return record("MissingInput", field, f"{where}: no such artifact (no _manifest.json: nothing was written there, or its upload never finished); {upstream}")
    if isinstance(cause, IncompleteArtifact):
        return record("MissingInput", field, f"{where}: the artifact is damaged: {one_line(cause)}; run the upstream stage again")
    if isinstance(cause, ClientError):
        code = cause.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return record("MissingInput", field, f"{where}: the bucket does not exist; {upstream}")
        if code in MISSING:
            return record("MissingInput", field, f"{where}: no such object; {upstream}")
        if code in DENIED:
            return record("Storage", field, f"{where}: S3 refused the credentials ({code}); give the pipeline's Secret (spec.storage.secretRef) read access")
        return record("Storage", field, f"{where}: S3 failed: {one_line(cause)}; {upstream}")
    if isinstance(cause, BotoCoreError):
        return record("Storage", field, f"{where}: cannot read from S3: {one_line(cause)}; check spec.storage.endpoint")
    if source.hf and isinstance(cause, (OSError, ValueError)):
        return record("ModelLoad", field, f"{where}: cannot load from the Hugging Face Hub: {one_line(cause, 200)}; check the id, revision and HF token Secret")
    if isinstance(cause, (OSError, ValueError)):
        return record("ModelLoad", field, f"{where}: cannot load it: {one_line(cause, 200)}; check that it holds what the stage needs (a transformers model, .jsonl or .parquet files)")
    return record("InvalidInput", field, f"{where}: {type(cause).__name__}: {one_line(cause)}; see the pod log")


def termination_log_path() -> str | None:
    """Where this container's termination message goes: the env override, else the kubelet's file when it exists
    (never created outside a pod)."""
    path = os.environ.get(TERMINATION_LOG_ENV)
    if path:
        return path
    return TERMINATION_LOG if os.path.exists(TERMINATION_LOG) else None


def write_termination_message(error: TrainerError) -> None:
    """The record as the container's termination message. The ranks of one node share the file: the first to
    fail writes it, as the first failure is the cause and the others' are echoes."""
    path = termination_log_path()
    if path is None:
        return
    try:
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            if os.fstat(f.fileno()).st_size == 0:
                f.write(error.termination_message())
    except OSError as err:
        log.warning("Could not write the termination message to %s: %s", path, err)


def report(error: TrainerError, spec: ResolvedStageSpec | None, store: Any | None, is_rank0: bool) -> None:
    """Logs the one line, writes the termination message and, on rank 0, error.json under the output."""
    log.error("Failed: %s", error.message)
    write_termination_message(error)
    if is_rank0 and spec is not None and store is not None:
        from gradatim.storage.s3 import write_json

        try:
            write_json(store, spec.output.uri + ERROR_FILE, error.to_wire())
        except Exception as err:  # the store may be what failed; the termination message still says why
            log.warning("Could not write %s: %s", spec.output.uri + ERROR_FILE, err)
