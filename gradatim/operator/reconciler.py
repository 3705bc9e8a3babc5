"""The imperative shell around the planner: read the world, plan, act, write status.

Work arrives as keys on a queue (from watch events and a periodic resync); each key is reconciled by one
worker at a time, so no stage is acted on twice at once. State lives in the objects' status, never here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
from kubernetes import client
from kubernetes.client.rest import ApiException

from gradatim import s3
from gradatim.api import TrainingPipeline, TrainingStage
from gradatim.operator import kube
from gradatim.operator.metrics import OperatorMetrics
from gradatim.planner.graph import cache_keys
from gradatim.planner.jobs import JobState, job_state
from gradatim.planner.pipeline import plan_pipeline
from gradatim.planner.render import job_name, stage_output_uri
from gradatim.planner.stage import CreateJob, DeleteJob, Observed, Plan, SetJobSuspended, plan_stage

log = logging.getLogger("gradatim.operator")

POLL_RUNNING_SECONDS = 5.0
ERROR_BACKOFF_SECONDS = (1, 2, 5, 10, 30, 60)


@dataclass(frozen=True, order=True)
class Key:
    kind: str  # "stage" or "pipeline"
    namespace: str
    name: str


class WorkQueue:
    """A deduplicating queue: a key waits at most once, and is never handed to two workers at once."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._waiting: set[Key] = set()
        self._busy: set[Key] = set()
        self._again: set[Key] = set()

    def add(self, key: Key) -> None:
        if key in self._busy:
            self._again.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Key, seconds: float) -> None:
        asyncio.get_running_loop().call_later(max(seconds, 0.0), self.add, key)

    async def get(self) -> Key:
        key = await self._queue.get()
        self._waiting.discard(key)
        self._busy.add(key)
        return key

    def done(self, key: Key) -> None:
        self._busy.discard(key)
        if key in self._again:
            self._again.discard(key)
            self.add(key)

    def __len__(self) -> int:
        return self._queue.qsize()


def _now() -> datetime:
    return datetime.now(timezone.utc)


def storage_problem(pipeline: TrainingPipeline, uri: str, err: Exception) -> str:
    """What went wrong reading S3, naming the pipeline field a user would fix."""
    where = f"TrainingPipeline {pipeline.metadata['name']}"
    code = err.response.get("Error", {}).get("Code", "") if isinstance(err, ClientError) else ""
    if isinstance(err, EndpointConnectionError):
        endpoint = pipeline.spec.storage.endpoint or "the Secret's AWS_ENDPOINT_URL"
        return f"{where} spec.storage.endpoint: cannot reach S3 at {endpoint}: {err}"
    if code == "NoSuchBucket":
        return f"{where} spec.storage.bucket: bucket {pipeline.spec.storage.bucket!r} does not exist"
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403"):
        return f"{where} spec.storage.secretRef: the credentials were refused reading {uri} ({code})"
    return f"{where} spec.storage: cannot read {uri}: {err}"


