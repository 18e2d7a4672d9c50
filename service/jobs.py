"""The job record as stored and as the rest of the service sees it.

A job has a *state* (queued, running, succeeded, failed, cancelled) and, while it lives, a
*phase* (queued, starting, preparing, generating, done). "Stage" is kept for what it means
everywhere else in the project: a pipeline stage (decode, load, generate, compose), named
where it is known (e.g. the stage that stalled). While it runs, a job is also in a
*step* of the pipeline (``heygem.progress``: loading the model, analysing the template...,
generating), the finer detail an operator watches while the job prepares.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from heygem.errors import FailureCause, HeygemError


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Phase(StrEnum):
    """Where a job is in its life, coarse enough for a client to show."""

    QUEUED = "queued"
    STARTING = "starting"  # handed to a worker
    PREPARING = "preparing"  # input checks, audio features, face tracking
    GENERATING = "generating"  # streaming: decode, generate, compose (+ encode)
    DONE = "done"


@dataclass(frozen=True)
class JobError:
    """Why a job did not succeed: the error class, its cause, and where it happened."""

    type: str
    message: str
    hint: str | None = None
    cause: str = FailureCause.INTERNAL.value
    phase: str | None = None  # the job's phase when it ended
    stage: str | None = None  # the pipeline stage, where known

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobError:
        message = str(data.get("message") or "") or f"{data.get('type', 'Error')} (no detail)"
        hint, stage, phase = data.get("hint"), data.get("stage"), data.get("phase")
        cause = str(data.get("cause") or "")
        return cls(
            type=str(data.get("type") or "Error"),
            message=message,
            hint=str(hint) if hint else None,
            cause=cause if cause in FailureCause._value2member_map_ else FailureCause.INTERNAL,
            phase=str(phase) if phase else None,
            stage=str(stage) if stage else None,
        )

    @classmethod
    def of(cls, exc: HeygemError) -> JobError:
        return cls.from_dict(dict(exc.to_dict()))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class NewJob:
    """What admission hands to the store."""

    id: str
    audio_path: str
    video_path: str
    output_path: str
    options: dict[str, Any]
    source: str = "v1"  # or "easy"
    code: str | None = None  # the HeyGem task code (compat API)
    warnings: tuple[str, ...] = ()
    client: str = "anonymous"
    # What the client called its inputs (upload file names, media-root paths, URLs): the
    # only names a client ever sees in messages.
    input_names: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # seconds of running before the job is stopped


@dataclass(frozen=True)
class Job:
    id: str
    state: JobState
    phase: str
    progress: int
    created_at: float
    audio_path: str
    video_path: str
    output_path: str
    options: dict[str, Any]
    source: str
    code: str | None
    attempts: int
    cancel_requested: bool
    client: str = "anonymous"
    input_names: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    stage: str | None = None
    frames_done: int | None = None
    frames_total: int | None = None
    # The pipeline step it is in (heygem.progress.StepName) with its units done of total
    # (None: not countable); kept once the job ended (the step it ended in), cleared when
    # it goes back to the queue.
    step: str | None = None
    step_done: int | None = None
    step_total: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None  # which worker runs it (executor-specific, e.g. "pid 4242")
    cancel_reason: str | None = None
    result: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    error: JobError | None = None
    published_path: str | None = None  # compat: where the result was published
