"""Real worker processes: restart durability, a full job, cancel, a killed worker, a
stalled worker, a stalled pipeline, and the HeyGem-compatible flow.

One app with one worker serves the whole module (workers take seconds to warm up). It
starts on the data directory of a previous service process that stopped with one job
queued and one running, so the restart is real.
"""

from __future__ import annotations

import io
import math
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ServiceSettings
from tests.service.helpers import SPEECH_SECONDS, wait_final, wait_for

REFS = {"audio_path": "speech.wav", "video_path": "template.mp4"}
SLOW = "generate:slow:0.4"  # 7 batches of 8 frames at 0.4 s: ~3 s of generating


@pytest.fixture(scope="module")
def previous_life(
    tmp_path_factory: pytest.TempPathFactory, shared_cache: Path, media_root: Path
) -> dict[str, Any]:
    """A service process that queued jobs and died while its worker ran the first one."""
    settings = ServiceSettings(
        data_dir=tmp_path_factory.mktemp("live"),
        cache_dir=shared_cache,
        media_root=media_root,
        workers=0,
        batch_size=8,
    )
    with TestClient(create_app(settings)) as first:
        interrupted, waiting = (
            first.post("/v1/generations", data=REFS).json()["id"] for _ in range(2)
        )
        store = first.app.state.services.store  # type: ignore[attr-defined]
        claimed = store.claim_next(worker_pid=4242)  # as the supervisor does for a worker
        assert claimed is not None and claimed.id == interrupted
    return {"settings": settings, "interrupted": interrupted, "waiting": waiting}


@pytest.fixture(scope="module")
def live(previous_life: dict[str, Any]) -> Iterator[TestClient]:
    settings = previous_life["settings"].model_copy(
        update={
            "workers": 1,
            "allow_fault_injection": True,
            "heartbeat_interval": 0.25,
            "worker_stall_timeout": 3.0,
            "cancel_grace": 5.0,
        }
    )
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=120)
        yield client


def _submit(client: TestClient, **options: Any) -> str:
    response = client.post("/v1/generations", data=REFS | options)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _worker_pid(client: TestClient) -> int:
    def idle_pid() -> int | None:
        workers = client.get("/readyz").json()["workers"]
        return workers[0]["pid"] if workers[0]["state"] == "idle" else None

    pid: int = wait_for(idle_pid, timeout=60)
    return pid


def _generating(client: TestClient, job_id: str) -> dict[str, Any]:
    def status() -> dict[str, Any] | None:
        body = client.get(f"/v1/generations/{job_id}").json()
        return body if body["stage"] == "generating" and body["progress"] > 10 else None

    result: dict[str, Any] = wait_for(status, timeout=30)
    return result


def _next_job_succeeds(client: TestClient) -> dict[str, Any]:
    status = wait_final(client, _submit(client))
    assert status["state"] == "succeeded", status
    return status


def test_restart_fails_interrupted_jobs_and_runs_queued_ones(
    live: TestClient, previous_life: dict[str, Any]
) -> None:
    failed = live.get(f"/v1/generations/{previous_life['interrupted']}").json()
    assert failed["state"] == "failed" and failed["error"]["type"] == "ServiceRestarted"
    assert "worker pid 4242" in failed["error"]["message"] and failed["error"]["hint"]
    assert wait_final(live, previous_life["waiting"])["state"] == "succeeded"


