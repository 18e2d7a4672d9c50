"""The per-job options a client may set, with this server's defaults and limits (what the
page's form offers, built from ``GenerateOptions`` like every other option list)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from heygem.config import FaultInjection, per_job_fields
from service.deps import ClientDep, ServicesDep
from service.models import ErrorResponse

router = APIRouter(prefix="/v1/options", tags=["web"])


class OptionInfo(BaseModel):
    name: str
    help: str
    type: str = Field(description="bool, int, float or str")
    choices: list[str] | None = Field(default=None, description="the values this server takes")
    optional: bool = Field(description="empty means: the server's default")
    default: Any = Field(description="what a job gets when it does not set it")


class Limits(BaseModel):
    max_upload_bytes: int
    max_audio_seconds: float
    max_video_seconds: float


class OptionList(BaseModel):
    options: list[OptionInfo]
    limits: Limits


@router.get(
    "",
    response_model=OptionList,
    responses={401: {"model": ErrorResponse}},
    summary="Options a job may set, with this server's defaults and limits",
)
def list_options(services: ServicesDep, caller: ClientDep) -> OptionList:
    settings = services.settings
    base = settings.base_options()
    options = []
    for spec in per_job_fields():
        if spec.name == "fault" and not settings.allow_fault_injection:
            continue
        choices = list(spec.choices) or None
        if spec.name == "generator" and base.checkpoint is None and choices:
            choices = [c for c in choices if c != "wav2lip"]  # refused without a checkpoint
        default = getattr(base, spec.name)
        kind = str if spec.kind is FaultInjection else spec.kind
        options.append(
            OptionInfo(
                name=spec.name,
                help=spec.info.help,
                type=kind.__name__ if kind in (bool, int, float) else "str",
                choices=choices,
                optional=spec.optional,
                default=str(default) if isinstance(default, FaultInjection) else default,
            )
        )
    return OptionList(
        options=options,
        limits=Limits(
            max_upload_bytes=settings.max_upload_bytes,
            max_audio_seconds=base.max_audio_seconds,
            max_video_seconds=settings.max_video_seconds,
        ),
    )
