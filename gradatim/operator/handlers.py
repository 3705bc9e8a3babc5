"""kopf handlers: watch events become work-queue keys; the reconciler does the rest.

Only low-level event handlers are used, so kopf keeps no progress annotations and adds no finalizers:
deleting a stage or pipeline never waits for the operator, and owner references let the garbage collector
remove the jobs and ConfigMaps.
"""

from __future__ import annotations

import asyncio
import logging
import os

import kopf
from kubernetes import config
from prometheus_client import start_http_server

from gradatim.operator.metrics import OperatorMetrics
from gradatim.operator.reconciler import Key, Reconciler

log = logging.getLogger("gradatim.operator")

WORKERS = int(os.environ.get("GRADATIM_OPERATOR_WORKERS", "4"))
RESYNC_SECONDS = float(os.environ.get("GRADATIM_OPERATOR_RESYNC_SECONDS", "30"))
METRICS_PORT = int(os.environ.get("GRADATIM_OPERATOR_METRICS_PORT", "8080"))


def watched_namespaces() -> list[str]:
    """The namespaces `gradatim operator -n` watches (empty: all); the resync lists only these. Read when used:
    the CLI imports this module before it parses `-n` and sets the variable."""
    return [n for n in os.environ.get("GRADATIM_OPERATOR_NAMESPACES", "").split(",") if n]

_reconciler: Reconciler | None = None  # set at startup; the only process-wide handle, for the handlers below


def reconciler() -> Reconciler:
    if _reconciler is None:
        raise kopf.TemporaryError("operator still starting", delay=1)
    return _reconciler


def _api_client():
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    config.load_incluster_config()
    from kubernetes import client

    return client.ApiClient()


@kopf.on.startup()
async def on_startup(settings: kopf.OperatorSettings, **_) -> None:
    global _reconciler
    settings.posting.enabled = False  # we post our own Events, one per transition
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    _reconciler = Reconciler(_api_client(), OperatorMetrics())
    if METRICS_PORT:
        start_http_server(METRICS_PORT)
        log.info("Serving metrics on :%d/metrics", METRICS_PORT)
    for _ in range(WORKERS):
        asyncio.create_task(_reconciler.run_worker())
    asyncio.create_task(_resync())


async def _resync() -> None:
    """Level-based safety net: every stage and pipeline is looked at again now and then."""
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        try:
            r = reconciler()
            await asyncio.to_thread(r.resync, watched_namespaces())
        except Exception as err:
            log.warning("Resync failed: %s", err)


@kopf.on.probe(id="queue")
def probe_queue(**_) -> int:
    return len(reconciler().queue)


@kopf.index("gradatim.io", "v1alpha1", "trainingstages")
def stages_by_pipeline(namespace: str, name: str, spec: kopf.Spec, **_):
    """Stage names by (namespace, pipeline), so an event can reach a stage's siblings without a list call."""
    return {(namespace, spec.get("pipeline", "")): name}


@kopf.on.event("gradatim.io", "v1alpha1", "trainingstages")
def on_event_trainingstage(type: str, body: kopf.Body, stages_by_pipeline: kopf.Index, **_) -> None:
    ns, name = body.metadata.namespace, body.metadata.name
    r = reconciler()
    r.queue.add(Key("stage", ns, name))
    r.queue.add(Key("pipeline", ns, body.spec.get("pipeline", "")))
    if type in (None, "ADDED", "DELETED"):  # a stage appearing or going changes its siblings' graph
        for sibling in stages_by_pipeline.get((ns, body.spec.get("pipeline", "")), []):
            r.queue.add(Key("stage", ns, sibling))


@kopf.on.event("gradatim.io", "v1alpha1", "trainingpipelines")
def on_event_trainingpipeline(body: kopf.Body, stages_by_pipeline: kopf.Index, **_) -> None:
    ns, name = body.metadata.namespace, body.metadata.name
    r = reconciler()
    r.queue.add(Key("pipeline", ns, name))
    for stage in stages_by_pipeline.get((ns, name), []):
        r.queue.add(Key("stage", ns, stage))


@kopf.on.event("kubeflow.org", "v1", "pytorchjobs", labels={"app.kubernetes.io/managed-by": "gradatim"})
def on_event_pytorchjob(body: kopf.Body, **_) -> None:
    stage = body.metadata.labels.get("gradatim.io/stage")
    if stage:
        reconciler().queue.add(Key("stage", body.metadata.namespace, stage))


