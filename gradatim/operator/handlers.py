"""kopf handlers: watch events feed the watch cache and become work-queue keys; the worker does the rest.

The cache is filled by index handlers, because kopf fills every index before it calls any other handler: no
reconcile runs on a half-listed cluster (a stage whose siblings were not listed yet would look blocked).
Only low-level handlers are used, so kopf keeps no progress annotations and adds no finalizers: deleting a stage or
pipeline never waits for the operator, and owner references let the garbage collector remove jobs and ConfigMaps.
"""

from __future__ import annotations

import asyncio
import logging
import os

import kopf
from kubernetes import client, config
from prometheus_client import start_http_server

from gradatim.api import GROUP, VERSION
from gradatim.operator import kube
from gradatim.operator.metrics import OperatorMetrics
from gradatim.operator.worker import Worker
from gradatim.operator.world import KubeWorld, WatchCache
from gradatim.planner.jobs import KINDS, PYTORCHJOB, TRAINJOB
from gradatim.planner.stage import STORAGE_PATIENCE_SECONDS
from gradatim.reconcile.shell import Key

log = logging.getLogger("gradatim.operator")

WORKERS = int(os.environ.get("GRADATIM_OPERATOR_WORKERS", "4"))
# Every stage is looked at again this often (events and each stage's own requeues do the real work; this is the
# safety net, and at a thousand stages each pass costs a few seconds of CPU).
RESYNC_SECONDS = float(os.environ.get("GRADATIM_OPERATOR_RESYNC_SECONDS", "120"))
RELIST_SECONDS = float(os.environ.get("GRADATIM_OPERATOR_RELIST_SECONDS", "600"))
METRICS_PORT = int(os.environ.get("GRADATIM_OPERATOR_METRICS_PORT", "8080"))
STORAGE_PATIENCE = float(os.environ.get("GRADATIM_STORAGE_PATIENCE_SECONDS", STORAGE_PATIENCE_SECONDS))
MANAGED = {"app.kubernetes.io/managed-by": "gradatim"}


def watched_namespaces() -> list[str]:
    """The namespaces `gradatim operator -n` watches (empty: all). Read when used: the CLI imports this module
    before it parses `-n` and sets the variable."""
    return [n for n in os.environ.get("GRADATIM_OPERATOR_NAMESPACES", "").split(",") if n]


cache = WatchCache()  # filled by the index handlers below from kopf's watches
_pipeline_generations: dict[tuple[str, str], int | None] = {}  # the last generation each pipeline's stages were queued for
_indexed = False  # set by the first event handler call: kopf calls none before every index is filled
_worker: Worker | None = None  # set at startup; the only process-wide handle, for the handlers below


def worker() -> Worker:
    if _worker is None:
        raise kopf.TemporaryError("operator still starting", delay=1)
    return _worker


def _api_client() -> client.ApiClient:
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        return config.new_client_from_config(config_file=kubeconfig)
    config.load_incluster_config()
    return client.ApiClient()


@kopf.on.startup()
async def on_startup(settings: kopf.OperatorSettings, **_) -> None:
    global _worker
    if not logging.getLogger("gradatim").isEnabledFor(logging.DEBUG):
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # a line per handler call: thousands a minute at scale
    settings.posting.enabled = False  # we post our own Events, one per transition
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Given exact namespaces (the namespaced install: a Role in each, nothing cluster-wide), kopf watches just those
    # and needs no list/watch on Namespaces and CRDs; without this it asks, and warns when refused. Globs need it.
    namespaces = watched_namespaces()
    settings.scanning.disabled = bool(namespaces) and not any(c in n for n in namespaces for c in "*?[!")
    _worker = Worker(KubeWorld(_api_client(), cache), OperatorMetrics(), STORAGE_PATIENCE)
    if METRICS_PORT:
        start_http_server(METRICS_PORT)
        log.info("Serving metrics on :%d/metrics", METRICS_PORT)
    for _ in range(WORKERS):
        asyncio.create_task(_worker.run())
    asyncio.create_task(_resync())
    asyncio.create_task(_relist())


async def _resync() -> None:
    """Level-based safety net: every stage and pipeline in the cache is looked at again now and then."""
    while True:
        await asyncio.sleep(RESYNC_SECONDS)
        try:
            if _indexed:  # before that, the cache may hold part of a pipeline
                worker().resync()
        except Exception as err:
            log.warning("Resync failed: %s", err)


async def _relist() -> None:
    """Now and then, the cache is checked against a LIST of the watched namespaces: an object deleted while a watch
    was broken gets no event (kopf re-lists what exists, not what went)."""
    while True:
        await asyncio.sleep(RELIST_SECONDS)
        try:
            await asyncio.to_thread(_drop_vanished, worker().world.api, watched_namespaces())
        except Exception as err:
            log.warning("Relist failed: %s", err)


