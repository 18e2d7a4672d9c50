"""Polling and request helpers shared by the service tests."""

from __future__ import annotations

import socket
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


# API keys for tests: long enough for the minimum length, one per named client.
KEYS = {name: f"{name}-test-key-0123456789abcdef" for name in ("alice", "bob", "ops")}


def metric(text: str, name: str, **labels: str) -> float | None:
    """A sample's value from Prometheus text, read with prometheus-client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
