"""Request and response shapes (they are also the OpenAPI schema)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from heygem.errors import FailureCause
from heygem.progress import STEP_TITLES
from service.jobs import Job, JobError, JobState, Phase


class ErrorInfo(BaseModel):
    type: str = Field(description="Error class, e.g. QueueFull, MediaUnreadable")
    message: str = Field(description="What happened and what was expected (never empty)")
    hint: str | None = Field(default=None, description="What to do about it")
    status: int
    cause: str = Field(description="FailureCause, e.g. invalid-option, media-unreadable")
    details: Any = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx of the native API has this shape."""

    error: ErrorInfo


class JobErrorInfo(BaseModel):
    type: str = Field(description="Error class, e.g. PipelineStalled, WorkerCrashed")
    message: str
    hint: str | None = None
    cause: str = Field(description="FailureCause: no-progress, oom-killed, killed, timed-out...")
    cause_description: str = Field(description="The cause in plain words")
    phase: str | None = Field(default=None, description="The job's phase when it ended")
    stage: str | None = Field(default=None, description="The pipeline stage, where known")

    @classmethod
    def of(cls, error: JobError) -> JobErrorInfo:
        cause = FailureCause(error.cause)
        return cls(**error.to_dict(), cause_description=cause.description)


class GenerationStatus(BaseModel):
    id: str
    state: JobState
    phase: Phase = Field(description="queued, starting, preparing, generating or done")
    stage: str | None = Field(
        default=None, description="The pipeline stage (decode/load/generate/compose), where known"
    )
    progress: int = Field(ge=0, le=100)
    frames_done: int | None = Field(default=None, description="Frames written so far")
    frames_total: int | None = Field(default=None, description="Frames the output will have")
    step: str | None = Field(
        default=None,
        description="The pipeline step the job is in: load_model, export_onnx (once per "
        "model), audio_features, template (the template analysis, once per template), "
        "face_features (Wav2Lip's face encoding, once per template), generate (frames "
        "written). Steps before generate overlap; this is the one started last. Kept once "
        "the job ended (the step it ended in); null before the first report",
    )
    step_title: str | None = Field(
        default=None, description="The step in words, e.g. 'analysing the template'"
    )
    step_done: int | None = Field(
        default=None,
        description="Units of the step done (frames); a step without countable units says 0 "
        "while it runs and 1 once it ended",
    )
    step_total: int | None = Field(
        default=None,
        description="Units the step has (frames; an estimate while a template is analysed); "
        "null when it has no countable units (a model load or export)",
    )
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_position: int | None = Field(default=None, description="1 = next to run (queued jobs)")
    attempts: int
    cancel_requested: bool
    timeout_seconds: float | None = Field(
        default=None, description="Running time after which the job is stopped"
    )
    options: dict[str, Any]
    inputs: dict[str, str] = Field(
        default_factory=dict, description="The audio and video as the client named them"
    )
    timings: dict[str, float] = Field(description="Seconds per job step (queued wait included)")
    stage_seconds: dict[str, float] = Field(
        default_factory=dict, description="Busy seconds per pipeline stage"
    )
    providers_requested: list[str]
    providers_used: list[str]
    warnings: list[str]
    frames: int | None = None
    fps: float | None = None
    duration: float | None = None
    error: JobErrorInfo | None = None
    client: str | None = Field(default=None, description="The owning client (admin view)")
    worker: str | None = Field(default=None, description="The worker that ran it (admin view)")
    code: str | None = Field(default=None, description="HeyGem task code (compat API jobs)")
    result_url: str | None = None

    @classmethod
    def of(
        cls, job: Job, queue_position: int | None = None, admin: bool = False
    ) -> GenerationStatus:
        result = job.result
        timings = {
            k: float(v)
            for k, v in dict(result.get("timings") or {}).items()
            if isinstance(v, int | float)
        }
        if job.started_at is not None:
            timings = {"queued": round(job.started_at - job.created_at, 3)} | timings
        return cls(
            id=job.id,
            state=job.state,
            phase=Phase(job.phase),
            stage=job.stage,
            progress=job.progress,
            frames_done=job.frames_done,
            frames_total=job.frames_total,
            step=job.step,
            step_title=STEP_TITLES.get(job.step) if job.step else None,
            step_done=job.step_done,
            step_total=job.step_total,
            created_at=datetime.fromtimestamp(job.created_at, UTC),
            started_at=_time(job.started_at),
            finished_at=_time(job.finished_at),
            queue_position=queue_position,
            attempts=job.attempts,
            cancel_requested=job.cancel_requested,
            timeout_seconds=job.timeout,
            options=job.options,
            inputs=job.input_names,
            timings=timings,
            stage_seconds={
                k: float(v)
                for k, v in dict(result.get("stage_seconds") or {}).items()
                if isinstance(v, int | float)
            },
            providers_requested=[str(p) for p in result.get("providers_requested") or ()],
            providers_used=[str(p) for p in result.get("providers_used") or ()],
            warnings=list(job.warnings),
            frames=result.get("frames"),
            fps=result.get("fps"),
            duration=result.get("duration"),
            error=JobErrorInfo.of(job.error) if job.error else None,
            client=job.client if admin else None,
            worker=job.worker if admin else None,
            code=job.code,
            result_url=f"/v1/generations/{job.id}/result"
            if job.state is JobState.SUCCEEDED
            else None,
        )


class GenerationList(BaseModel):
    items: list[GenerationStatus]
    total: int
    limit: int
    offset: int
    next_offset: int | None = Field(default=None, description="offset of the next page, if any")


class UploadInfo(BaseModel):
    id: str
    filename: str
    size: int
    created_at: datetime
    has_audio: bool
    has_video: bool
    duration: float | None = None
    width: int | None = None
    height: int | None = None


class CompatSubmit(BaseModel):
    """HeyGem's /easy/submit body. Unknown keys are ignored, as HeyGem does."""

    model_config = ConfigDict(extra="ignore")

    audio_url: str | None = Field(
        default=None, description="path under the media root, or an allow-listed http(s) URL"
    )
    video_url: str | None = None
    code: str | None = Field(default=None, description="the client's task id")
    watermark_switch: int | None = 0
    digital_auth: int | None = 0
    chaofen: int | None = 0
    pn: int | None = 1


class CompatQueryData(BaseModel):
    code: str
    status: int = Field(description="1 running (or queued), 2 success, 3 error")
    progress: int
    result: str
    msg: str = Field(
        description="success; queued (position n); the phase while running, with the "
        "pipeline step while preparing (e.g. 'preparing: analysing the template (once per "
        "template), 120 of 250'); cancelling; or why it failed"
    )


class CompatResponse(BaseModel):
    code: int = Field(
        description="10000 ok, 10001 busy, 10002 missing parameter, "
        "10004 task not found, 9999 system error"
    )
    success: bool
    msg: str
    data: Any = None


class Check(BaseModel):
    ok: bool
    detail: str


class WorkerStatus(BaseModel):
    name: str
    state: str
    pid: int | None = None
    job_id: str | None = None
    seconds_since_heartbeat: float | None = None
    rss_bytes: int | None = None
    jobs_done: int = 0
    last_start_error: str | None = None


class Readiness(BaseModel):
    """Anyone sees ready and the checks' verdicts; details need an admin key."""

    ready: bool
    checks: dict[str, Check]
    workers: list[WorkerStatus] = Field(default_factory=list, description="admin view only")


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)
