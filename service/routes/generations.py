"""The native API: submit, status, result download, cancel, list."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile
from fastapi.responses import FileResponse

from service.admission import admit, check_queue, job_directory, job_overrides, new_id
from service.deps import Authorized, Services, ServicesDep
from service.errors import (
    JobConflict,
    MissingParameter,
    RangeNotSatisfiable,
    ResultNotReady,
    UploadNotFound,
)
from service.jobs import JobState
from service.media import confined, safe_suffix, store_stream
from service.models import ErrorResponse, GenerationList, GenerationStatus

router = APIRouter(prefix="/v1/generations", tags=["generations"], dependencies=[Authorized])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 413, 422, 429)
}


def _status(services: Services, job_id: str) -> GenerationStatus:
    job = services.store.get(job_id)
    position = services.store.queue_position(job) if job.state is JobState.QUEUED else None
    return GenerationStatus.of(job, position)


def _input(
    services: Services,
    job_dir: Path,
    kind: str,
    upload: UploadFile | None,
    upload_id: str | None,
    path: str | None,
) -> Path:
    """Exactly one of: a file in this request, an earlier upload, a media-root path."""
    given = [
        name
        for name, value in (
            (kind, upload),
            (f"{kind}_upload_id", upload_id),
            (f"{kind}_path", path),
        )
        if value
    ]
    if len(given) != 1:
        problem = "is missing" if not given else f"is given {len(given)} ways ({', '.join(given)})"
        raise MissingParameter(
            f"the {kind} input {problem}",
            hint=f"send exactly one of: a file field '{kind}', '{kind}_upload_id' (from "
            f"POST /v1/uploads) or '{kind}_path' (under the media root)",
        )
    settings = services.settings
    if upload is not None:
        target = job_dir / f"{kind}{safe_suffix(upload.filename)}"
        store_stream(
            upload.file, target, max_bytes=settings.max_upload_bytes, what=f"the {kind} upload"
        )
        return target
    if upload_id:
        record = services.store.get_upload(upload_id)
        if record is None or not Path(record["path"]).is_file():
            raise UploadNotFound(
                f"no upload with id {upload_id!r}",
                hint="upload the file with POST /v1/uploads first",
            )
        return Path(record["path"])
    assert path is not None
    return confined(settings.media_root, path, f"{kind}_path")


@router.post(
    "",
    status_code=202,
    response_model=GenerationStatus,
    responses=_ERRORS,
    summary="Submit a generation job",
)
def submit(
    services: ServicesDep,
    response: Response,
    audio: Annotated[UploadFile | None, File(description="speech audio (any format)")] = None,
    video: Annotated[UploadFile | None, File(description="template video or still image")] = None,
    audio_upload_id: Annotated[str | None, Form()] = None,
    video_upload_id: Annotated[str | None, Form()] = None,
    audio_path: Annotated[str | None, Form(description="path under the media root")] = None,
    video_path: Annotated[str | None, Form(description="path under the media root")] = None,
    backend: Annotated[str | None, Form()] = None,
    batch_size: Annotated[int | None, Form()] = None,
    fps: Annotated[float | None, Form()] = None,
    preset: Annotated[str | None, Form()] = None,
    crf: Annotated[int | None, Form()] = None,
    stall_timeout: Annotated[float | None, Form()] = None,
    fault: Annotated[
        str | None, Form(description="STAGE:KIND[:SECONDS], test servers only")
    ] = None,
) -> GenerationStatus:
    check_queue(services)
    options = job_overrides(
        services,
        {
            "backend": backend,
            "batch_size": batch_size,
            "fps": fps,
            "preset": preset,
            "crf": crf,
            "stall_timeout": stall_timeout,
            "fault": fault,
        },
    )
    job_id = new_id()
    with job_directory(services, job_id) as job_dir:
        audio_file = _input(services, job_dir, "audio", audio, audio_upload_id, audio_path)
        video_file = _input(services, job_dir, "video", video, video_upload_id, video_path)
        job = admit(services, job_id, job_dir, audio_file, video_file, options=options)
    response.headers["Location"] = f"/v1/generations/{job.id}"
    return GenerationStatus.of(job, services.store.queue_position(job))


@router.get("", response_model=GenerationList, responses=_ERRORS, summary="List jobs")
def list_generations(
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    state: Annotated[JobState | None, Query()] = None,
) -> GenerationList:
    jobs, total = services.store.page(limit=limit, offset=offset, state=state)
    items = [GenerationStatus.of(job) for job in jobs]
    following = offset + len(items)
    return GenerationList(
        items=items,
        total=total,
        limit=limit,
        offset=offset,
        next_offset=following if following < total else None,
    )


@router.get(
    "/{job_id}", response_model=GenerationStatus, responses=_ERRORS, summary="Status of a job"
)
def get_generation(services: ServicesDep, job_id: str) -> GenerationStatus:
    return _status(services, job_id)


@router.get(
    "/{job_id}/result",
    response_class=FileResponse,
    responses={
        **_ERRORS,
        200: {"content": {"video/mp4": {}}},
        206: {"content": {"video/mp4": {}}},
        416: {"model": ErrorResponse},
    },
    summary="Download the MP4 (range requests supported)",
)
def get_result(
    services: ServicesDep, job_id: str, range_: Annotated[str | None, Header(alias="range")] = None
) -> FileResponse:
    job = services.store.get(job_id)
    if job.state is not JobState.SUCCEEDED:
        raise ResultNotReady(
            f"job {job_id} has no result: it is {job.state.value}",
            hint="poll GET /v1/generations/{id} until state is succeeded"
            if not job.state.finished
            else "submit the job again",
        )
    path = Path(job.output_path)
    if not path.is_file():
        raise JobConflict(
            f"the result of job {job_id} is no longer on disk", hint="submit the job again"
        )
    if range_ is not None:
        _check_range(range_, path.stat().st_size)
    return FileResponse(path, media_type="video/mp4", filename=f"{job_id}.mp4")


@router.delete(
    "/{job_id}",
    response_model=GenerationStatus,
    responses=_ERRORS,
    summary="Cancel a queued or running job",
)
def cancel_generation(services: ServicesDep, job_id: str, response: Response) -> GenerationStatus:
    job = services.store.request_cancel(job_id)
    if job.state is JobState.RUNNING:
        services.pool.wake()  # the supervisor tells the worker; it reports when stopped
        response.status_code = 202
    return _status(services, job_id)


_RANGE = re.compile(r"^bytes=\s*(\d*)-(\d*)\s*(,\s*\d*-\d*\s*)*$")


def _check_range(header: str, size: int) -> None:
    """Refuse malformed or unsatisfiable ranges in our error shape (the rest: Starlette)."""
    match = _RANGE.match(header)
    if match is None:
        raise RangeNotSatisfiable(
            f"Range header {header!r} is malformed", size=size, hint="use e.g. 'bytes=0-1023'"
        )
    start, end = match.group(1), match.group(2)
    if not start and not end:
        raise RangeNotSatisfiable(
            f"Range header {header!r} names no bytes", size=size, hint="use e.g. 'bytes=0-1023'"
        )
    if start and (int(start) >= size or (end and int(end) < int(start))):
        raise RangeNotSatisfiable(
            f"range {header!r} is outside the {size} byte file",
            size=size,
            hint=f"ask for bytes 0-{size - 1}",
        )
