"""HeyGem-compatible API (``/easy/submit``, ``/easy/query``) for existing clients.

Answers use HeyGem's envelope ``{code, success, msg, data}`` with HTTP 200, as HeyGem
does: its clients read ``code``. Media references are paths under the media root or
allow-listed URLs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from heygem.progress import STEP_TITLES
from service.admission import Submission, admit, submission
from service.deps import ClientDep, Services, ServicesDep
from service.errors import CompatCode, MissingParameter, compat_body
from service.fetch import fetch, is_url
from service.jobs import Job, JobState, Phase
from service.media import copy_into, safe_suffix
from service.models import CompatResponse, CompatSubmit
from service.observe import JOB_ID_HEADER
from service.store import CODE

router = APIRouter(prefix="/easy", tags=["heygem-compatible"])

_STATUS = {
    JobState.QUEUED: 1,
    JobState.RUNNING: 1,
    JobState.SUCCEEDED: 2,
    JobState.FAILED: 3,
    JobState.CANCELLED: 3,
}
_IGNORED = {
    "watermark_switch": "watermarks",
    "digital_auth": "digital-human authorisation marks",
    "chaofen": "super-resolution (chaofen)",
}


def _media(sub: Submission, kind: str, reference: str, name: str) -> Path:
    settings = sub.services.settings
    if is_url(reference):
        target = sub.directory / f"{name}{safe_suffix(reference.split('?')[0])}"
        sub.input(kind, target, name)
        fetch(
            reference,
            target,
            allowlist=settings.url_allowlist,
            max_bytes=settings.url_max_bytes,
            timeout=settings.url_timeout,
            what=name,
        )
        return target
    return sub.media_path(kind, reference, name)


@router.post("/submit", response_model=CompatResponse, summary="Submit a task (HeyGem API)")
def submit(
    services: ServicesDep,
    caller: ClientDep,
    request: Request,
    body: CompatSubmit,
    response: Response,
) -> dict[str, Any]:
    missing = [n for n in ("audio_url", "video_url", "code") if not getattr(body, n)]
    if missing:
        raise MissingParameter(
            f"missing parameter: {', '.join(missing)}", hint="send audio_url, video_url and code"
        )
    assert body.code and body.audio_url and body.video_url
    if not CODE.match(body.code):
        raise MissingParameter(
            f"code {body.code!r} is not a valid task code",
            hint="use letters, digits, '.', '_' or '-' (a UUID is fine)",
        )
    warnings = tuple(
        f"{what} requested but not supported; ignored"
        for key, what in _IGNORED.items()
        if getattr(body, key)
    )
    with submission(services, request, caller) as sub:
        audio = _media(sub, "audio", body.audio_url, "audio_url")
        video = _media(sub, "video", body.video_url, "video_url")
        job = admit(sub, audio, video, options={}, source="easy", code=body.code, warnings=warnings)
    response.headers[JOB_ID_HEADER] = job.id
    return compat_body(CompatCode.OK, "", {"code": body.code, "job_id": job.id})


@router.get("/query", response_model=CompatResponse, summary="Query a task (HeyGem API)")
def query(
    services: ServicesDep,
    caller: ClientDep,
    response: Response,
    code: Annotated[str | None, Query(description="the task code")] = None,
) -> dict[str, Any]:
    if not code:
        raise MissingParameter("missing parameter: code", hint="send ?code=<task code>")
    job = services.store.get_by_code(code, caller.scope)
    response.headers[JOB_ID_HEADER] = job.id
    data = {
        "code": code,
        "status": _STATUS[job.state],
        "progress": job.progress,
        "result": _result(job),
        "msg": _message(services, job),
    }
    return compat_body(CompatCode.OK, "", data)


def publish_compat_result(media_root: Path | None, job: Job) -> str | None:
    """Put a compat job's MP4 where HeyGem clients look: ``<media root>/<code>-r.mp4``."""
    if job.source != "easy" or job.code is None or media_root is None:
        return None
    target = media_root / f"{job.code}-r.mp4"
    copy_into(Path(job.output_path), target)
    return f"/{target.name}"


def unpublish_compat_result(media_root: Path | None, job: Job) -> None:
    """Remove what ``publish_compat_result`` put in the media root (job deleted or expired)."""
    if media_root is None or not job.published_path or job.code is None:
        return
    name = job.published_path.lstrip("/")
    if name == f"{job.code}-r.mp4":  # only ever the file this job published
        (media_root / name).unlink(missing_ok=True)


def _result(job: Job) -> str:
    if job.state is not JobState.SUCCEEDED:
        return ""
    return job.published_path or f"/v1/generations/{job.id}/result"


def _message(services: Services, job: Job) -> str:
    if job.state is JobState.SUCCEEDED:
        return "success"
    if job.state is JobState.QUEUED:
        return f"queued (position {services.store.queue_position(job)})"
    if job.state is JobState.RUNNING:
        if job.cancel_requested:
            return "cancelling"
        if job.phase == Phase.PREPARING and job.step in STEP_TITLES:
            counts = f", {job.step_done} of {job.step_total}" if job.step_total else ""
            return f"{job.phase}: {STEP_TITLES[job.step]}{counts}"  # progress stays at 5
        return job.phase
    error = job.error
    text = error.message if error else job.state.value
    if error and error.hint:
        text += f" ({error.hint})"
    return text
