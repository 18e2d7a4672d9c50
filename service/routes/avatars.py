"""Avatars: a client's template uploads, with the cached template analysis (for the page's
"pick an avatar": thumbnail, length, face found)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from service.deps import ClientDep, ServicesDep
from service.models import ErrorResponse
from service.web.avatars import describe

router = APIRouter(prefix="/v1/avatars", tags=["web"])
SCAN = 4  # uploads looked at per avatar shown (re-uploads of one template are skipped)


class Avatar(BaseModel):
    upload_id: str = Field(description="pass as video_upload_id to POST /v1/generations")
    filename: str
    created_at: datetime
    last_used_at: datetime | None = None
    duration: float | None = None
    width: int | None = None
    height: int | None = None
    still: bool | None = Field(default=None, description="a still image, not a video")
    thumbnail: str | None = Field(default=None, description="the first frame, a data: URL")
    analysed: bool = Field(
        default=False, description="a job analysed this template; the next one reuses it"
    )
    frames: int | None = Field(
        default=None, description="template frames (estimated until analysed)"
    )
    face_frames: int | None = Field(default=None, description="frames with a face (once analysed)")
    error: str | None = Field(default=None, description="why this upload cannot be an avatar")


class AvatarList(BaseModel):
    items: list[Avatar]
    kept_seconds: float = Field(description="an avatar unused this long is removed")


@router.get(
    "",
    response_model=AvatarList,
    responses={401: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
    summary="Your template uploads, most recently used first, with their cached analysis",
)
def list_avatars(
    services: ServicesDep, caller: ClientDep, limit: Annotated[int, Query(ge=1, le=100)] = 24
) -> AvatarList:
    settings = services.settings
    limits = (settings.options.max_width, settings.options.max_height)
    items: list[Avatar] = []
    seen: set[str] = set()
    # The same template uploaded again is one avatar (its most recent upload).
    for record in services.store.recent_uploads(caller.scope, SCAN * limit, video=True):
        avatar: dict[str, Any] = describe(record, settings.cache_dir, limits)
        digest = avatar.pop("content_hash", None)
        if digest in seen:
            continue
        if digest is not None:
            seen.add(digest)
        if avatar.get("error"):
            names = {record["path"]: record["filename"], str(Path(record["path"]).parent): ""}
            avatar["error"] = services.redactor.text(avatar["error"], names)
        items.append(Avatar(**avatar | _times(avatar)))
        if len(items) == limit:
            break
    return AvatarList(items=items, kept_seconds=settings.upload_ttl)


def _times(avatar: dict[str, Any]) -> dict[str, Any]:
    return {
        key: datetime.fromtimestamp(avatar[key], UTC) if avatar.get(key) is not None else None
        for key in ("created_at", "last_used_at")
    }
