"""The native API: submit, status, result download, cancel or delete, list.

A client sees only its own jobs (an admin key sees all); another client's job is 404.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile
from fastapi.responses import FileResponse
from pydantic import ConfigDict, Field, model_validator
from starlette.types import Receive, Scope, Send

from heygem.config import option_specs
from service.admission import Submission, admit, job_overrides, submission
from service.deps import ClientDep, ServicesDep
from service.errors import (
    JobConflict,
    MissingParameter,
    RangeNotSatisfiable,
    ResultNotReady,
    UploadNotFound,
)
from service.jobs import Job, JobState
from service.media import safe_suffix, store_stream
from service.models import ErrorResponse, GenerationList, GenerationStatus
from service.observe import JOB_ID_HEADER
from service.options import JobOptions

router = APIRouter(prefix="/v1/generations", tags=["generations"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}


FILE_FIELDS = ("audio", "video")


class SubmitForm(JobOptions):
    """The form fields of a submission: where the inputs are, and the per-job options."""

    # The file fields arrive in the same form; they are File parameters, not options.
    model_config = ConfigDict(frozen=True, extra="ignore")

    audio_upload_id: str | None = Field(None, description="an id from POST /v1/uploads")
    video_upload_id: str | None = Field(None, description="an id from POST /v1/uploads")
    audio_path: str | None = Field(None, description="a path under the media root")
    video_path: str | None = Field(None, description="a path under the media root")

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_fields(cls, data: Any) -> Any:
        """A field the server does not use is refused, not dropped: a misspelt option
        (``presett``) or a server setting (``checkpoint``) would otherwise look applied."""
        if not isinstance(data, Mapping):
            return data
        known = set(cls.model_fields) | set(FILE_FIELDS)
        unknown = sorted(str(name) for name in data if name not in known)
        if not unknown:
            return data
        server_side = {spec.name for spec in option_specs()}
        name = unknown[0]
        why = (
            "is set by the server for every job (HEYGEM_SERVICE_PIPELINE__"
            f"{name.upper()}), not per job"
            if name in server_side
            else "is not a field of this form"
        )
        per_job = sorted(JobOptions.model_fields)  # this form's fields minus the inputs
        raise ValueError(
            f"'{name}' {why}; a job takes the files {', '.join(FILE_FIELDS)} (or their "
            f"_upload_id/_path), and the options {', '.join(per_job)}"
        )


def _input(
    sub: Submission,
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
    services = sub.services
    settings = services.settings
    if upload is not None:
        name = _client_name(upload.filename, kind)
        target = sub.input(kind, sub.directory / f"{kind}{safe_suffix(upload.filename)}", name)
        store_stream(upload.file, target, max_bytes=settings.max_upload_bytes, what=name)
        return target
    if upload_id:
        record = services.store.get_upload(upload_id, sub.caller.scope)
        if record is None or not Path(record["path"]).is_file():
            raise UploadNotFound(
                f"no upload with id {upload_id[:64]!r}",
                hint="upload the file with POST /v1/uploads first",
            )
        services.store.touch_upload(upload_id)
        return sub.input(kind, Path(record["path"]), record["filename"])
    assert path is not None
    return sub.media_path(kind, path, f"{kind}_path")


def _client_name(filename: str | None, kind: str) -> str:
    name = Path(filename or "").name[:200]
    return name or f"the {kind} upload"


@router.post(
    "",
    status_code=202,
    response_model=GenerationStatus,
    responses=_ERRORS,
    summary="Submit a generation job",
)
def submit(
    services: ServicesDep,
    caller: ClientDep,
    request: Request,
    response: Response,
    form: Annotated[SubmitForm, Form()],
    audio: Annotated[UploadFile | None, File(description="speech audio (any format)")] = None,
    video: Annotated[UploadFile | None, File(description="template video or still image")] = None,
) -> GenerationStatus:
    options = job_overrides(services, form)
    with submission(services, request, caller) as sub:
        audio_file = _input(sub, "audio", audio, form.audio_upload_id, form.audio_path)
        video_file = _input(sub, "video", video, form.video_upload_id, form.video_path)
        job = admit(sub, audio_file, video_file, options=options)
    response.headers["Location"] = f"/v1/generations/{job.id}"
    response.headers[JOB_ID_HEADER] = job.id
    return GenerationStatus.of(job, services.store.queue_position(job), caller.admin)


@router.get("", response_model=GenerationList, responses=_ERRORS, summary="List your jobs")
def list_generations(
    services: ServicesDep,
    caller: ClientDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    state: Annotated[JobState | None, Query()] = None,
) -> GenerationList:
    jobs, total = services.store.page(limit=limit, offset=offset, state=state, client=caller.scope)
    items = [GenerationStatus.of(job, admin=caller.admin) for job in jobs]
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
def get_generation(
    services: ServicesDep, caller: ClientDep, job_id: str, response: Response
) -> GenerationStatus:
    job = services.store.get(job_id, caller.scope)
    response.headers[JOB_ID_HEADER] = job.id
    position = services.store.queue_position(job) if job.state is JobState.QUEUED else None
    return GenerationStatus.of(job, position, caller.admin)


class _WholeFile(FileResponse):
    """The whole file, whatever Range the request carried (RFC 9110 14.2: a Range header
    that does not parse is ignored)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope.get("headers", ()) if k != b"range"]
        await super().__call__({**scope, "headers": headers}, receive, send)


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
    services: ServicesDep, caller: ClientDep, job_id: str, request: Request
) -> FileResponse:
    return result_response(services.store.get(job_id, caller.scope), request)