def _drop_vanished(api: client.ApiClient, namespaces: list[str]) -> None:
    custom = client.CustomObjectsApi(api)
    scopes = namespaces or [None]

    def listed(group: str, version: str, plural: str) -> set[tuple[str, str]]:
        live = set()
        for ns in scopes:
            found = (custom.list_namespaced_custom_object(group, version, ns, plural) if ns
                     else custom.list_cluster_custom_object(group, version, plural))
            live |= {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in found["items"]}
        return live

    jobs: set[tuple[str, str]] = set()
    for backend in kube.installed_backends(api):
        kind = KINDS[backend]
        jobs |= listed(kind.group, kind.version, kind.plural)
    for table, live, drop in (("stages", listed(GROUP, VERSION, kube.STAGES), cache.drop_stage),
                              ("pipelines", listed(GROUP, VERSION, kube.PIPELINES), cache.drop_pipeline),
                              ("jobs", jobs, cache.drop_job)):
        for key in cache.keys(table) - live:
            log.info("Dropped %s %s/%s from the cache: deleted while a watch was broken", table, *key)
            drop(*key)


@kopf.on.probe(id="queue")
def probe_queue(**_) -> int:
    return len(worker().queue)


# -- the cache: index handlers run on every change, before any event handler is called -------------------------

@kopf.index(GROUP, VERSION, "trainingstages")
def stage_cache(body: kopf.Body, **_) -> None:
    cache.put_stage(body)  # the cache is the index; kopf's own stays empty


@kopf.index(GROUP, VERSION, "trainingpipelines")
def pipeline_cache(body: kopf.Body, **_) -> None:
    cache.put_pipeline(body)


@kopf.index(PYTORCHJOB.group, PYTORCHJOB.version, PYTORCHJOB.plural, labels=MANAGED)
def pytorchjob_cache(body: kopf.Body, **_) -> None:
    cache.put_job(body)


# kopf watches only what the cluster serves: without Trainer v2 installed, this index waits for nothing.
@kopf.index(TRAINJOB.group, TRAINJOB.version, TRAINJOB.plural, labels=MANAGED)
def trainjob_cache(body: kopf.Body, **_) -> None:
    cache.put_job(body)


# -- events: keys on the queue -----------------------------------------------------------------------------

def _mark_indexed() -> None:
    global _indexed
    _indexed = True


@kopf.on.event(GROUP, VERSION, "trainingstages")
def on_event_trainingstage(type: str, body: kopf.Body, **_) -> None:
    _mark_indexed()
    ns, name, pipeline = body.metadata.namespace, body.metadata.name, body.spec.get("pipeline", "")
    if type == "DELETED":
        cache.drop_stage(ns, name)
    w = worker()
    w.queue.add(Key("stage", ns, name))
    w.queue.add(Key("pipeline", ns, pipeline))
    if type in (None, "ADDED", "DELETED"):
        # A stage appearing or going changes the graph of the stages that name it in dependsOn (found, or missing
        # now); their own reconciles tell theirs in turn. Not every sibling: a pipeline of a thousand stages
        # applied at once would queue a million reconciles.
        for sibling, stage in cache.pipeline_stages(ns, pipeline).items():
            if name in stage.spec.depends_on:
                w.queue.add(Key("stage", ns, sibling))


@kopf.on.event(GROUP, VERSION, "trainingpipelines")
def on_event_trainingpipeline(type: str, body: kopf.Body, **_) -> None:
    _mark_indexed()
    ns, name = body.metadata.namespace, body.metadata.name
    if type == "DELETED":
        cache.drop_pipeline(ns, name)
    w = worker()
    w.queue.add(Key("pipeline", ns, name))
    # Its stages only when its spec changed (a new generation) or it came or went: its status is written on every
    # stage change, and each write comes back as an event.
    generation = body.metadata.get("generation")
    if type in (None, "ADDED", "DELETED") or _pipeline_generations.get((ns, name)) != generation:
        _pipeline_generations[(ns, name)] = generation
        for stage in cache.pipeline_stages(ns, name):
            w.queue.add(Key("stage", ns, stage))
    if type == "DELETED":
        _pipeline_generations.pop((ns, name), None)


def _on_job_event(type: str, body: kopf.Body) -> None:
    _mark_indexed()
    if type == "DELETED":
        cache.drop_job(body.metadata.namespace, body.metadata.name)
    stage = body.metadata.labels.get("gradatim.io/stage")
    if stage:
        worker().queue.add(Key("stage", body.metadata.namespace, stage))


@kopf.on.event(PYTORCHJOB.group, PYTORCHJOB.version, PYTORCHJOB.plural, labels=MANAGED)
def on_event_pytorchjob(type: str, body: kopf.Body, **_) -> None:
    _on_job_event(type, body)


@kopf.on.event(TRAINJOB.group, TRAINJOB.version, TRAINJOB.plural, labels=MANAGED)
def on_event_trainjob(type: str, body: kopf.Body, **_) -> None:
    _on_job_event(type, body)
