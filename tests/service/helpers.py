"""Polling and request helpers shared by the service tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.helpers import wait_for

SPEECH_SECONDS = 2.0  # the media root's speech.wav
FINAL = ("succeeded", "failed", "cancelled")


def wait_final(client: TestClient, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        status = client.get(f"/v1/generations/{job_id}").json()
        return status if status["state"] in FINAL else None

    result: dict[str, Any] = wait_for(final, timeout)
    return result


def files(audio: Path, video: Path) -> dict[str, Any]:
    return {"audio": (audio.name, audio.read_bytes()), "video": (video.name, video.read_bytes())}