class Reconciler:
    def __init__(self, api: client.ApiClient, metrics: OperatorMetrics) -> None:
        self.api = api
        self.metrics = metrics
        self.queue = WorkQueue()
        self._failures: dict[Key, int] = {}
        self.dependency_latencies: list[float] = []
        self._s3_clients: dict[tuple, Any] = {}  # a connection cache, not state: losing it changes no decision

    # -- the loop ---------------------------------------------------------------------------------------

    async def run_worker(self) -> None:
        while True:
            key = await self.queue.get()
            self.metrics.queue_depth.set(len(self.queue))
            started = time.monotonic()
            try:
                follow_up, requeue = await asyncio.to_thread(self.reconcile, key)
            except Exception as err:  # one bad object must not stop the others
                failures = self._failures.get(key, 0)
                self._failures[key] = failures + 1
                delay = ERROR_BACKOFF_SECONDS[min(failures, len(ERROR_BACKOFF_SECONDS) - 1)]
                log.exception("Reconcile of %s %s/%s failed; retrying in %ss: %s", key.kind, key.namespace, key.name, delay, err)
                self.metrics.reconcile_errors.labels(key.kind).inc()
                self.metrics.reconciles.labels(key.kind, "error").inc()
                self.queue.done(key)
                self.queue.add_after(key, delay)
                continue
            self._failures.pop(key, None)
            self.metrics.reconcile_duration.labels(key.kind).observe(time.monotonic() - started)
            self.metrics.reconciles.labels(key.kind, "ok").inc()
            self.queue.done(key)
            for other in follow_up:
                self.queue.add(other)
            if requeue is not None:
                self.queue.add_after(key, requeue)

    def reconcile(self, key: Key) -> tuple[Iterable[Key], float | None]:
        if key.kind == "pipeline":
            return self.reconcile_pipeline(key.namespace, key.name), None
        return self.reconcile_stage(key.namespace, key.name)

    # -- stages -----------------------------------------------------------------------------------------

    def _siblings(self, namespace: str, pipeline: str) -> dict[str, TrainingStage]:
        bodies = [b for b in kube.list_stages(self.api, namespace) if b.get("spec", {}).get("pipeline") == pipeline]
        return {b["metadata"]["name"]: kube.parse_stage(b) for b in bodies}

    def _storage(self, pipeline: TrainingPipeline, namespace: str) -> tuple[Any, list[str]]:
        """An S3 client with the pipeline's credentials, or the problems that prevent one, naming the field."""
        ref = pipeline.spec.storage.secret_ref
        where = f"TrainingPipeline {pipeline.metadata['name']}"
        data = kube.read_secret(self.api, namespace, ref.name)
        if data is None:
            return None, [f"{where} spec.storage.secretRef.name: Secret {ref.name!r} not found in namespace {namespace}; create it with the S3 credentials"]
        absent = [k for k in (ref.access_key_id_key, ref.secret_access_key_key) if k not in data]
        if absent:
            return None, [f"{where} spec.storage.secretRef: Secret {ref.name!r} has no key {', '.join(absent)}"]
        storage = pipeline.spec.storage
        identity = (storage.endpoint or data.get("AWS_ENDPOINT_URL"), data[ref.access_key_id_key], data[ref.secret_access_key_key], storage.region)
        if identity not in self._s3_clients:  # building a boto3 client costs ~0.3 s and megabytes: reuse them
            self._s3_clients[identity] = s3.client_from_secret(data, ref.access_key_id_key, ref.secret_access_key_key, storage.endpoint, storage.region)
        return self._s3_clients[identity], []

    def _job_pods(self, namespace: str, stage: str, job: str) -> list[dict[str, Any]]:
        try:
            return kube.list_job_pods(self.api, namespace, stage, job)
        except ApiException as err:  # the pods only sharpen the message; Kubeflow's condition still says the job failed
            log.warning("Could not list the pods of PyTorchJob %s/%s: %s", namespace, job, err.reason)
            return []

    def reconcile_stage(self, namespace: str, name: str) -> tuple[list[Key], float | None]:
        body = kube.get_stage(self.api, namespace, name)
        if body is None:
            self.metrics.forget_stage(namespace, name)
            return [], None
        stage = kube.parse_stage(body)
        pipe_body = kube.get_pipeline(self.api, namespace, stage.spec.pipeline)
        pipeline = kube.parse_pipeline(pipe_body) if pipe_body else None
        if pipe_body is not None:
            kube.ensure_owned_by_pipeline(self.api, body, pipe_body)
        siblings = self._siblings(namespace, stage.spec.pipeline)
        siblings[name] = stage
        status = stage.status
        # The current attempt's job; with none recorded, the next attempt's, which a restart may have left behind.
        current = status.job_name if status and status.job_name else job_name(name, (status.attempt if status else 0) + 1)
        job = kube.get_job(self.api, namespace, current)
        results = progress = error = None
        problems: list[str] = []
        failed = job is not None and job_state(job) is JobState.FAILED
        # Why a failed attempt failed: its containers' exit codes and termination messages (an OOM kill leaves no other trace).
        pods = self._job_pods(namespace, name, job["metadata"]["name"]) if failed else []
        if pipeline is not None:
            key = cache_keys(siblings, pipeline.spec.image).get(name)
            store, problems = self._storage(pipeline, namespace)
            if store is not None and key is not None:
                out = stage_output_uri(pipeline, namespace, stage, key)
                try:
                    results, progress = s3.read_run_files(store, out, running=job is not None)
                    error = s3.read_error(store, out) if failed else None
                except (BotoCoreError, ClientError) as err:
                    problems = [storage_problem(pipeline, out, err)]
                    self.metrics.s3_errors.labels(namespace, stage.spec.pipeline, "GetObject").inc()  # read_json is the operator's one S3 call
        now = _now()
        plan = plan_stage(Observed(stage, pipeline, siblings, job, results, progress, now, tuple(problems), error, tuple(pods)))
        log.debug("Planned stage %s/%s: %s %s: %s", namespace, name, plan.status.phase, plan.reason, plan.message)
        self._act(stage, plan, siblings, now)
        changed = self._write_status(body, stage, plan)
        self.metrics.observe_stage(stage.model_copy(update={"status": plan.status}))
        follow_up = [Key("pipeline", namespace, stage.spec.pipeline)] if changed else []
        if changed:
            follow_up += [Key("stage", namespace, n) for n, s in siblings.items() if name in s.spec.depends_on]
        requeue = plan.requeue_after
        if plan.status.phase in ("Running", "Suspended") or problems:
            requeue = min(requeue or POLL_RUNNING_SECONDS, POLL_RUNNING_SECONDS)
        return follow_up, requeue

    def _act(self, stage: TrainingStage, plan: Plan, siblings: dict[str, TrainingStage], now: datetime) -> None:
        ns, labels = stage.metadata["namespace"], (stage.metadata["namespace"], stage.spec.pipeline, stage.spec.type)
        for action in plan.actions:
            if isinstance(action, CreateJob):
                _, created = kube.create_or_adopt_job(self.api, action.job, action.configmap)
                log.info("%s PyTorchJob %s/%s", "Created" if created else "Adopted", ns, action.job["metadata"]["name"])
                if created:
                    self.metrics.job_creations.labels(*labels).inc()
                    if plan.status.retries:
                        self.metrics.retries.labels(*labels).inc()
                    self._observe_dependency_latency(stage, siblings, now)
            elif isinstance(action, SetJobSuspended):
                kube.set_job_suspended(self.api, ns, action.name, action.suspended)
                log.info("%s PyTorchJob %s/%s", "Suspended" if action.suspended else "Resumed", ns, action.name)
            elif isinstance(action, DeleteJob):
                kube.delete_job(self.api, ns, action.name)
                log.info("Deleted PyTorchJob %s/%s: %s", ns, action.name, action.why)

    def _observe_dependency_latency(self, stage: TrainingStage, siblings: dict[str, TrainingStage], now: datetime) -> None:
        finished = [siblings[d].status.completion_time for d in stage.spec.depends_on if siblings[d].status and siblings[d].status.completion_time]
        if finished and len(finished) == len(stage.spec.depends_on):
            latency = max(0.0, (now - max(finished)).total_seconds())
            self.metrics.dependency_to_job.observe(latency)
            self.dependency_latencies.append(latency)

    def _write_status(self, body: dict[str, Any], stage: TrainingStage, plan: Plan) -> bool:
        new = plan.status.to_wire()
        old = body.get("status") or {}
        ns, name = stage.metadata["namespace"], stage.metadata["name"]
        if new == old:
            return False
        kube.replace_status(self.api, kube.STAGES, ns, name, new)
        if old.get("phase") != new.get("phase"):
            self.metrics.stage_transitions.labels(ns, stage.spec.pipeline, stage.spec.type, new["phase"]).inc()
            if new["phase"] == "Cached":
                self.metrics.cache_hits.labels(ns, stage.spec.pipeline, stage.spec.type).inc()
            if plan.status.gate is not None and new["phase"] in ("Succeeded", "Failed"):
                self.metrics.gate_results.labels(ns, stage.spec.pipeline, "passed" if plan.status.gate.passed else "failed").inc()
            if new["phase"] in ("Succeeded", "Failed") and plan.status.start_time and plan.status.completion_time:
                self.metrics.stage_duration.labels(stage.spec.type).observe((plan.status.completion_time - plan.status.start_time).total_seconds())
            log.info("Stage %s/%s is %s: %s", ns, name, new["phase"], plan.message)
        for event in plan.events:
            try:
                kube.post_event(self.api, body, event.type, event.reason, event.message)
            except Exception as err:  # an event is best effort; status already says it
                log.warning("Could not post event for %s/%s: %s", ns, name, err)
        return True

    # -- pipelines --------------------------------------------------------------------------------------

    def reconcile_pipeline(self, namespace: str, name: str) -> list[Key]:
        body = kube.get_pipeline(self.api, namespace, name)
        if body is None:
            return []
        pipeline = kube.parse_pipeline(body)
        stages = self._siblings(namespace, name)
        status = plan_pipeline(pipeline, stages, _now()).to_wire()
        if status != (body.get("status") or {}):
            kube.replace_status(self.api, kube.PIPELINES, namespace, name, status)
        return []

    def resync(self, namespaces: list[str]) -> None:
        """The level-based safety net: every stage and pipeline is queued again, and the per-stage series are
        rebuilt from what the API server holds (dropping stages deleted while a watch event was missed)."""
        custom = client.CustomObjectsApi(self.api)
        if namespaces:
            stages = [b for ns in namespaces for b in kube.list_stages(self.api, ns)]
        else:
            stages = custom.list_cluster_custom_object("gradatim.io", "v1alpha1", kube.STAGES)["items"]
        live = []
        for body in stages:
            stage = kube.parse_stage(body)
            ns, name = stage.metadata["namespace"], stage.metadata["name"]
            live.append((ns, name))
            self.metrics.observe_stage(stage)
            self.queue.add(Key("stage", ns, name))
            self.queue.add(Key("pipeline", ns, stage.spec.pipeline))
        self.metrics.keep_only(live)
