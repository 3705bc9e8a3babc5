"""What the trainer tells the world: Prometheus metrics and `progress.json` while it runs, `results.json` when
it is done. Only rank 0 reports."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from gradatim.api.resolved import ResolvedStageSpec
from gradatim.s3 import write_json

log = logging.getLogger("gradatim.trainer")

PROGRESS_EVERY_SECONDS = 5.0
GAUGES = {
    "step": "Optimiser steps done (prompts for generate and eval).",
    "total_steps": "Steps planned.",
    "loss": "Training loss of the last logged step.",
    "learning_rate": "Learning rate of the last logged step.",
    "grad_norm": "Gradient norm of the last logged step.",
    "tokens_per_second": "Training tokens per second, all processes, over the last interval.",
    "samples_per_second": "Samples per second, all processes, over the last interval.",
    "eta_seconds": "Estimated seconds left.",
}


class Reporter:
    def __init__(self, spec: ResolvedStageSpec, store: Any, enabled: bool, serve_metrics: bool = True) -> None:
        self.spec, self.store, self.enabled = spec, store, enabled
        self.started = time.monotonic()
        self._last_write = 0.0
        self._last: dict[str, float] = {}
        labels = {"namespace": spec.namespace, "pipeline": spec.pipeline, "stage": spec.stage, "type": spec.type, "attempt": str(spec.attempt)}
        self.registry = CollectorRegistry()
        self.gauges = {k: Gauge(f"gradatim_trainer_{k}", doc, list(labels), registry=self.registry).labels(**labels) for k, doc in GAUGES.items()}
        self.tokens = Counter("gradatim_trainer_tokens", "Training tokens processed, all processes.", list(labels), registry=self.registry).labels(**labels)
        self.steps = Counter("gradatim_trainer_steps", "Optimiser steps done.", list(labels), registry=self.registry).labels(**labels)
        self.extra: dict[str, Any] = {}
        self._labels = labels
        if enabled and serve_metrics:
            port = int(os.environ.get("GRADATIM_METRICS_PORT", spec.metrics_port))
            start_http_server(port, registry=self.registry)
            log.info("Serving trainer metrics on :%d/metrics", port)

    def metric(self, name: str, value: float, doc: str = "") -> None:
        """Sets a stage-specific gauge (reward parts, DPO margins, pass@1, ...)."""
        if name not in self.extra:
            self.extra[name] = Gauge(f"gradatim_trainer_{name}", doc or name, list(self._labels), registry=self.registry).labels(**self._labels)
        self.extra[name].set(value)

    def progress(self, step: int, total: int, tokens: int = 0, samples: int = 0, **values: float) -> None:
        """One step's worth of news: gauges always, progress.json at most every few seconds, a log line."""
        if not self.enabled:
            return
        now = time.monotonic()
        elapsed = now - self.started
        eta = (total - step) * elapsed / step if step else None
        new_steps = step - int(self._last.get("step", 0))
        if new_steps > 0:
            self.steps.inc(new_steps)
        if tokens:
            self.tokens.inc(tokens)
        interval = now - self._last.get("time", self.started)
        values = {"step": step, "total_steps": total, **values}
        if interval > 0 and (tokens or samples):
            values["tokens_per_second"] = tokens / interval
            values["samples_per_second"] = samples / interval
        if eta is not None:
            values["eta_seconds"] = eta
        for k, v in values.items():
            if k in self.gauges and v is not None:
                self.gauges[k].set(float(v))
            elif v is not None:
                self.metric(k, float(v))
        self._last = {"step": step, "time": now}
        parts = " ".join(f"{k}={v:.4g}" for k, v in values.items() if k not in ("step", "total_steps") and v is not None)
        log.info("Step %d/%d %s", step, total, parts)
        if now - self._last_write >= PROGRESS_EVERY_SECONDS or step >= total:
            self._last_write = now
            write_json(self.store, self.spec.output.uri + "progress.json", {
                "step": step, "totalSteps": total, "etaSeconds": eta, "checkpointUri": self.spec.output.checkpoint_uri,
                "metrics": {k: float(v) for k, v in values.items() if v is not None},
            })

    def results(self, metrics: dict[str, float], outputs: dict[str, str], **extra: Any) -> dict[str, Any]:
        """Writes results.json, last: its presence is what marks the run complete."""
        record = {"metrics": metrics, "outputs": outputs, "durationSeconds": time.monotonic() - self.started,
                  "attempt": self.spec.attempt, "cacheKey": self.spec.cache_key, **extra}
        if self.enabled:
            write_json(self.store, self.spec.output.uri + "results.json", record)
            log.info("Wrote results: %s", metrics)
        return record
