"""The operator's reads and writes on the API server, as plain functions over a `kubernetes` ApiClient."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime, timezone
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from gradatim.api import GROUP, VERSION, TrainingPipeline, TrainingStage
from gradatim.planner.jobs import KINDS, PYTORCHJOB, TRAINJOB, JobKind, kind_of, suspend_patch
from gradatim.planner.render import STAGE_LABEL

STAGES, PIPELINES = "trainingstages", "trainingpipelines"
PYTORCHJOBS, TRAINJOBS = PYTORCHJOB.plural, TRAINJOB.plural


def _custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def get_or_none(fn, *args, **kwargs) -> Any:
    try:
        return fn(*args, **kwargs)
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def list_stages(api: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    return _custom(api).list_namespaced_custom_object(GROUP, VERSION, namespace, STAGES)["items"]


def get_pipeline(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    return get_or_none(_custom(api).get_namespaced_custom_object, GROUP, VERSION, namespace, PIPELINES, name)


def get_job(api: client.ApiClient, namespace: str, name: str, kind: JobKind = PYTORCHJOB) -> dict[str, Any] | None:
    return get_or_none(_custom(api).get_namespaced_custom_object, kind.group, kind.version, namespace, kind.plural, name)


def installed_backends(api: client.ApiClient) -> frozenset[str]:
    """The job kinds the API server serves, from discovery (which every authenticated client may read)."""
    found = set()
    for kind in KINDS.values():
        try:
            served = _custom(api).get_api_resources(kind.group, kind.version)
        except ApiException as err:
            if err.status == 404:
                continue
            raise
        if any(r.name == kind.plural for r in served.resources or []):
            found.add(kind.backend)
    return frozenset(found)


def list_job_pods(api: client.ApiClient, namespace: str, stage: str, job: str, kind: JobKind = PYTORCHJOB) -> list[dict[str, Any]]:
    """The pods of a stage's job (by the labels rendered on its pod template and the job name its controller adds)."""
    selector = f"{STAGE_LABEL}={stage},{kind.job_label}={job}"
    pods = client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items
    return [api.sanitize_for_serialization(p) for p in pods]


def list_job_events(api: client.ApiClient, namespace: str, job: str, kind: JobKind = PYTORCHJOB) -> list[dict[str, Any]]:
    """Pod-creation events of a job, oldest first: training-operator writes them on the PyTorchJob, the Job
    controller on a TrainJob's node Job (`<name>-node-0`)."""
    names = [job] if kind is PYTORCHJOB else [job, f"{job}-node-0"]
    found = []
    for name in names:
        for event in client.CoreV1Api(api).list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items:
            when = event.last_timestamp or event.event_time or event.metadata.creation_timestamp
            found.append({"reason": event.reason, "message": event.message or "", "time": when.isoformat() if when else ""})
    return sorted(found, key=lambda e: e["time"])


def read_secret(api: client.ApiClient, namespace: str, name: str) -> dict[str, str] | None:
    secret = get_or_none(client.CoreV1Api(api).read_namespaced_secret, name, namespace)
    if secret is None:
        return None
    data = {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
    data.update(secret.string_data or {})
    return data


def parse_stage(body: dict[str, Any]) -> TrainingStage:
    return TrainingStage.model_validate(body)


def parse_pipeline(body: dict[str, Any]) -> TrainingPipeline:
    return TrainingPipeline.model_validate(body)


def create_or_adopt_job(api: client.ApiClient, job: dict[str, Any], configmap: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Creates the ConfigMap and the job (PyTorchJob or TrainJob). On AlreadyExists, adopts the existing job when it
    is ours (same stage owner and cache key), as after a restart mid-reconcile. Returns (job, created)."""
    ns, kind = job["metadata"]["namespace"], kind_of(job)
    try:
        client.CoreV1Api(api).create_namespaced_config_map(ns, configmap)
    except ApiException as err:
        if err.status != 409:
            raise
    try:
        return _custom(api).create_namespaced_custom_object(kind.group, kind.version, ns, kind.plural, job), True
    except ApiException as err:
        if err.status != 409:
            raise
    existing = get_job(api, ns, job["metadata"]["name"], kind)
    if existing is None:
        raise RuntimeError(f"{kind.kind} {job['metadata']['name']} exists and vanished; retrying")
    ours = job["metadata"]["ownerReferences"][0]["uid"]
    owners = [r.get("uid") for r in existing["metadata"].get("ownerReferences", [])]
    key_label = "gradatim.io/cache-key"
    if ours not in owners or existing["metadata"].get("labels", {}).get(key_label) != job["metadata"]["labels"][key_label]:
        raise RuntimeError(f"{kind.kind} {job['metadata']['name']} already exists and belongs to something else")
    return existing, False


def set_job_suspended(api: client.ApiClient, namespace: str, name: str, suspended: bool, kind: JobKind = PYTORCHJOB) -> dict[str, Any]:
    return _custom(api).patch_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name, suspend_patch(kind, suspended))


def delete_job(api: client.ApiClient, namespace: str, name: str, kind: JobKind = PYTORCHJOB) -> None:
    try:
        # Background, not Foreground: a TrainJob's batch Job, foreground-deleted, has the Job controller create new
        # pods for it while its old ones are being removed (seen with Kubernetes 1.34). The planner starts no next
        # attempt until the old attempt's pods are gone.
        _custom(api).delete_namespaced_custom_object(kind.group, kind.version, namespace, kind.plural, name, propagation_policy="Background")
    except ApiException as err:
        if err.status != 404:
            raise


def replace_status(api: client.ApiClient, plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """Writes the whole status (a JSON patch, so stale map keys and list items do not survive a merge); returns
    the object as the API server now holds it."""
    return _custom(api).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, plural, name, [{"op": "add", "path": "/status", "value": status}],
        _content_type="application/json-patch+json",
    )


def post_event(api: client.ApiClient, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    meta = body["metadata"]
    now = datetime.now(timezone.utc)
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(name=f"{meta['name']}.{uuid.uuid4().hex[:10]}", namespace=meta["namespace"]),
        involved_object=client.V1ObjectReference(
            api_version=body["apiVersion"], kind=body["kind"], name=meta["name"], namespace=meta["namespace"],
            uid=meta.get("uid"), resource_version=meta.get("resourceVersion"),
        ),
        type=type_, reason=reason, message=message[:1024], first_timestamp=now, last_timestamp=now, count=1,
        source=client.V1EventSource(component="gradatim-operator"), reporting_component="gradatim.io/operator",
        reporting_instance="gradatim-operator",
    )
    client.CoreV1Api(api).create_namespaced_event(meta["namespace"], event)


def ensure_owned_by_pipeline(api: client.ApiClient, stage: dict[str, Any], pipeline: dict[str, Any]) -> dict[str, Any] | None:
    """Makes the pipeline an owner of the stage, so deleting the pipeline deletes its stages (and their jobs).
    Returns the patched stage; None when it was owned already."""
    refs = stage["metadata"].get("ownerReferences") or []
    uid = pipeline["metadata"]["uid"]
    if any(r.get("uid") == uid for r in refs):
        return None
    ref = {"apiVersion": pipeline["apiVersion"], "kind": "TrainingPipeline", "name": pipeline["metadata"]["name"], "uid": uid}
    return _custom(api).patch_namespaced_custom_object(
        GROUP, VERSION, stage["metadata"]["namespace"], STAGES, stage["metadata"]["name"],
        {"metadata": {"ownerReferences": [*refs, ref], "resourceVersion": stage["metadata"]["resourceVersion"]}},
    )
