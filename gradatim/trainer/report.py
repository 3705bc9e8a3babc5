"""What the trainer tells the world: Prometheus metrics and `progress.json` while it runs, `results.json` when
it is done. Only rank 0 reports. Every series is documented in docs/metrics.md. Without a store (benchmarks),
it keeps metrics and history but writes no files."""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, start_http_server

from gradatim.api.resolved import FINAL_SCRAPE_ENV, ResolvedStageSpec
from gradatim.api.runfiles import PROGRESS_FILE, RESULTS_FILE, RunProgress, RunResults
from gradatim.storage.s3 import count_failures, write_json
from gradatim.trainer import kernels
from gradatim.trainer.telemetry import Device, ModelFlops, device_memory

log = logging.getLogger("gradatim.trainer")

PROGRESS_EVERY_SECONDS = 5.0
GAUGES = {
    "step": "Optimiser steps done (prompts for generate and eval).",
    "total_steps": "Steps planned.",
    "loss": "Training loss of the last logged step.",
    "learning_rate": "Learning rate of the last logged step.",
    "grad_norm": "Gradient norm of the last logged step, before clipping.",
    "tokens_per_second": "Training tokens per second, all processes, over the last interval.",
    "samples_per_second": "Samples per second, all processes, over the last interval.",
    "model_flops_per_second": "Achieved model FLOP/s (6N + attention per token), all processes, over the last interval.",
    "mfu_ratio": "Model FLOPs utilisation against the detected device's peak; NaN where the peak is unknown.",
    "device_memory_bytes": "Memory in use on the training device (GPU: torch allocations; CPU: process RSS).",
    "device_memory_peak_bytes": "Peak memory on the training device over the attempt.",
    "eta_seconds": "Estimated seconds left.",
    "reward_mean": "GRPO: mean total reward of the last step.",
    "reward_std": "GRPO: standard deviation of the total reward of the last step.",
    "completion_tokens_mean": "GRPO: mean completion length of the last step, in tokens.",
    "dpo_reward_margin": "DPO: mean chosen minus rejected implicit reward.",
    "dpo_reward_accuracy": "DPO: fraction of pairs whose chosen reward beats the rejected one.",
    "endpoint_retries": "Generate from an endpoint: requests sent again so far (timeouts, lost connections, 429, 5xx).",
}


class ScrapeClock:
    """A collector with no series that notes when /metrics was last read."""

    def __init__(self) -> None:
        self.last = 0.0

    def describe(self) -> list:
        return []

    def collect(self) -> list:
        self.last = time.monotonic()
        return []


