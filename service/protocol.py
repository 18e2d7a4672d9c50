"""Messages between the service process and its workers, over one duplex pipe per worker.

A pipe per worker (not one shared queue) because a worker killed with SIGKILL while
writing to a shared ``multiprocessing.Queue`` can leave its lock held and wedge every
other worker; a dead pipe only breaks its own worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


# --- service -> worker ------------------------------------------------------------------
@dataclass(frozen=True)
class RunJob:
    job_id: str
    audio: str
    video: str
    output: str
    options: dict[str, Any] = field(default_factory=dict)  # overrides of the warm options


@dataclass(frozen=True)
class CancelJob:
    job_id: str


@dataclass(frozen=True)
class Stop:
    pass


# --- worker -> service ------------------------------------------------------------------
@dataclass(frozen=True)
class Ready:
    pid: int
    warm_seconds: float
    providers: tuple[str, ...]


@dataclass(frozen=True)
class StartFailed:
    """The warm pipeline could not be built (bad model, missing GPU with require_gpu...)."""

    error: dict[str, Any]


@dataclass(frozen=True)
class Heartbeat:
    pid: int


@dataclass(frozen=True)
class Progress:
    """Where a job is; ``step`` (heygem.progress.StepName) with ``step_done`` of
    ``step_total`` units (None: not countable) is the pipeline step it is in, where known."""

    job_id: str
    phase: str  # service.jobs.Phase
    percent: int
    frames_done: int | None = None
    frames_total: int | None = None
    step: str | None = None
    step_done: int | None = None
    step_total: int | None = None


@dataclass(frozen=True)
class JobDone:
    job_id: str
    result: dict[str, Any]


@dataclass(frozen=True)
class JobFailed:
    job_id: str
    error: dict[str, Any]  # HeygemError.to_dict(): type, message, hint, cause, stage
    cancelled: bool = False


@dataclass(frozen=True)
class Retiring:
    """The worker leaves after this job (stray stage threads, or a stalled pipeline)."""

    reason: str


ToWorker = RunJob | CancelJob | Stop
FromWorker = Ready | StartFailed | Heartbeat | Progress | JobDone | JobFailed | Retiring
