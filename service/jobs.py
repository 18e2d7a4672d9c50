"""The job record as stored and as the rest of the service sees it."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class Stage(StrEnum):
    """Coarse stages a client can show; the pipeline's own timings are finer."""

    QUEUED = "queued"
    STARTING = "starting"  # sent to a worker
    PREPARING = "preparing"  # input checks, audio features, face tracking
    GENERATING = "generating"  # streaming: decode, generate, composite, encode
    DONE = "done"


@dataclass(frozen=True)
class JobError:
    type: str
    message: str
    hint: str | None = None
    stage: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobError:
        message = str(data.get("message") or "") or f"{data.get('type', 'Error')} (no detail)"
        stage = data.get("stage")
        hint = data.get("hint")
        return cls(
            type=str(data.get("type") or "Error"),
            message=message,
            hint=str(hint) if hint else None,
            stage=str(stage) if stage else None,
        )


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


@dataclass(frozen=True)
class Job:
    id: str
    state: JobState
    stage: str
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
    started_at: float | None = None
    finished_at: float | None = None
    worker_pid: int | None = None
    result: dict[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    error: JobError | None = None
    published_path: str | None = None  # compat: where the result was published
