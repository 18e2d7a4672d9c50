"""Uploads a client can reference from several jobs (e.g. one avatar video, many audios)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Request, UploadFile

from service.admission import new_id
from service.deps import ClientDep, ServicesDep, admitting
from service.errors import CLIENT_NAMES_KEY, UploadNotFound
from service.media import safe_suffix, store_stream, summarize
from service.models import ErrorResponse, UploadInfo

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422, 503)
}


def _info(record: dict[str, Any]) -> UploadInfo:
    return UploadInfo(
        id=record["id"],
        filename=record["filename"],
        size=record["size"],
        created_at=datetime.fromtimestamp(record["created_at"], UTC),
        **record["info"],
    )


@router.post(
    "",
    status_code=201,
    response_model=UploadInfo,
    responses=_ERRORS,
    summary="Upload an audio or template video for later jobs",
)
def upload(
    services: ServicesDep,
    caller: ClientDep,
    request: Request,
    file: Annotated[UploadFile, File(description="audio or video")],
) -> UploadInfo:
    admitting(services)
    upload_id = new_id()
    directory = services.settings.data_dir / "uploads" / upload_id
    directory.mkdir(parents=True)
    filename = Path(file.filename or "").name[:255] or "the upload"
    path = directory / f"media{safe_suffix(file.filename)}"
    request.scope[CLIENT_NAMES_KEY] = {str(path): filename, str(directory): "the upload"}
    try:
        size = store_stream(
            file.file, path, max_bytes=services.settings.max_upload_bytes, what=filename
        )
        summary = summarize(path)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    services.store.add_upload(upload_id, str(path), filename, size, summary.__dict__, caller.name)
    record = services.store.get_upload(upload_id)
    assert record is not None
    return _info(record)


@router.get(
    "/{upload_id}", response_model=UploadInfo, responses=_ERRORS, summary="Describe an upload"
)
def get_upload(services: ServicesDep, caller: ClientDep, upload_id: str) -> UploadInfo:
    record = services.store.get_upload(upload_id, caller.scope)
    if record is None:
        raise UploadNotFound(
            f"no upload with id {upload_id[:64]!r}", hint="upload the file with POST /v1/uploads"
        )
    return _info(record)
