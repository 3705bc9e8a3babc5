"""The reconcile shell's world on Kubernetes: reads come from a watch cache of stages, pipelines and PyTorchJobs
(fed by kopf's watches, parsed once per change), writes go to the API server and, with the object it returns, into
the cache, so the next reconcile sees its own write before the watch brings it back.

No reconcile LISTs anything. The API is asked only where the cache cannot answer: a job or pipeline the cache
has not seen yet (just after start-up), a failed job's pods, a pipeline's Secret (kept a minute)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from gradatim.api import TrainingPipeline, TrainingStage
from gradatim.operator import kube
from gradatim.planner.jobs import KINDS, kind_of
from gradatim.storage import s3

log = logging.getLogger("gradatim.operator")

SECRET_TTL_SECONDS = 60.0  # a rotated S3 credential reaches new reads within this
BACKENDS_TTL_SECONDS = 300.0  # a Kubeflow install or removal reaches `backend: auto` within this


def _trimmed(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object without managedFields (a third of a small object's bytes, and never read here)."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    return {**body, "metadata": meta}


def _version(body: Mapping[str, Any]) -> str | None:
    return (body.get("metadata") or {}).get("resourceVersion")


def _newer(new: Mapping[str, Any], old: str | None) -> bool:
    """Whether `new` is at least as recent as the resourceVersion `old`. resourceVersions are opaque to clients in
    general; etcd's are integers, and a write's response may reach the cache before an older watch event does."""
    if old is None:
        return True
    a, b = _version(new), old
    try:
        return int(a) >= int(b)
    except (TypeError, ValueError):
        return True


class WatchCache:
    """Stages, pipelines and PyTorchJobs as the watches deliver them. Thread-safe: kopf feeds it on its event loop
    while the workers read it from their threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (resourceVersion, object) by (namespace, name): stages and pipelines parsed once per change, and kept
        # parsed only (not as the raw body too: half the memory).
        self._stages: dict[tuple[str, str], tuple[str | None, TrainingStage]] = {}
        self._by_pipeline: dict[tuple[str, str], set[str]] = {}
        self._graph_versions: dict[tuple[str, str], int] = {}  # bumped when a pipeline's stages or their specs change
        self._pipelines: dict[tuple[str, str], tuple[str | None, TrainingPipeline]] = {}
        self._jobs: dict[tuple[str, str], tuple[str | None, dict[str, Any]]] = {}
        # The version a job had when it was dropped: a watch event still in flight with that version or an older
        # one must not bring a deleted job back (a failed attempt would look pending again).
        self._dropped_jobs: dict[tuple[str, str], str | None] = {}

    # -- fed by the watches and by our own writes -------------------------------------------------------

    def _put(self, table: dict, body: Mapping[str, Any], parse: Callable[[dict[str, Any]], Any],
             indexed: Callable[[tuple[str, str], Any, Any], None] | None = None) -> Any:
        """Stores `body` parsed, unless `table` holds a newer version; returns what the table holds after."""
        body = _trimmed(body)
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        with self._lock:
            old = table.get(key)
        if old is not None and not _newer(body, old[0]):
            return old[1]
        parsed = parse(body)  # outside the lock: the slow part
        with self._lock:
            old = table.get(key)
            if old is not None and not _newer(body, old[0]):  # a newer one came while this was parsed
                return old[1]
            table[key] = (_version(body), parsed)
            if indexed is not None:
                indexed(key, old[1] if old is not None else None, parsed)
        return parsed

    def put_stage(self, body: Mapping[str, Any]) -> TrainingStage:
        return self._put(self._stages, body, kube.parse_stage, self._index_stage)

    def _index_stage(self, key: tuple[str, str], old: TrainingStage | None, stage: TrainingStage) -> None:
        """Keeps the stages-by-pipeline index, and bumps the graph version where a stage came, moved or got a new spec."""
        namespace, name = key
        if old is None or old.metadata.get("generation") != stage.metadata.get("generation") or old.spec.pipeline != stage.spec.pipeline:
            self._bump(namespace, stage.spec.pipeline)
        if old is not None:
            if old.spec.pipeline != stage.spec.pipeline:
                self._bump(namespace, old.spec.pipeline)
            self._by_pipeline.get((namespace, old.spec.pipeline), set()).discard(name)
        self._by_pipeline.setdefault((namespace, stage.spec.pipeline), set()).add(name)

    def _bump(self, namespace: str, pipeline: str) -> None:
        self._graph_versions[(namespace, pipeline)] = self._graph_versions.get((namespace, pipeline), 0) + 1

    def drop_stage(self, namespace: str, name: str) -> None:
        with self._lock:
            old = self._stages.pop((namespace, name), None)
            if old is not None:
                self._by_pipeline.get((namespace, old[1].spec.pipeline), set()).discard(name)
                self._bump(namespace, old[1].spec.pipeline)

    def put_pipeline(self, body: Mapping[str, Any]) -> TrainingPipeline:
        return self._put(self._pipelines, body, kube.parse_pipeline)

    def drop_pipeline(self, namespace: str, name: str) -> None:
        with self._lock:
            self._pipelines.pop((namespace, name), None)

    def put_job(self, body: Mapping[str, Any]) -> None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        with self._lock:
            if key in self._dropped_jobs:
                dropped = self._dropped_jobs[key]
                if dropped is not None and _version(body) == dropped or not _newer(body, dropped):
                    return
                del self._dropped_jobs[key]
        self._put(self._jobs, body, lambda job: job)  # jobs are read as the API server wrote them

    def drop_job(self, namespace: str, name: str) -> None:
        with self._lock:
            old = self._jobs.pop((namespace, name), None)
            if old is not None:
                if len(self._dropped_jobs) > 10_000:  # only in-flight events matter; old tombstones can go
                    self._dropped_jobs.clear()
                self._dropped_jobs[(namespace, name)] = old[0]

    # -- read by the shell ------------------------------------------------------------------------------

    def stage(self, namespace: str, name: str) -> TrainingStage | None:
        with self._lock:
            found = self._stages.get((namespace, name))
        return found[1] if found else None

    def pipeline_stages(self, namespace: str, pipeline: str) -> dict[str, TrainingStage]:
        with self._lock:
            names = list(self._by_pipeline.get((namespace, pipeline), ()))
            return {n: self._stages[(namespace, n)][1] for n in names if (namespace, n) in self._stages}

    def pipeline(self, namespace: str, name: str) -> TrainingPipeline | None:
        with self._lock:
            found = self._pipelines.get((namespace, name))
        return found[1] if found else None

    def graph_version(self, namespace: str, pipeline: str) -> int:
        with self._lock:
            return self._graph_versions.get((namespace, pipeline), 0)

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._jobs.get((namespace, name))
        return found[1] if found else None

    def all_stages(self) -> list[TrainingStage]:
        with self._lock:
            return [s for _, s in self._stages.values()]

    def keys(self, plural: str) -> set[tuple[str, str]]:
        """(namespace, name) of every cached object of `plural`, for checking the cache against a LIST."""
        with self._lock:
            held = {"stages": self._stages, "pipelines": self._pipelines, "jobs": self._jobs}[plural]
            return set(held)