class Reporter:
    def __init__(self, spec: ResolvedStageSpec, store: Any | None, enabled: bool, serve_metrics: bool = True,
                 device: torch.device | None = None, world_size: int = 1) -> None:
        self.spec, self.store, self.enabled = spec, store, enabled
        self.started = self.steps_started = time.monotonic()  # steps_started: after any preparing, for the ETA
        self._last_write = 0.0
        self._last: dict[str, float] = {}
        self.device = device or torch.device("cpu")
        self.world_size = world_size
        self.hardware = Device.detect(self.device)
        self.model_flops: ModelFlops | None = None
        self.history: list[dict[str, float]] = []  # one entry per logged step: the curves the report plots
        labels = {"namespace": spec.namespace, "pipeline": spec.pipeline, "stage": spec.stage, "type": spec.type, "attempt": str(spec.attempt)}
        names = list(labels)
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        self.gauges = {k: Gauge(f"gradatim_trainer_{k}", doc, names, registry=r).labels(**labels) for k, doc in GAUGES.items()}
        self.tokens = Counter("gradatim_trainer_tokens", "Training tokens processed, all processes.", names, registry=r).labels(**labels)
        self.samples = Counter("gradatim_trainer_samples", "Samples (sequences or completions) processed, all processes.", names, registry=r).labels(**labels)
        self.steps = Counter("gradatim_trainer_steps", "Optimiser steps done.", names, registry=r).labels(**labels)
        self.reward_parts = Gauge("gradatim_trainer_reward_part_mean", "GRPO: each reward function's mean before weighting.", [*names, "reward"], registry=r)
        self.pass_at_1 = Gauge("gradatim_trainer_eval_pass_at_1", "eval: pass@1 averaged over k samples, per eval set.", [*names, "eval_set"], registry=r)
        s3_errors = Counter("gradatim_s3_errors", "Failed S3 requests (connection errors, 5xx, refused credentials), by operation.",
                            [*names, "operation"], registry=r)
        if store is not None:
            count_failures(store, lambda operation: s3_errors.labels(**labels, operation=operation).inc())
        info = Gauge("gradatim_trainer_info", "Where the attempt runs.", [*names, "device", "world_size"], registry=r)
        info.labels(**labels, device=self.hardware.name, world_size=str(world_size)).set(1)
        self._labels = labels
        self.gauges["mfu_ratio"].set(math.nan)
        self.scrapes = ScrapeClock()
        r.register(self.scrapes)
        self.serving = enabled and serve_metrics
        if self.serving:
            port = int(os.environ.get("GRADATIM_METRICS_PORT", spec.metrics_port))
            start_http_server(port, registry=r)
            log.info("Serving trainer metrics on :%d/metrics", port)

    def close(self) -> None:
        """Waits, at most GRADATIM_METRICS_FINAL_SCRAPE_SECONDS, for one scrape after the last update: a stage
        shorter than a few scrape intervals would otherwise take its final values (a last loss, an eval's
        pass@1) with it."""
        wait = float(os.environ.get(FINAL_SCRAPE_ENV) or 0)
        if not self.serving or wait <= 0:
            return
        finished = time.monotonic()
        while self.scrapes.last < finished and time.monotonic() < finished + wait:
            time.sleep(0.05)

    def set_model(self, model: Any) -> None:
        """Enables FLOP/s and MFU for the model being trained."""
        self.model_flops = ModelFlops.of(model)

    def reward_part(self, name: str, value: float) -> None:
        self.reward_parts.labels(**self._labels, reward=name).set(value)

    def eval_set(self, name: str, pass_at_1: float) -> None:
        self.pass_at_1.labels(**self._labels, eval_set=name).set(pass_at_1)

    def progress(self, step: int, total: int, tokens: int = 0, samples: int = 0, **values: float | None) -> None:
        """One step's worth of news: gauges always, progress.json at most every few seconds, a log line.
        `values` are gauges of GAUGES by name (loss, learning_rate, reward_mean, ...)."""
        if not self.enabled:
            return
        unknown = set(values) - set(GAUGES)
        if unknown:
            raise ValueError(f"no trainer gauge named {', '.join(sorted(unknown))}; add it to GAUGES and docs/metrics.md")
        now = time.monotonic()
        elapsed = now - self.started
        eta = (total - step) * (now - self.steps_started) / step if step else None
        new_steps = step - int(self._last.get("step", 0))
        if new_steps > 0:
            self.steps.inc(new_steps)
        self.tokens.inc(max(tokens, 0))
        self.samples.inc(max(samples, 0))
        interval = now - self._last.get("time", self.started)
        values = {k: v for k, v in {"step": step, "total_steps": total, **values}.items() if v is not None}
        if interval > 0 and (tokens or samples):
            values["tokens_per_second"] = tokens / interval
            values["samples_per_second"] = samples / interval
            if tokens and samples and self.model_flops:  # the interval's mean sequence length sets the attention term
                values["model_flops_per_second"] = tokens * self.model_flops.per_token(tokens / samples) / interval
                values["mfu_ratio"] = values["model_flops_per_second"] / (self.hardware.peak_flops * self.world_size)
        values["device_memory_bytes"], values["device_memory_peak_bytes"] = device_memory(self.device)
        if eta is not None:
            values["eta_seconds"] = eta
        for k, v in values.items():
            self.gauges[k].set(float(v))
        self._last = {"step": step, "time": now}
        self.history.append({"step": float(step), "elapsed_seconds": elapsed, **{k: float(v) for k, v in values.items() if k in HISTORY}})
        parts = " ".join(f"{k}={v:.4g}" for k, v in values.items() if k in LOGGED)
        log.info("Step %d/%d %s", step, total, parts)
        self._write_progress(now, step, total, eta, values)

    def preparing(self, activity: str, step: int, total: int, loss: float | None = None) -> None:
        """News of work before the stage's own steps (training the builtin tiny-teacher on first use): progress.json
        names the `activity`, so the live view shows it with its ETA; the stage's counters and history stay its own."""
        if not self.enabled:
            return
        now = time.monotonic()
        self.steps_started = now
        eta = (total - step) * (now - self.started) / step if step else None
        self._write_progress(now, step, total, eta, {"loss": loss} if loss is not None else {}, activity=activity)

    def _write_progress(self, now: float, step: int, total: int, eta: float | None, values: dict[str, Any], **extra: str) -> None:
        """progress.json, at most every PROGRESS_EVERY_SECONDS and at the last step."""
        if self.store is None or (now - self._last_write < PROGRESS_EVERY_SECONDS and step < total):
            return
        self._last_write = now
        record = RunProgress(step=step, total_steps=total, eta_seconds=eta, checkpoint_uri=self.spec.output.checkpoint_uri,
                             metrics={k: float(v) for k, v in values.items()}, **extra)
        write_json(self.store, self.spec.output.uri + PROGRESS_FILE, record.model_dump(by_alias=True, mode="json", exclude_none=True))

    def results(self, metrics: dict[str, float], outputs: dict[str, str], **extra: Any) -> dict[str, Any]:
        """Writes results.json, last: its presence is what marks the run complete."""
        if self.device.type == "cpu":
            extra.setdefault("cpu_kernels", kernels.describe(kernels.cpu_kernels()))
        record = RunResults(metrics=metrics, outputs=outputs, duration_seconds=time.monotonic() - self.started,
                            attempt=self.spec.attempt, cache_key=self.spec.cache_key, history=self.history, **extra
                            ).model_dump(by_alias=True, mode="json", exclude_none=True)
        if self.enabled and self.store is not None:
            write_json(self.store, self.spec.output.uri + RESULTS_FILE, record)
            log.info("Wrote results: %s", metrics)
        return record


# What a step's log line shows, and what each step keeps for the report's curves.
LOGGED = ("loss", "learning_rate", "grad_norm", "tokens_per_second", "samples_per_second", "mfu_ratio", "reward_mean",
          "completion_tokens_mean", "dpo_reward_margin", "eta_seconds")
HISTORY = ("loss", "learning_rate", "grad_norm", "tokens_per_second", "reward_mean", "reward_std", "completion_tokens_mean",
           "dpo_reward_margin", "dpo_reward_accuracy")