def test_full_job_status_and_download(live: TestClient) -> None:
    status = wait_final(live, _submit(live))
    assert status["state"] == "succeeded", status
    assert status["progress"] == 100 and status["stage"] == "done" and status["error"] is None
    assert status["frames"] == math.ceil(SPEECH_SECONDS * 25) and status["fps"] == 25
    assert status["providers_used"] == ["CPUExecutionProvider"]
    assert {"queued", "audio_features", "face_track", "stream", "total"} <= set(status["timings"])
    assert set(status["stage_seconds"]) == {"decode", "load", "generate", "compose"}
    assert status["worker_pid"] and status["result_url"].endswith("/result")

    full = live.get(status["result_url"])
    assert full.status_code == 200 and full.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(full.content)) as container:
        assert container.streams.audio and container.streams.video
        assert sum(1 for _ in container.decode(video=0)) == status["frames"]
    size = len(full.content)
    part = live.get(status["result_url"], headers={"Range": "bytes=0-1023"})
    assert part.status_code == 206 and part.content == full.content[:1024]
    assert part.headers["content-range"] == f"bytes 0-1023/{size}"
    tail = live.get(status["result_url"], headers={"Range": "bytes=-100"})
    assert tail.status_code == 206 and tail.content == full.content[-100:]
    beyond = live.get(status["result_url"], headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416 and beyond.json()["error"]["type"] == "RangeNotSatisfiable"
    assert beyond.headers["content-range"] == f"bytes */{size}"

    metrics = live.get("/metrics").text
    assert 'heygem_stage_seconds_count{stage="generate"}' in metrics
    assert 'heygem_step_seconds_count{step="face_track"}' in metrics
    assert "heygem_generation_fps_count" in metrics
    assert 'heygem_jobs_finished_total{state="succeeded"}' in metrics


def test_cancel_stops_the_running_job_and_frees_the_worker(live: TestClient) -> None:
    pid = _worker_pid(live)
    job_id = _submit(live, fault=SLOW)
    _generating(live, job_id)
    response = live.delete(f"/v1/generations/{job_id}")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    status = wait_final(live, job_id, timeout=15)
    assert status["state"] == "cancelled" and status["error"]["type"] == "Cancelled"
    assert status["progress"] < 100
    # The same worker process (not a replacement) is free again and runs the next job.
    assert _worker_pid(live) == pid
    assert _next_job_succeeds(live)["worker_pid"] == pid


def test_killed_worker_fails_only_its_job_and_is_replaced(live: TestClient) -> None:
    pid = _worker_pid(live)
    job_id = _submit(live, fault=SLOW)
    _generating(live, job_id)
    os.kill(pid, signal.SIGKILL)  # what the OOM killer does
    status = wait_final(live, job_id)
    assert status["state"] == "failed" and status["error"]["type"] == "WorkerCrashed"
    assert "SIGKILL" in status["error"]["message"] and status["error"]["hint"]
    assert _next_job_succeeds(live)["worker_pid"] != pid
    assert 'heygem_worker_restarts_total{reason="crashed"} 1' in live.get("/metrics").text


def test_stalled_worker_is_killed_and_replaced(live: TestClient) -> None:
    pid = _worker_pid(live)
    job_id = _submit(live, fault=SLOW)
    _generating(live, job_id)
    os.kill(pid, signal.SIGSTOP)  # frozen: no heartbeats, no progress
    try:
        status = wait_final(live, job_id)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert status["state"] == "failed" and status["error"]["type"] == "WorkerStalled"
    assert "no heartbeat" in status["error"]["message"]
    assert _next_job_succeeds(live)["worker_pid"] != pid
    metrics = live.get("/metrics").text
    assert 'heygem_stalls_total{kind="worker"} 1' in metrics
    assert 'heygem_worker_restarts_total{reason="stalled"} 1' in metrics


def test_stalled_pipeline_names_the_stage_and_recycles_the_worker(live: TestClient) -> None:
    pid = _worker_pid(live)
    job_id = _submit(live, fault="generate:hang:20", stall_timeout="1")
    status = wait_final(live, job_id)
    assert status["state"] == "failed" and status["error"]["type"] == "PipelineStalled"
    assert status["error"]["stage"] == "generate"
    assert "made no progress" in status["error"]["message"]
    # The hung stage thread cannot be stopped, so its process is replaced.
    assert _next_job_succeeds(live)["worker_pid"] != pid
    metrics = live.get("/metrics").text
    assert 'heygem_stalls_total{kind="pipeline"} 1' in metrics
    assert 'heygem_worker_restarts_total{reason="recycled"} 1' in metrics


def test_heygem_compatible_flow(live: TestClient, media_root: Path) -> None:
    code = uuid.uuid4().hex
    submitted = live.post(
        "/easy/submit",
        json={
            "audio_url": "speech.wav",
            "video_url": "/template.mp4",
            "code": code,
            "watermark_switch": 0,
            "digital_auth": 0,
            "chaofen": 0,
            "pn": 1,
        },
    ).json()
    assert submitted["code"] == 10000 and submitted["success"] is True

    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = live.get("/easy/query", params={"code": code}).json()
        assert body["code"] == 10000 and body["data"]["status"] in (1, 2), body
        return body if body["data"]["status"] == 2 else None

    data = wait_for(done, timeout=60)["data"]
    assert data["progress"] == 100 and data["msg"] == "success"
    assert data["result"] == f"/{code}-r.mp4"
    published = media_root / f"{code}-r.mp4"
    assert published.stat().st_size > 0
    published.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