def result_path(job: Job) -> Path:
    """The finished job's MP4, or the error saying why there is none."""
    if job.state is not JobState.SUCCEEDED:
        raise ResultNotReady(
            f"job {job.id} has no result: it is {job.state.value}",
            hint="poll GET /v1/generations/{id} until state is succeeded"
            if not job.state.finished
            else "submit the job again",
        )
    path = Path(job.output_path)
    if not path.is_file():
        raise JobConflict(
            f"the result of job {job.id} is no longer on disk", hint="submit the job again"
        )
    return path


def result_response(job: Job, request: Request) -> FileResponse:
    """The job's MP4, whole or the ranges asked for (also served by result links)."""
    path = result_path(job)
    headers = {JOB_ID_HEADER: job.id}
    ranged = _wanted_range(request.headers.get("range"), path.stat().st_size)
    kind = FileResponse if ranged else _WholeFile
    return kind(path, media_type="video/mp4", filename=f"{job.id}.mp4", headers=headers)


@router.delete(
    "/{job_id}",
    response_model=GenerationStatus,
    responses={**_ERRORS, 204: {"description": "the finished job and its files were removed"}},
    summary="Cancel a queued or running job; delete a finished one",
)
def cancel_or_delete(
    services: ServicesDep, caller: ClientDep, job_id: str, response: Response
) -> Any:
    job = services.store.get(job_id, caller.scope)
    if job.state.finished:
        services.lifecycle.delete(job_id, caller.scope)
        return Response(status_code=204, headers={JOB_ID_HEADER: job.id})
    job = services.lifecycle.cancel(job_id, caller.scope)
    response.headers[JOB_ID_HEADER] = job.id
    if job.state is JobState.RUNNING:
        services.executor.wake()  # the executor tells the worker; it reports when stopped
        response.status_code = 202
    return GenerationStatus.of(job, admin=caller.admin)


# RFC 9110 14.1.2: ranges-specifier = "bytes=" 1#( first-last / first- / -suffix ).
_RANGE_SPEC = re.compile(r"^\s*(?:(\d+)-(\d*)|-(\d+))\s*$")


def _wanted_range(header: str | None, size: int) -> bool:
    """Whether to answer a part: False for no or a malformed Range header (ignored, so the
    whole file is sent), RangeNotSatisfiable (416) when no range overlaps the file."""
    if header is None:
        return False
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return False
    satisfiable = False
    for spec in specs.split(","):
        match = _RANGE_SPEC.match(spec)
        if match is None:
            return False
        first, last, suffix = match.groups()
        if first is not None and last and int(last) < int(first):
            return False
        satisfiable |= int(first) < size if first is not None else int(suffix) > 0
    if not satisfiable:
        raise RangeNotSatisfiable(
            f"range {header[:100]!r} is outside the {size} byte file",
            size=size,
            hint=f"ask for bytes 0-{size - 1}",
        )
    return True
