"""What a finished job gives the page: a playable link to its result, and its lip-sync score.

``POST /v1/generations/{id}/result-link`` (with the key) returns a short-lived signed URL
that a ``<video>`` element or a download link can use without the key
(``service.web.links``). ``GET /v1/generations/{id}/sync-score`` measures the result with
``heygem-diagnose sync-score`` once, in the background (202 while it runs), then answers
from the stored report.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from service.deps import ClientDep, ServicesDep
from service.jobs import Job
from service.models import ErrorResponse
from service.routes.generations import result_path, result_response
from service.web.state import WebDep

router = APIRouter(tags=["web"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (401, 404, 409, 416, 500)
}


class ResultLinkInfo(BaseModel):
    url: str = Field(description="GET it without a key, until expires_at (ranges supported)")
    expires_at: datetime


class SyncScore(BaseModel):
    state: Literal["measuring", "done"]
    score: float | None = Field(default=None, description="mouth-loudness correlation")
    control: float | None = Field(
        default=None, description="the same against the audio rotated by half (chance level)"
    )
    verdict: str | None = Field(default=None, description="ok, warn or fail")
    report: dict[str, Any] | None = Field(default=None, description="heygem-diagnose's report")


@router.post(
    "/v1/generations/{job_id}/result-link",
    response_model=ResultLinkInfo,
    responses=_ERRORS,
    summary="A short-lived URL to the result, for players and downloads that cannot send a key",
)
def result_link(
    services: ServicesDep, caller: ClientDep, web: WebDep, job_id: str
) -> ResultLinkInfo:
    job = services.store.get(job_id, caller.scope)
    result_path(job)  # 409 now, not when the player asks
    link = web.links.issue(job.id)
    return ResultLinkInfo(
        url=f"/v1/results/{link.token}", expires_at=datetime.fromtimestamp(link.expires_at, UTC)
    )


@router.get(
    "/v1/results/{token}",
    response_class=FileResponse,
    responses={**_ERRORS, 200: {"content": {"video/mp4": {}}}, 206: {"content": {"video/mp4": {}}}},
    summary="The result a signed link names (no key: the link is the permission)",
)
def linked_result(services: ServicesDep, web: WebDep, token: str, request: Request) -> FileResponse:
    return result_response(services.store.get(web.links.job_of(token)), request)


@router.get(
    "/v1/generations/{job_id}/sync-score",
    response_model=SyncScore,
    responses={**_ERRORS, 202: {"model": SyncScore}},
    summary="The result's lip-sync score (measured once, in the background: 202 meanwhile)",
)
def sync_score(
    services: ServicesDep, caller: ClientDep, web: WebDep, job_id: str, response: Response
) -> SyncScore:
    job = services.store.get(job_id, caller.scope)
    video = result_path(job)
    audio = Path(job.audio_path)
    report = web.tools.sync_score(job.id, video, audio if audio.is_file() else video)
    if report is None:
        response.status_code = 202
        return SyncScore(state="measuring")
    shown = _redacted(services, job, report)
    return SyncScore(
        state="done",
        score=shown.get("score"),
        control=shown.get("control"),
        verdict=shown.get("worst"),
        report=shown,
    )


def _redacted(services: ServicesDep, job: Job, report: dict[str, Any]) -> dict[str, Any]:
    """The report with the job's files named as its client knows them."""
    names = {
        job.output_path: "the result",
        job.audio_path: job.input_names.get("audio", "the audio"),
    }
    shown: dict[str, Any] = json.loads(
        services.redactor.text(json.dumps(report, ensure_ascii=False), names)
    )
    return shown
