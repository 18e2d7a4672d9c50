"""A worker that cannot build its pipeline is retried with back-off, and /readyz says why."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServiceSettings
from tests.service.helpers import wait_for


def test_unloadable_model_is_reported_by_readyz(
    make_settings: Callable[..., ServiceSettings], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "wav2lip.pth"
    checkpoint.write_bytes(b"this is not a torch checkpoint")
    settings = make_settings(workers=1, generator="wav2lip", checkpoint=checkpoint)
    with TestClient(create_app(settings)) as client:

        def start_error() -> str | None:
            body = client.get("/readyz").json()
            error: str | None = body["workers"][0]["last_start_error"]
            return error

        error = wait_for(start_error, timeout=60)
        assert "wav2lip.pth" in error or "checkpoint" in error.lower()
        readiness = client.get("/readyz")
        assert readiness.status_code == 503
        assert "fail to start" in readiness.json()["checks"]["workers"]["detail"]
