"""Real workers under limits: a job's time limit (derived from its audio), recycling a
worker after N jobs and above a resident-memory limit (issue 11, items 10 and 11)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServiceSettings
from tests.helpers import wait_for
from tests.service.helpers import KEYS, SPEECH_SECONDS, metric, wait_final

REFS = {"audio_path": "speech.wav", "video_path": "template.mp4"}
ADMIN = {"X-API-Key": KEYS["ops"]}
# 7 batches of 8 frames at 1 s each: far beyond the 1 + 1 s/audio-second limit below.
LONG = "generate:slow:1.0"


@pytest.fixture
def limited(
    make_settings: Callable[..., ServiceSettings],
) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def start(**overrides: Any) -> TestClient:
        settings = make_settings(
            workers=1,
            api_key=KEYS["ops"],
            heartbeat_interval=0.25,
            cancel_grace=5.0,
            job_timeout_min=1.0,
            job_timeout_per_audio_second=1.0,
            **overrides,
        )
        client = TestClient(create_app(settings), headers=ADMIN)
        client.__enter__()
        clients.append(client)
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=120)
        return client

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def _pid(client: TestClient) -> int | None:
    workers = client.get("/readyz").json()["workers"]
    return workers[0]["pid"] if workers[0]["state"] == "idle" else None


def _timed_out_job(client: TestClient) -> dict[str, Any]:
    response = client.post("/v1/generations", data=REFS | {"fault": LONG})
    assert response.status_code == 202, response.text
    assert response.json()["timeout_seconds"] == pytest.approx(1.0 + SPEECH_SECONDS, abs=0.2)
    return wait_final(client, response.json()["id"], timeout=60)


def test_a_job_is_stopped_at_its_time_limit_and_the_worker_recycled_after_n_jobs(
    limited: Callable[..., TestClient],
) -> None:
    client = limited(worker_max_jobs=2, worker_max_rss_mib=None)
    first_pid = wait_for(lambda: _pid(client), timeout=60)
    for _ in range(2):
        status = _timed_out_job(client)
        error = status["error"]
        assert status["state"] == "failed" and error["type"] == "JobTimedOut", status
        assert error["cause"] == "timed-out" and "time limit" in error["message"]
        assert error["phase"] in ("preparing", "generating")
    # Two jobs done: the worker was replaced by a fresh process, for a clean heap.
    second_pid = wait_for(lambda: (pid := _pid(client)) != first_pid and pid, timeout=60)
    assert second_pid != first_pid
    metrics = client.get("/metrics").text
    assert metric(metrics, "heygem_worker_restarts_total", reason="recycled") == 1
    assert metric(metrics, "heygem_job_failures_total", cause="timed-out") == 2


def test_a_worker_above_its_memory_limit_is_recycled(
    limited: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = limited(worker_max_jobs=None, worker_max_rss_mib=1)  # any worker is above 1 MiB
    first_pid = wait_for(lambda: _pid(client), timeout=60)
    rss = metric(client.get("/metrics").text, "heygem_worker_rss_bytes", worker="0")
    assert rss is not None and rss > 2**20
    with caplog.at_level(logging.INFO, logger="service.pool"):
        _timed_out_job(client)
        wait_for(lambda: (pid := _pid(client)) != first_pid and pid, timeout=60)
    recycled = [r.getMessage() for r in caplog.records if "recycling worker" in r.getMessage()]
    assert recycled and "resident memory" in recycled[0] and "above the 1 MiB limit" in recycled[0]
    assert metric(client.get("/metrics").text, "heygem_worker_restarts_total", reason="recycled")
