"""The report's I/O: the pipeline and its stages from the API server, each stage's results.json from S3, and
the rendered directory published to S3 next to the outputs.

A caller without Kubernetes (one that already has the TrainingStage objects and an S3 client) needs only
`results_reader` and `publish` from here, around `records_from`, `build_report` and `render_html`.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from kubernetes import client

from gradatim.storage import s3
from gradatim.api import TrainingPipeline, TrainingStage
from gradatim.api.runfiles import RESULTS_FILE
from gradatim.operator import kube
from gradatim.storage.runfiles import read_run_files, storage_fault
from gradatim.planner.render import stage_output_uri
from gradatim.report.build import Report, build_report, records_from
from gradatim.report.render import PLOTS

NOTES_ANNOTATION = "gradatim.io/report-notes"


class ReportError(RuntimeError):
    """What stops a report, naming the object or field to fix."""


@dataclass(frozen=True)
class Collected:
    report: Report
    store: Any
    """The S3 client with the pipeline's credentials, for `publish`."""
    uri: str
    """Where the report belongs: `report_uri` of the pipeline."""


def collect_report(api: client.ApiClient, namespace: str, name: str, now: datetime | None) -> Collected:
    """The report of pipeline `name` as the API server and S3 have it now (stamped `now`, when given)."""
    pipeline = read_pipeline(api, namespace, name)
    store = pipeline_store(api, pipeline, namespace)
    records = records_from(read_stages(api, namespace, name), results_reader(store, pipeline, namespace))
    notes = (pipeline.metadata.get("annotations") or {}).get(NOTES_ANNOTATION, "")
    report = build_report(namespace, name, records, notes=notes, generated_at=now)
    return Collected(report, store, report_uri(pipeline, namespace))


def read_pipeline(api: client.ApiClient, namespace: str, name: str) -> TrainingPipeline:
    body = kube.get_pipeline(api, namespace, name)
    if body is None:
        raise ReportError(f"TrainingPipeline {name!r} not found in namespace {namespace}")
    return kube.parse_pipeline(body)


def read_stages(api: client.ApiClient, namespace: str, pipeline: str) -> list[TrainingStage]:
    return [kube.parse_stage(b) for b in kube.list_stages(api, namespace) if b.get("spec", {}).get("pipeline") == pipeline]


def pipeline_store(api: client.ApiClient, pipeline: TrainingPipeline, namespace: str) -> Any:
    """An S3 client with the credentials of the pipeline's `storage.secretRef`, built as the operator builds its own."""
    ref, storage = pipeline.spec.storage.secret_ref, pipeline.spec.storage
    where = f"TrainingPipeline {pipeline.metadata['name']} spec.storage.secretRef"
    data = kube.read_secret(api, namespace, ref.name)
    if data is None:
        raise ReportError(f"{where}.name: Secret {ref.name!r} not found in namespace {namespace}")
    absent = [k for k in (ref.access_key_id_key, ref.secret_access_key_key) if k not in data]
    if absent:
        raise ReportError(f"{where}: Secret {ref.name!r} has no key {', '.join(absent)}")
    return s3.client_from_secret(data, ref.access_key_id_key, ref.secret_access_key_key, storage.endpoint, storage.region)


def results_reader(store: Any, pipeline: TrainingPipeline, namespace: str) -> Callable[[TrainingStage], dict[str, Any] | None]:
    """Reads a stage's results.json under the cache key its status names; None when it has none yet."""

    def read(stage: TrainingStage) -> dict[str, Any] | None:
        key = stage.status.cache_key if stage.status else None
        if key is None:
            return None
        out = stage_output_uri(pipeline, namespace, stage, key)
        try:
            results = read_run_files(store, out, results=True, progress=False, error=False).results
        except (BotoCoreError, ClientError) as err:
            raise ReportError(storage_fault(pipeline, out + RESULTS_FILE, err).message) from err
        return results.model_dump(by_alias=True) if results is not None else None

    return read


def report_uri(pipeline: TrainingPipeline, namespace: str) -> str:
    """`s3://<bucket>/<prefix><namespace>/<pipeline>/report/`, beside the stages' output directories."""
    storage = pipeline.spec.storage
    return f"s3://{storage.bucket}/{storage.prefix}{namespace}/{pipeline.metadata['name']}/report/"


def publish(store: Any, report_dir: Path, uri: str) -> str:
    """Uploads the page and plots `render_html` wrote in `report_dir` (nothing else there) under `uri`, with
    their content types so a browser shows the page rather than downloading it, and index.html last so it never
    names an image not yet there. Returns the page's URI."""
    base = s3.S3Location.parse(uri if uri.endswith("/") else uri + "/")
    files = [report_dir / name for name in PLOTS if (report_dir / name).is_file()] + [report_dir / "index.html"]
    for path in files:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        store.put_object(Bucket=base.bucket, Key=base.key + path.name, Body=path.read_bytes(), ContentType=content_type)
    return base.join("index.html").uri
