"""The operator's own Prometheus metrics (`gradatim_` prefix, base units, bounded labels)."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info

from gradatim import __version__

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.build_info = Info("gradatim_build", "Version of the Gradatim operator.", registry=registry)
        self.build_info.info({"version": __version__, "component": "operator"})
        self.reconciles = Counter("gradatim_reconcile", "Reconciles run, by kind and result.", ["kind", "result"], registry=registry)
        self.reconcile_errors = Counter("gradatim_reconcile_errors", "Reconciles that raised, by kind.", ["kind"], registry=registry)
        self.reconcile_duration = Histogram("gradatim_reconcile_duration_seconds", "Time to reconcile one object.", ["kind"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_depth = Gauge("gradatim_workqueue_depth", "Objects waiting to be reconciled.", registry=registry)
        self.stages = Gauge("gradatim_stages", "TrainingStages by phase.", ["namespace", "phase"], registry=registry)
        self.stage_transitions = Counter("gradatim_stage_transitions", "Stage phase transitions.", ["namespace", "pipeline", "type", "phase"], registry=registry)
        self.job_creations = Counter("gradatim_job_creations", "PyTorchJobs created.", ["namespace", "pipeline", "type"], registry=registry)
        self.retries = Counter("gradatim_stage_retries", "Attempts started after a failure.", ["namespace", "pipeline", "type"], registry=registry)
        self.cache_hits = Counter("gradatim_cache_hits", "Stages whose outputs already existed under their key.", ["namespace", "pipeline", "type"], registry=registry)
        self.gate_results = Counter("gradatim_gate_results", "Quality gates evaluated, by outcome.", ["namespace", "pipeline", "result"], registry=registry)
        self.dependency_to_job = Histogram(
            "gradatim_dependency_to_job_seconds", "Time from a stage's last dependency succeeding to its job being created.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.stage_duration = Histogram(
            "gradatim_stage_duration_seconds", "Wall time of finished stages, from first attempt to completion.", ["type"],
            buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400, 259200), registry=registry,
        )
