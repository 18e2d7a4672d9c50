"""Prometheus metrics with prometheus-client: one registry per app.

Counters and histograms live in the service process (they reset on restart, as Prometheus
expects). Gauges that describe state (jobs by state, queue depth, workers, their memory,
storage) are read at scrape time by a custom collector from the store, the executor and
the retention sweeper, so they can never drift from the truth.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FPS_BUCKETS = (1.0, 2.5, 5.0, 10.0, 15.0, 25.0, 50.0, 100.0, 200.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
STALL_CAUSES = ("no-progress", "consumer-never-started", "process-stopped")


class Metrics:
    """Everything the service counts. prometheus-client's metrics are thread-safe."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.jobs_finished = Counter(
            "heygem_jobs_finished",
            "Jobs that reached a final state, by state.",
            ["state"],
            registry=reg,
        )
        self.job_failures = Counter(
            "heygem_job_failures",
            "Jobs that failed or were cancelled, by cause.",
            ["cause"],
            registry=reg,
        )
        self.jobs_submitted = Counter(
            "heygem_jobs_submitted", "Jobs accepted, by API (v1 or easy).", ["api"], registry=reg
        )
        self.rejected = Counter(
            "heygem_admission_rejected",
            "Submissions refused, by reason.",
            ["reason"],
            registry=reg,
        )
        self.stalls = Counter(
            "heygem_stalls",
            "Stalls detected: kind=pipeline (a stage went silent) or "
            "kind=worker (a worker stopped sending heartbeats).",
            ["kind"],
            registry=reg,
        )
        self.worker_restarts = Counter(
            "heygem_worker_restarts",
            "Worker processes replaced, by reason.",
            ["reason"],
            registry=reg,
        )
        self.cpu_fallbacks = Counter(
            "heygem_cpu_fallbacks",
            "Jobs that asked for a GPU provider but ran on CPU.",
            registry=reg,
        )
        self.retention_removed = Counter(
            "heygem_retention_removed",
            "What retention removed: kind=job, upload or cache_entry.",
            ["kind"],
            registry=reg,
        )
        self.stage_seconds = Histogram(
            "heygem_stage_seconds",
            "Busy seconds per pipeline stage (decode/load/generate/compose), per job.",
            ["stage"],
            buckets=SECONDS_BUCKETS,
            registry=reg,
        )
        self.step_seconds = Histogram(
            "heygem_step_seconds",
            "Seconds per job step (check_inputs ... stream), per job.",
            ["step"],
            buckets=SECONDS_BUCKETS,
            registry=reg,
        )
        self.job_seconds = Histogram(
            "heygem_job_seconds",
            "Seconds from start to finish of succeeded jobs.",
            buckets=SECONDS_BUCKETS,
            registry=reg,
        )
        self.queue_seconds = Histogram(
            "heygem_queue_wait_seconds",
            "Seconds jobs waited in the queue.",
            buckets=SECONDS_BUCKETS,
            registry=reg,
        )
        self.fps = Histogram(
            "heygem_generation_fps",
            "Output frames per second of processing time, per job.",
            buckets=FPS_BUCKETS,
            registry=reg,
        )
        self.http_requests = Counter(
            "heygem_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=reg,
        )
        self.http_seconds = Histogram(
            "heygem_http_request_seconds",
            "Seconds to answer an HTTP request (until the response started), by route.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=reg,
        )
        self._lock = threading.Lock()
        self._durations: deque[float] = deque(maxlen=50)

    # -- events --------------------------------------------------------------------------
    def job_succeeded(self, result: dict[str, object], queued_seconds: float | None) -> None:
        self.jobs_finished.labels(state="succeeded").inc()
        stages, timings = result.get("stage_seconds"), result.get("timings")
        if isinstance(stages, dict):
            for stage, seconds in stages.items():
                if isinstance(seconds, int | float):
                    self.stage_seconds.labels(stage=str(stage)).observe(float(seconds))
        if isinstance(timings, dict):
            for step, seconds in timings.items():
                if step != "total" and isinstance(seconds, int | float):
                    self.step_seconds.labels(step=str(step)).observe(float(seconds))
            total, frames = timings.get("total"), result.get("frames")
            if isinstance(total, int | float) and total > 0:
                self.job_seconds.observe(float(total))
                with self._lock:
                    self._durations.append(float(total))
                if isinstance(frames, int):
                    self.fps.observe(frames / float(total))
        if queued_seconds is not None:
            self.queue_seconds.observe(queued_seconds)
        if result.get("cpu_fallback"):
            self.cpu_fallbacks.inc()

    def job_ended(self, state: str, cause: str, error_type: str = "") -> None:
        self.jobs_finished.labels(state=state).inc()
        self.job_failures.labels(cause=cause).inc()
        if cause in STALL_CAUSES and error_type != "WorkerStalled":  # that one: worker_stalled
            self.stalls.labels(kind="pipeline").inc()

    def worker_stalled(self) -> None:
        self.stalls.labels(kind="worker").inc()

    def worker_restarted(self, reason: str) -> None:
        self.worker_restarts.labels(reason=reason).inc()

    def submitted(self, api: str) -> None:
        self.jobs_submitted.labels(api=api).inc()

    def rejected_submission(self, reason: str) -> None:
        self.rejected.labels(reason=reason).inc()

    def removed(self, kind: str, count: int = 1) -> None:
        if count:
            self.retention_removed.labels(kind=kind).inc(count)

    def http_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method=method, route=route, status=str(status)).inc()
        self.http_seconds.labels(method=method, route=route).observe(seconds)

    def mean_job_seconds(self) -> float | None:
        with self._lock:
            return sum(self._durations) / len(self._durations) if self._durations else None

    # -- exposition ----------------------------------------------------------------------
    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass(frozen=True)
class Gauge:
    """One gauge family read at scrape time: name, help, label names, a reader."""

    name: str
    help: str
    labels: tuple[str, ...]
    read: Callable[[], Iterable[tuple[tuple[str, ...], float]]]


class StateCollector(Collector):
    """Gauges read from the store, the executor and the retention sweeper at scrape time."""

    def __init__(self, gauges: Iterable[Gauge]) -> None:
        self._gauges = tuple(gauges)

    def collect(self) -> Iterator[Metric]:
        for gauge in self._gauges:
            family = GaugeMetricFamily(gauge.name, gauge.help, labels=list(gauge.labels))
            for labels, value in gauge.read():
                family.add_metric(list(labels), float(value))
            yield family

    def describe(self) -> Iterator[Metric]:
        for gauge in self._gauges:
            yield GaugeMetricFamily(gauge.name, gauge.help, labels=list(gauge.labels))
