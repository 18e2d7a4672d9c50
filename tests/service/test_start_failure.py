"""A worker that cannot build its pipeline is retried with back-off, and /readyz says why."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServiceSettings
from tests.helpers import wait_for
from tests.service.helpers import KEYS


def test_unloadable_model_is_reported_by_readyz(
    make_settings: Callable[..., ServiceSettings], tmp_path: Path
) -> None:
    checkpoint = tmp_path / "wav2lip.pth"
    checkpoint.write_bytes(b"this is not a torch checkpoint")
    settings = make_settings(
        workers=1,
        api_key=KEYS["ops"],
        pipeline={"generator": "wav2lip", "checkpoint": checkpoint},
    )
    with TestClient(create_app(settings)) as client:

        def start_error() -> str | None:
            body = client.get("/readyz", headers={"X-API-Key": KEYS["ops"]}).json()
            error: str | None = body["workers"][0]["last_start_error"]
            return error

        error = wait_for(start_error, timeout=60)
        assert "wav2lip.pth" in error or "checkpoint" in error.lower()
        readiness = client.get("/readyz")  # without the admin key: the verdict, no details
        assert readiness.status_code == 503
        detail = readiness.json()["checks"]["workers"]["detail"]
        assert "fail to start" in detail and "wav2lip.pth" not in detail
        assert readiness.json()["workers"] == []
