"""Prometheus text exposition (format 0.0.4) without a client library.

Counters and histograms live in the service process (they reset on restart, as
Prometheus expects); gauges such as jobs by state are read from the store at scrape time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]

SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
FPS_BUCKETS = (1.0, 2.5, 5.0, 10.0, 15.0, 25.0, 50.0, 100.0, 200.0)


def _labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


@dataclass
class Counter:
    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for key, value in sorted(self.values.items()):
            yield f"{self.name}{_labels(key)} {_number(value)}"


@dataclass
class Histogram:
    name: str
    help: str
    buckets: Sequence[float] = SECONDS_BUCKETS
    series: dict[Labels, list[float]] = field(default_factory=dict)  # counts..., sum, count

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        data = self.series.setdefault(key, [0.0] * (len(self.buckets) + 2))
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                data[i] += 1
        data[-2] += value
        data[-1] += 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for key, data in sorted(self.series.items()):
            for bound, count in zip(self.buckets, data, strict=False):
                yield (
                    f"{self.name}_bucket{_labels(key + (('le', _number(bound)),))} {_number(count)}"
                )
            yield f"{self.name}_bucket{_labels(key + (('le', '+Inf'),))} {_number(data[-1])}"
            yield f"{self.name}_sum{_labels(key)} {_number(data[-2])}"
            yield f"{self.name}_count{_labels(key)} {_number(data[-1])}"


def gauge(name: str, help_text: str, values: dict[Labels, float]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
    lines += [f"{name}{_labels(k)} {_number(v)}" for k, v in sorted(values.items())]
    return lines


class Metrics:
    """Everything the service counts. Methods are thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.jobs_finished = Counter(
            "heygem_jobs_finished_total", "Jobs that reached a final state, by state."
        )
        self.jobs_submitted = Counter(
            "heygem_jobs_submitted_total", "Jobs accepted, by API (v1 or easy)."
        )
        self.rejected = Counter(
            "heygem_admission_rejected_total", "Submissions refused, by reason."
        )
        self.stalls = Counter(
            "heygem_stalls_total",
            "Stalls detected: kind=pipeline (a stage went silent) or "
            "kind=worker (a worker stopped sending heartbeats).",
        )
        self.worker_restarts = Counter(
            "heygem_worker_restarts_total", "Worker processes replaced, by reason."
        )
        self.cpu_fallbacks = Counter(
            "heygem_cpu_fallbacks_total", "Jobs that asked for a GPU provider but ran on CPU."
        )
        self.stage_seconds = Histogram(
            "heygem_stage_seconds",
            "Busy seconds per pipeline stage (decode/load/generate/compose), per job.",
        )
        self.step_seconds = Histogram(
            "heygem_step_seconds", "Seconds per job step (check_inputs ... stream), per job."
        )
        self.job_seconds = Histogram(
            "heygem_job_seconds", "Seconds from start to finish of succeeded jobs."
        )
        self.queue_seconds = Histogram(
            "heygem_queue_wait_seconds", "Seconds jobs waited in the queue."
        )
        self.fps = Histogram(
            "heygem_generation_fps",
            "Output frames per second of processing time, per job.",
            buckets=FPS_BUCKETS,
        )
        self._durations: list[float] = []

    def job_succeeded(self, result: dict[str, object], queued_seconds: float | None) -> None:
        timings = result.get("timings")
        stages = result.get("stage_seconds")
        with self._lock:
            self.jobs_finished.inc(state="succeeded")
            if isinstance(stages, dict):
                for stage, seconds in stages.items():
                    if isinstance(seconds, int | float):
                        self.stage_seconds.observe(float(seconds), stage=str(stage))
            if isinstance(timings, dict):
                for step, seconds in timings.items():
                    if step != "total" and isinstance(seconds, int | float):
                        self.step_seconds.observe(float(seconds), step=str(step))
                total = timings.get("total")
                frames = result.get("frames")
                if isinstance(total, int | float) and total > 0:
                    self.job_seconds.observe(float(total))
                    self._durations = (self._durations + [float(total)])[-50:]
                    if isinstance(frames, int):
                        self.fps.observe(frames / float(total))
            if queued_seconds is not None:
                self.queue_seconds.observe(queued_seconds)
            if result.get("cpu_fallback"):
                self.cpu_fallbacks.inc()

    def job_ended(self, state: str, error_type: str | None = None) -> None:
        with self._lock:
            self.jobs_finished.inc(state=state)
            if error_type in ("PipelineStalled",):
                self.stalls.inc(kind="pipeline")

    def worker_stalled(self) -> None:
        with self._lock:
            self.stalls.inc(kind="worker")

    def worker_restarted(self, reason: str) -> None:
        with self._lock:
            self.worker_restarts.inc(reason=reason)

    def submitted(self, api: str) -> None:
        with self._lock:
            self.jobs_submitted.inc(api=api)

    def rejected_submission(self, reason: str) -> None:
        with self._lock:
            self.rejected.inc(reason=reason)

    def mean_job_seconds(self) -> float | None:
        with self._lock:
            return sum(self._durations) / len(self._durations) if self._durations else None

    def render(self, extra: Iterable[str] = ()) -> str:
        with self._lock:
            lines = list(extra)
            for metric in (
                self.jobs_submitted,
                self.jobs_finished,
                self.rejected,
                self.stalls,
                self.worker_restarts,
                self.cpu_fallbacks,
            ):
                lines += metric.render()
            for hist in (
                self.stage_seconds,
                self.step_seconds,
                self.job_seconds,
                self.queue_seconds,
                self.fps,
            ):
                lines += hist.render()
        return "\n".join(lines) + "\n"
