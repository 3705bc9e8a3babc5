"""The operator's own Prometheus metrics (`gradatim_` prefix, base units, bounded labels).

Every series is documented in docs/metrics.md. Per-stage series are a view of each stage's status: set on
every reconcile of the stage, removed when the stage is gone.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info

from gradatim import __version__
from gradatim.api.stage import STAGE_PHASES, TrainingStage

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STAGE_LABELS = ("namespace", "pipeline", "stage", "type")
StageKey = tuple[str, str, str, str]  # the values of STAGE_LABELS
RECONCILED_KINDS = ("stage", "pipeline")  # the `kind` label of the reconcile series


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.build_info = Info("gradatim_build", "Version of the Gradatim operator.", registry=registry)
        self.build_info.info({"version": __version__, "component": "operator"})
        self.reconciles = Counter("gradatim_reconcile", "Reconciles run, by kind and result.", ["kind", "result"], registry=registry)
        self.reconcile_errors = Counter("gradatim_reconcile_errors", "Reconciles that raised, by kind.", ["kind"], registry=registry)
        for kind in RECONCILED_KINDS:  # at 0 from the start, so an error rate reads 0 rather than no data
            self.reconcile_errors.labels(kind)
        self.reconcile_duration = Histogram("gradatim_reconcile_duration_seconds", "Time to reconcile one object.", ["kind"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge("gradatim_workqueue_depth", "Objects waiting to be reconciled.", registry=registry)
        self.stage_transitions = Counter("gradatim_stage_transitions", "Stage phase transitions.", ["namespace", "pipeline", "type", "phase"], registry=registry)
        self.job_creations = Counter("gradatim_job_creations", "PyTorchJobs created.", ["namespace", "pipeline", "type"], registry=registry)
        self.retries = Counter("gradatim_stage_retries", "Attempts started after a failure.", ["namespace", "pipeline", "type"], registry=registry)
        self.cache_hits = Counter("gradatim_cache_hits", "Stages whose outputs already existed under their key.", ["namespace", "pipeline", "type"], registry=registry)
        self.gate_results = Counter("gradatim_gate_results", "Quality gates evaluated, by outcome.", ["namespace", "pipeline", "result"], registry=registry)
        self.s3_errors = Counter("gradatim_s3_errors", "Failed S3 requests (connection errors, 5xx, refused credentials), by operation.",
                                 ["namespace", "pipeline", "operation"], registry=registry)
        self.dependency_to_job = Histogram(
            "gradatim_dependency_to_job_seconds", "Time from a stage's last dependency succeeding to its job being created.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.stage_duration = Histogram(
            "gradatim_stage_duration_seconds", "Wall time of finished stages, from first attempt to completion.", ["type"],
            buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200), registry=registry,
        )
        # Per-stage views of status.
        self.stage_phase = Gauge("gradatim_stage_phase", "1 for the stage's current phase, 0 for the others.", [*STAGE_LABELS, "phase"], registry=registry)
        self.stage_step = Gauge("gradatim_stage_step", "Steps done by the stage's current attempt.", STAGE_LABELS, registry=registry)
        self.stage_total_steps = Gauge("gradatim_stage_total_steps", "Steps the stage's current attempt plans.", STAGE_LABELS, registry=registry)
        self.stage_eta = Gauge("gradatim_stage_eta_seconds", "Estimated seconds until the running stage finishes.", STAGE_LABELS, registry=registry)
        self.stage_attempt = Gauge("gradatim_stage_attempt", "Number of the stage's latest PyTorchJob.", STAGE_LABELS, registry=registry)
        self.stage_retries = Gauge("gradatim_stage_failed_attempts", "Failed attempts of the stage's current run.", STAGE_LABELS, registry=registry)
        self.stage_retry_limit = Gauge("gradatim_stage_retry_limit", "The stage's spec.retryLimit.", STAGE_LABELS, registry=registry)
        self.stage_result = Gauge("gradatim_stage_result", "Headline metrics of the stage's finished run (results.json).", [*STAGE_LABELS, "metric"], registry=registry)
        self._stage_series: dict[tuple[str, str], tuple[StageKey, tuple[str, ...]]] = {}  # (ns, name) -> (labels, result metrics)
        self._lock = threading.Lock()

    # -- per-stage series ---------------------------------------------------------------------------------

    def observe_stage(self, stage: TrainingStage) -> None:
        """Sets the stage's series from its status (or removes them when it has none yet)."""
        ns, name = stage.metadata["namespace"], stage.metadata["name"]
        st = stage.status
        if st is None or st.phase is None:
            self.forget_stage(ns, name)
            return
        key: StageKey = (ns, stage.spec.pipeline, name, stage.spec.type)
        self._zero_counters(ns, stage.spec.pipeline, stage.spec.type)
        with self._lock:
            old = self._stage_series.get((ns, name))
            if old is not None and (old[0] != key or set(old[1]) - set(st.metrics)):
                self._remove(*old)
            for phase in STAGE_PHASES:
                self.stage_phase.labels(*key, phase).set(1 if phase == st.phase else 0)
            progress = st.progress
            self.stage_step.labels(*key).set(progress.step if progress else 0)
            self.stage_total_steps.labels(*key).set(progress.total_steps if progress else 0)
            eta = progress.eta_seconds if progress and progress.eta_seconds is not None and st.phase == "Running" else 0
            self.stage_eta.labels(*key).set(eta)
            self.stage_attempt.labels(*key).set(st.attempt)
            self.stage_retries.labels(*key).set(st.retries)
            self.stage_retry_limit.labels(*key).set(stage.spec.retry_limit)
            for metric, value in st.metrics.items():
                self.stage_result.labels(*key, metric).set(value)
            self._stage_series[(ns, name)] = (key, tuple(st.metrics))

    def _zero_counters(self, namespace: str, pipeline: str, type_: str) -> None:
        """Counters exist from a pipeline's first stage on, at 0: `rate()` and `increase()` then see the first
        event instead of a series appearing from nowhere (Prometheus' advice on missing series)."""
        for counter in (self.job_creations, self.retries, self.cache_hits):
            counter.labels(namespace, pipeline, type_)
        self.stage_duration.labels(type_)
        for result in ("passed", "failed"):
            self.gate_results.labels(namespace, pipeline, result)
        self.s3_errors.labels(namespace, pipeline, "GetObject")

    def forget_stage(self, namespace: str, name: str) -> None:
        with self._lock:
            old = self._stage_series.pop((namespace, name), None)
            if old is not None:
                self._remove(*old)

    def keep_only(self, live: Iterable[tuple[str, str]]) -> None:
        """Removes the series of stages not in `live` (namespace, name): deleted while the operator was busy."""
        keep = set(live)
        with self._lock:  # workers add series while this runs
            gone = [k for k in self._stage_series if k not in keep]
        for ns, name in gone:
            self.forget_stage(ns, name)

    def _remove(self, key: StageKey, metrics: tuple[str, ...]) -> None:
        for phase in STAGE_PHASES:
            _discard(self.stage_phase, *key, phase)
        for gauge in (self.stage_step, self.stage_total_steps, self.stage_eta, self.stage_attempt, self.stage_retries, self.stage_retry_limit):
            _discard(gauge, *key)
        for metric in metrics:
            _discard(self.stage_result, *key, metric)


def _discard(metric: Gauge, *labels: str) -> None:
    try:
        metric.remove(*labels)
    except KeyError:
        pass

