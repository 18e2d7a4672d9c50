"""Uploads a client can reference from several jobs (e.g. one avatar video, many audios)."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, UploadFile

from service.admission import new_id
from service.deps import Authorized, ServicesDep
from service.errors import UploadNotFound
from service.media import safe_suffix, store_stream, summarize
from service.models import ErrorResponse, UploadInfo

router = APIRouter(prefix="/v1/uploads", tags=["uploads"], dependencies=[Authorized])

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 404, 413, 422)
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
    services: ServicesDep, file: Annotated[UploadFile, File(description="audio or video")]
) -> UploadInfo:
    upload_id = new_id()
    directory = services.settings.data_dir / "uploads" / upload_id
    directory.mkdir(parents=True)
    try:
        path = directory / f"media{safe_suffix(file.filename)}"
        size = store_stream(
            file.file, path, max_bytes=services.settings.max_upload_bytes, what="the upload"
        )
        summary = summarize(path)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    filename = (file.filename or path.name)[:255]
    services.store.add_upload(upload_id, str(path), filename, size, summary.__dict__)
    record = services.store.get_upload(upload_id)
    assert record is not None
    return _info(record)


@router.get(
    "/{upload_id}", response_model=UploadInfo, responses=_ERRORS, summary="Describe an upload"
)
def get_upload(services: ServicesDep, upload_id: str) -> UploadInfo:
    record = services.store.get_upload(upload_id)
    if record is None:
        raise UploadNotFound(
            f"no upload with id {upload_id!r}", hint="upload the file with POST /v1/uploads"
        )
    return _info(record)