class KubeWorld:
    """`gradatim.reconcile.world.World` over the API server, reading through a `WatchCache`."""

    def __init__(self, api: client.ApiClient, cache: WatchCache) -> None:
        self.api = api
        self.cache = cache
        self._secrets: dict[tuple[str, str], tuple[float, dict[str, str]]] = {}
        self._s3_clients: dict[tuple, Any] = {}  # building a boto3 client costs ~0.3 s and megabytes: reuse them
        self._lock = threading.Lock()
        self._backends: tuple[float, frozenset[str]] | None = None

    # -- reads ------------------------------------------------------------------------------------------

    def stage(self, namespace: str, name: str) -> TrainingStage | None:
        return self.cache.stage(namespace, name)

    def pipeline(self, namespace: str, name: str) -> TrainingPipeline | None:
        found = self.cache.pipeline(namespace, name)
        if found is None:  # not yet seen by the watch (start-up), or really absent: ask, rather than call it missing
            body = kube.get_pipeline(self.api, namespace, name)
            found = self.cache.put_pipeline(body) if body is not None else None
        return found

    def pipeline_stages(self, namespace: str, pipeline: str) -> dict[str, TrainingStage]:
        return self.cache.pipeline_stages(namespace, pipeline)

    def graph_version(self, namespace: str, pipeline: str) -> int:
        return self.cache.graph_version(namespace, pipeline)

    def installed_backends(self) -> frozenset[str]:
        """Discovery, asked again every few minutes: Trainer v2 may be installed (or the v1 operator removed)
        while the operator runs."""
        now = time.monotonic()
        if self._backends is None or now - self._backends[0] > BACKENDS_TTL_SECONDS:
            try:
                self._backends = (now, kube.installed_backends(self.api))
            except ApiException as err:
                log.warning("Could not read which Kubeflow job kinds are served: %s", err.reason)
                return self._backends[1] if self._backends else frozenset({"pytorchjob"})
        return self._backends[1]

    def job(self, namespace: str, name: str, backend: str) -> dict[str, Any] | None:
        kind = KINDS[backend]
        found = self.cache.job(namespace, name)
        if found is not None and kind_of(found) is not kind:
            found = None
        if found is None:
            stage = self._stage_naming(namespace, name)
            if stage:  # the status names it: never take "not in the cache yet" for "gone", or a second attempt starts
                found = kube.get_job(self.api, namespace, name, kind)
                if found is not None:
                    self.cache.put_job(found)
        return found

    def _stage_naming(self, namespace: str, job: str) -> bool:
        stage = self.cache.stage(namespace, job.rsplit("-a", 1)[0])
        return stage is not None and stage.status is not None and stage.status.job_name == job

    def job_pods(self, namespace: str, stage: str, job: str, backend: str) -> list[dict[str, Any]]:
        try:
            return kube.list_job_pods(self.api, namespace, stage, job, KINDS[backend])
        except ApiException as err:  # the pods only sharpen the message; Kubeflow's condition still says the job failed
            log.warning("Could not list the pods of %s %s/%s: %s", KINDS[backend].kind, namespace, job, err.reason)
            return []

    def job_events(self, namespace: str, job: str, backend: str) -> list[dict[str, Any]]:
        try:
            return kube.list_job_events(self.api, namespace, job, KINDS[backend])
        except ApiException as err:  # only sharpens a pending job's message
            log.warning("Could not list the events of %s %s/%s: %s", KINDS[backend].kind, namespace, job, err.reason)
            return []

    def storage(self, pipeline: TrainingPipeline) -> tuple[Any, list[str]]:
        ref, storage = pipeline.spec.storage.secret_ref, pipeline.spec.storage
        namespace = pipeline.metadata["namespace"]
        where = f"TrainingPipeline {pipeline.metadata['name']}"
        try:
            data = self._secret(namespace, ref.name)
        except ApiException as err:
            if err.status != 403:
                raise
            # The cluster-wide install grants Secrets only in the namespaces bound to gradatim-workspace.
            return None, [f"{where} spec.storage.secretRef.name: the operator may not read Secret {ref.name!r} in namespace "
                          f"{namespace}; grant it there: `kubectl apply -n {namespace} -k manifests/workspace/` (a RoleBinding "
                          "to the ClusterRole gradatim-workspace)"]
        if data is None:
            return None, [f"{where} spec.storage.secretRef.name: Secret {ref.name!r} not found in namespace {namespace}; create it with the S3 credentials"]
        absent = [k for k in (ref.access_key_id_key, ref.secret_access_key_key) if k not in data]
        if absent:
            return None, [f"{where} spec.storage.secretRef: Secret {ref.name!r} has no key {', '.join(absent)}"]
        identity = (storage.endpoint or data.get("AWS_ENDPOINT_URL"), data[ref.access_key_id_key], data[ref.secret_access_key_key], storage.region)
        with self._lock:
            if identity not in self._s3_clients:
                self._s3_clients[identity] = s3.client_from_secret(data, ref.access_key_id_key, ref.secret_access_key_key, storage.endpoint, storage.region)
            return self._s3_clients[identity], []

    def _secret(self, namespace: str, name: str) -> dict[str, str] | None:
        """The Secret's data, kept SECRET_TTL_SECONDS (a missing one is asked for again each time: it may come)."""
        now = time.monotonic()
        with self._lock:
            kept = self._secrets.get((namespace, name))
        if kept is not None and now - kept[0] < SECRET_TTL_SECONDS:
            return kept[1]
        data = kube.read_secret(self.api, namespace, name)
        with self._lock:
            if data is None:
                self._secrets.pop((namespace, name), None)
            else:
                self._secrets[(namespace, name)] = (now, data)
        return data

    # -- changes ----------------------------------------------------------------------------------------

    def adopt(self, stage: TrainingStage, pipeline: TrainingPipeline) -> None:
        refs = stage.metadata.get("ownerReferences") or []
        if any(r.get("uid") == pipeline.metadata["uid"] for r in refs):
            return
        updated = kube.ensure_owned_by_pipeline(self.api, {"metadata": stage.metadata}, pipeline.to_wire())
        if updated is not None:
            self.cache.put_stage(updated)

    def create_job(self, job: dict[str, Any], configmap: dict[str, Any]) -> bool:
        created, fresh = kube.create_or_adopt_job(self.api, job, configmap)
        self.cache.put_job(created)
        return fresh

    def set_job_suspended(self, namespace: str, name: str, suspended: bool, backend: str) -> None:
        self.cache.put_job(kube.set_job_suspended(self.api, namespace, name, suspended, KINDS[backend]))

    def delete_job(self, namespace: str, name: str, backend: str) -> None:
        kube.delete_job(self.api, namespace, name, KINDS[backend])
        self.cache.drop_job(namespace, name)

    def write_stage_status(self, stage: TrainingStage, status: dict[str, Any]) -> None:
        self.cache.put_stage(kube.replace_status(self.api, kube.STAGES, stage.metadata["namespace"], stage.metadata["name"], status))

    def write_pipeline_status(self, pipeline: TrainingPipeline, status: dict[str, Any]) -> None:
        self.cache.put_pipeline(kube.replace_status(self.api, kube.PIPELINES, pipeline.metadata["namespace"], pipeline.metadata["name"], status))

    def post_event(self, stage: TrainingStage, type_: str, reason: str, message: str) -> None:
        kube.post_event(self.api, {"apiVersion": stage.api_version, "kind": stage.kind, "metadata": stage.metadata}, type_, reason, message)

