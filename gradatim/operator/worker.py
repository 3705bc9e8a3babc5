"""The operator's loop: work arrives as keys on a queue (from watch events and a periodic resync); each key is
reconciled by the one shell (gradatim/reconcile/shell.py), by one worker at a time, so no stage is acted on twice
at once. Metrics are recorded here from what the shell reports."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

from gradatim.operator.metrics import OperatorMetrics
from gradatim.operator.world import KubeWorld
from gradatim.reconcile.shell import Key, Shell, StageOutcome

log = logging.getLogger("gradatim.operator")

ERROR_BACKOFF_SECONDS = (1, 2, 5, 10, 30, 60)


class WorkQueue:
    """A deduplicating queue: a key waits at most once, and is never handed to two workers at once."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._waiting: set[Key] = set()
        self._busy: set[Key] = set()
        self._again: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}  # at most one delayed add per key: the earliest

    def add(self, key: Key) -> None:
        if key in self._busy:
            self._again.add(key)
        elif key not in self._waiting:
            self._waiting.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Key, seconds: float) -> None:
        """Adds `key` after `seconds`, unless an earlier delayed add of it is pending (every reconcile asks for its
        next look; without this, each extra reconcile of a waiting stage would leave one more timer behind)."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(seconds, 0.0)
        pending = self._timers.get(key)
        if pending is not None and not pending.cancelled() and pending.when() <= when:
            return
        if pending is not None:
            pending.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

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


class Worker:
    def __init__(self, world: KubeWorld, metrics: OperatorMetrics, storage_patience_seconds: float) -> None:
        self.world = world
        self.shell = Shell(world, storage_patience_seconds)
        self.metrics = metrics
        self.queue = WorkQueue()
        self._failures: dict[Key, int] = {}

    async def run(self) -> None:
        while True:
            key = await self.queue.get()
            self.metrics.queue_depth.set(len(self.queue))
            started = time.monotonic()
            try:
                follow_up, requeue = await asyncio.to_thread(self.reconcile, key)
            except Exception as err:  # one bad object must not stop the others; an unreachable API server passes
                failures = self._failures.get(key, 0)
                self._failures[key] = failures + 1
                delay = ERROR_BACKOFF_SECONDS[min(failures, len(ERROR_BACKOFF_SECONDS) - 1)]
                log.warning("Reconcile of %s %s/%s failed; retrying in %ss: %s", key.kind, key.namespace, key.name, delay, err,
                            exc_info=failures >= 2)
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

    def reconcile(self, key: Key) -> tuple[list[Key], float | None]:
        now = datetime.now(timezone.utc)
        if key.kind == "pipeline":
            self.shell.reconcile_pipeline(key.namespace, key.name, now)
            return [], None
        outcome = self.shell.reconcile_stage(key.namespace, key.name, now)
        self.record(key, outcome)
        return outcome.follow_up, outcome.requeue_after

    def record(self, key: Key, outcome: StageOutcome) -> None:
        """The operator's metrics from one stage reconcile."""
        m, stage = self.metrics, outcome.stage
        if stage is None:
            m.forget_stage(key.namespace, key.name)
            return
        labels = (key.namespace, stage.spec.pipeline, stage.spec.type)
        if outcome.storage_error:
            m.s3_errors.labels(key.namespace, stage.spec.pipeline, "GetObject").inc()
        if outcome.created_job:
            m.job_creations.labels(*labels).inc()
            if stage.status.retries:
                m.retries.labels(*labels).inc()
            if outcome.dependency_latency is not None:
                m.dependency_to_job.observe(outcome.dependency_latency)
        old, new = (outcome.previous.phase if outcome.previous else None), stage.status.phase
        if outcome.changed and old != new:
            m.stage_transitions.labels(*labels[:2], stage.spec.type, new).inc()
            if new == "Cached":
                m.cache_hits.labels(*labels).inc()
            if stage.status.gate is not None and new in ("Succeeded", "Failed"):
                m.gate_results.labels(*labels[:2], "passed" if stage.status.gate.passed else "failed").inc()
            if new in ("Succeeded", "Failed") and stage.status.start_time and stage.status.completion_time:
                m.stage_duration.labels(stage.spec.type).observe((stage.status.completion_time - stage.status.start_time).total_seconds())
        m.observe_stage(stage)

    def resync(self) -> None:
        """The level-based safety net: every cached stage and pipeline is queued again, and the per-stage series
        are rebuilt from the cache (dropping stages deleted while an event was missed). No LIST: the cache is the
        watch's; kopf re-lists when a watch breaks."""
        live = []
        for stage in self.world.cache.all_stages():
            ns, name = stage.metadata["namespace"], stage.metadata["name"]
            live.append((ns, name))
            self.queue.add(Key("stage", ns, name))
            self.queue.add(Key("pipeline", ns, stage.spec.pipeline))
        self.metrics.keep_only(live)
