"""Real worker processes: restart durability, a full job, cancel, a killed worker, a
stalled worker, a stalled pipeline, and the HeyGem-compatible flow; with the local executor
and with the celery one (two `heygem worker` "machines" behind a real Redis) where the
behaviour is the same. Where the executors differ by design (a killed worker process:
local fails the job, celery delivers it again) the celery side is in test_celery.py.

One app with one worker serves the whole module (workers take seconds to warm up). It
starts on the data directory of a previous service process that stopped with one job
queued and one running, so the restart is real.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import psutil
import pytest
from fastapi.testclient import TestClient

from heygem.demo import iter_template_frames, write_video
from service.app import create_app
from service.settings import ServiceSettings
from service.store import JobStore
from tests.helpers import wait_for
from tests.service.cluster import RedisServer, start_workers, stop_workers, warm_workers
from tests.service.helpers import FINAL, KEYS, SPEECH_SECONDS, metric, wait_final

REFS = {"audio_path": "speech.wav", "video_path": "template.mp4"}
SLOW = "generate:slow:0.4"  # 7 batches of 8 frames at 0.4 s: ~3 s of generating
ADMIN = {"X-API-Key": KEYS["ops"]}


@pytest.fixture(scope="module")
def previous_life(
    tmp_path_factory: pytest.TempPathFactory, shared_cache: Path, media_root: Path
) -> dict[str, Any]:
    """A service process that queued jobs and died while its worker ran the first one."""
    settings = ServiceSettings(
        data_dir=tmp_path_factory.mktemp("live"),
        media_root=media_root,
        workers=0,
        api_key=KEYS["ops"],
        pipeline={"cache_dir": shared_cache, "batch_size": 8},
    )
    with TestClient(create_app(settings), headers=ADMIN) as first:
        interrupted, waiting = (
            first.post("/v1/generations", data=REFS).json()["id"] for _ in range(2)
        )
    # What a crash (kill -9 of the service) leaves behind: a job claimed by a worker.
    store = JobStore(settings.database)
    claimed = store.claim_next("pid 4242")  # as the supervisor does for a worker
    assert claimed is not None and claimed.id == interrupted
    store.close()
    return {"settings": settings, "interrupted": interrupted, "waiting": waiting}


@pytest.fixture(scope="module", params=["local", "celery"])
def executor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def live(
    executor: str,
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    shared_cache: Path,
    media_root: Path,
) -> Iterator[TestClient]:
    """The app with real workers: one local worker process, or (celery) two ``heygem
    worker`` "machines" behind a real Redis."""
    if executor == "local":
        previous = request.getfixturevalue("previous_life")
        settings = previous["settings"].model_copy(
            update={
                "workers": 1,
                "allow_fault_injection": True,
                "heartbeat_interval": 0.25,
                "worker_stall_timeout": 3.0,
                "cancel_grace": 5.0,
            }
        )
        with TestClient(create_app(settings), headers=ADMIN) as client:
            wait_for(lambda: client.get("/readyz").status_code == 200, timeout=120)
            yield client
        return
    redis: RedisServer = request.getfixturevalue("redis_server")
    base = tmp_path_factory.mktemp("celery-live")
    settings = ServiceSettings(
        data_dir=base / "shared",
        media_root=media_root,
        api_key=KEYS["ops"],
        allow_fault_injection=True,
        cancel_grace=5.0,
        executor="celery",
        broker_url=redis.url,
        celery_queue=f"live-{uuid.uuid4().hex[:8]}",
        pipeline={"cache_dir": shared_cache, "batch_size": 8},
    )
    with TestClient(create_app(settings), headers=ADMIN) as client:
        workers = start_workers(settings, base)
        try:
            warm_workers(client, 2, workers=workers)
            yield client
        finally:
            stop_workers(workers)


def _submit(client: TestClient, **options: Any) -> str:
    response = client.post("/v1/generations", data=REFS | options)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _idle_pid(client: TestClient) -> int | None:
    workers = client.get("/readyz").json()["workers"]  # details: the admin key
    return workers[0]["pid"] if workers[0]["state"] == "idle" else None


def _worker_pid(client: TestClient) -> int:
    pid: int = wait_for(lambda: _idle_pid(client), timeout=60)
    return pid


def _generating(client: TestClient, job_id: str) -> dict[str, Any]:
    def status() -> dict[str, Any] | None:
        body = client.get(f"/v1/generations/{job_id}").json()
        return body if body["phase"] == "generating" and body["progress"] > 10 else None

    result: dict[str, Any] = wait_for(status, timeout=30)
    return result


def _next_job_succeeds(client: TestClient) -> dict[str, Any]:
    status = wait_final(client, _submit(client))
    assert status["state"] == "succeeded", status
    return status


def test_restart_fails_interrupted_jobs_and_runs_queued_ones(
    live: TestClient, executor: str, request: pytest.FixtureRequest
) -> None:
    if executor != "local":
        pytest.skip("celery: jobs on workers outlive the API (test_celery.py follows them)")
    previous_life = request.getfixturevalue("previous_life")
    failed = live.get(f"/v1/generations/{previous_life['interrupted']}").json()
    assert failed["state"] == "failed" and failed["error"]["type"] == "ServiceRestarted"
    assert failed["error"]["cause"] == "service-restarted" and failed["error"]["hint"]
    assert failed["error"]["phase"] == "starting" and failed["worker"] == "pid 4242"
    assert wait_final(live, previous_life["waiting"])["state"] == "succeeded"


def test_full_job_status_and_download(live: TestClient) -> None:
    status = wait_final(live, _submit(live))
    assert status["state"] == "succeeded", status
    assert status["progress"] == 100 and status["phase"] == "done" and status["error"] is None
    assert status["frames_done"] == status["frames_total"] == status["frames"]
    assert status["frames"] == math.ceil(SPEECH_SECONDS * 25) and status["fps"] == 25
    assert status["providers_used"] == ["CPUExecutionProvider"]
    assert {"queued", "audio_features", "face_track", "stream", "total"} <= set(status["timings"])
    assert set(status["stage_seconds"]) == {"decode", "load", "generate", "compose"}
    assert status["worker"] and status["result_url"].endswith("/result")

    full = live.get(status["result_url"])
    assert full.status_code == 200 and full.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(full.content), mode="r") as container:
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


def test_cancel_stops_the_running_job_and_frees_the_worker(live: TestClient, executor: str) -> None:
    job_id = _submit(live, fault=SLOW)
    pid = _pid_of(_generating(live, job_id))
    response = live.delete(f"/v1/generations/{job_id}")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    status = wait_final(live, job_id, timeout=15)
    assert status["state"] == "cancelled" and status["error"]["type"] == "Cancelled"
    assert status["error"]["message"] == "cancelled by request"
    assert status["error"]["cause"] == "cancelled" and status["error"]["phase"] == "generating"
    assert status["progress"] < 100
    # The same worker process (not a replacement) is free again within seconds.
    wait_for(lambda: _state_of(live, pid) == "idle", timeout=10, what=f"pool process {pid} idle")
    if executor == "local":
        assert _next_job_succeeds(live)["worker"] == f"local-0 (pid {pid})"
    else:
        assert _alive(pid) and _next_job_succeeds(live)["state"] == "succeeded"


def test_killed_worker_fails_only_its_job_and_is_replaced(live: TestClient, executor: str) -> None:
    """Items 4 and 5: the error names the phase the job was in (not the claim-time
    'starting'), and a kill -9 is a kill, not "most likely the OOM killer"."""
    _local_only(executor, "celery hands the job to another attempt (test_celery.py)")
    pid = _worker_pid(live)
    job_id = _submit(live, fault=SLOW)
    _generating(live, job_id)
    os.kill(pid, signal.SIGKILL)  # what a person (or the OOM killer) does
    status = wait_final(live, job_id)
    error = status["error"]
    assert status["state"] == "failed" and error["type"] == "WorkerCrashed"
    assert error["phase"] == "generating", error
    assert error["cause"] == "killed" and "SIGKILL" in error["message"] and error["hint"]
    assert "most likely" not in error["message"]
    assert "the kernel recorded no OOM kill" in error["message"]  # the counter is readable here
    assert _next_job_succeeds(live)["worker"] != f"local-0 (pid {pid})"
    assert metric(live.get("/metrics").text, "heygem_worker_restarts_total", reason="crashed") == 1


def test_killed_idle_worker_is_not_said_to_have_run_a_job(
    live: TestClient, executor: str, caplog: pytest.LogCaptureFixture
) -> None:
    _local_only(executor, "celery's pool replaces its processes itself")
    pid = _worker_pid(live)
    with caplog.at_level(logging.ERROR, logger="service.pool"):
        os.kill(pid, signal.SIGKILL)
        new_pid = wait_for(lambda: (now := _idle_pid(live)) != pid and now, timeout=60)
    gone = [r.getMessage() for r in caplog.records if str(pid) in r.getMessage()]
    assert gone and all("while idle" in m for m in gone), gone
    assert not any("running this job" in m or "OOM killer" in m.split(":")[0] for m in gone)
    assert new_pid != pid


def test_stalled_worker_is_killed_and_replaced(live: TestClient, executor: str) -> None:
    _local_only(executor, "test_celery.py stops a Celery pool process (killed, job handed on)")
    pid = _worker_pid(live)
    job_id = _submit(live, fault=SLOW)
    _generating(live, job_id)
    os.kill(pid, signal.SIGSTOP)  # frozen: no heartbeats, no progress
    try:
        status = wait_final(live, job_id)
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    error = status["error"]
    assert status["state"] == "failed" and error["type"] == "WorkerStalled"
    assert "no heartbeat" in error["message"] and error["cause"] == "process-stopped"
    assert error["phase"] == "generating"
    assert _next_job_succeeds(live)["worker"] != f"local-0 (pid {pid})"
    metrics = live.get("/metrics").text
    assert metric(metrics, "heygem_stalls_total", kind="worker") == 1
    assert metric(metrics, "heygem_worker_restarts_total", reason="stalled") == 1


def test_stalled_pipeline_names_the_stage_and_recycles_the_worker(
    live: TestClient, executor: str
) -> None:
    job_id = _submit(live, fault="generate:hang:20", stall_timeout="1")
    status = wait_final(live, job_id)
    error = status["error"]
    assert status["state"] == "failed" and error["type"] == "PipelineStalled"
    assert error["stage"] == "generate" and error["phase"] == "generating"
    assert error["cause"] == "no-progress" and "made no progress" in error["message"]
    assert status["stage"] == "generate"
    # The hung stage thread cannot be stopped, so its process is replaced.
    pid = _pid_of(status)
    wait_for(lambda: not _alive(pid), timeout=30, what=f"the stalled process {pid} to leave")
    assert _next_job_succeeds(live)["state"] == "succeeded"
    metrics = live.get("/metrics").text
    assert metric(metrics, "heygem_stalls_total", kind="pipeline") == 1
    if executor == "local":
        assert metric(metrics, "heygem_worker_restarts_total", reason="recycled") == 1


def test_a_new_template_shows_its_analysis_while_the_job_prepares(
    live: TestClient, executor: str, media_root: Path
) -> None:
    """The first job on a template spends seconds analysing it before any frame is
    written: the job's progress names that step with its counts, on either executor.

    The template is long (400 frames, about 1 s of analysis here) because the celery
    executor reads the workers' progress twice a second: a step that ends sooner may be
    skipped, which is fine for operators and would be a flaky test.
    """
    name = f"new-template-{executor}.mp4"  # its own content: no cache entry yet
    sway = {"local": 0.5, "celery": 0.8}[executor]
    write_video(media_root / name, iter_template_frames(16.0, size=(480, 360), sway=sway))
    job_id = _submit(live, video_path=name)
    seen: list[dict[str, Any]] = []

    def final() -> dict[str, Any] | None:
        status: dict[str, Any] = live.get(f"/v1/generations/{job_id}").json()
        seen.append(status)
        return status if status["state"] in FINAL else None

    status = wait_for(final, timeout=60, interval=0.05)
    assert status["state"] == "succeeded", status
    steps = [
        (s["phase"], s["step"], s["step_title"], s["step_done"], s["step_total"]) for s in seen
    ]
    template = [s for s in steps if s[1] == "template"]
    assert template, sorted(set(steps), key=steps.index)
    for phase, _, title, done, total in template:
        assert phase == "preparing" and title == "analysing the template (once per template)"
        assert total == 400 and 0 <= done <= total  # 0: reported as the analysis starts
    counts = [done for *_, done, _ in template]
    assert counts == sorted(counts)  # it only moves forward
    first_frames = next(i for i, s in enumerate(steps) if s[1] == "generate")
    assert steps.index(template[-1]) < first_frames  # the analysis, then the frames
    assert all(s[0] == "generating" for s in steps[first_frames:] if s[0] != "done")
    frames = status["frames"]  # at the end: where it ended, as frames_done
    assert (status["step"], status["step_title"]) == ("generate", "generating")
    assert status["step_done"] == status["step_total"] == status["frames_done"] == frames


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
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _pid_of(status: dict[str, Any]) -> int:
    """The pid in the job's worker name: 'local-0 (pid 42)' or 'w0@machine-0 (pid 42)'."""
    match = re.search(r"\(pid (\d+)\)", status["worker"] or "")
    assert match, status["worker"]
    return int(match.group(1))


def _state_of(client: TestClient, pid: int) -> str | None:
    workers = client.get("/readyz").json()["workers"]
    return next((w["state"] for w in workers if w["pid"] == pid), None)


def _local_only(executor: str, why: str) -> None:
    if executor != "local":
        pytest.skip(f"local executor only: {why}")


def test_job_errors_name_the_clients_file_not_the_server_path(
    live: TestClient, faceless_mp4: Path, media_root: Path
) -> None:
    """Item 3: a worker's error used to carry '/…/jobs/<id>/video.mp4'."""
    with (media_root / "speech.wav").open("rb") as audio, faceless_mp4.open("rb") as video:
        response = live.post(
            "/v1/generations",
            files={"audio": ("speech.wav", audio), "video": ("empty room.mp4", video)},
        )
    assert response.status_code == 202, response.text
    status = wait_final(live, response.json()["id"])
    error = status["error"]
    assert status["state"] == "failed" and error["type"] == "NoFaceFound", status
    assert error["cause"] == "no-face" and "'empty room.mp4'" in error["message"], error
    settings = live.app.state.services.settings  # type: ignore[attr-defined]
    text = f"{error['message']} {error['hint']}"
    assert str(settings.data_dir) not in text and "/jobs/" not in text


def test_a_template_cache_hit_marks_its_entry_as_recently_used(
    live: TestClient, shared_cache: Path
) -> None:
    """The cache is trimmed least recently used first: a hit must count as a use."""
    _next_job_succeeds(live)  # the template is analysed and cached (or already was)
    entries = list((shared_cache / "templates").iterdir())
    past = time.time() - 3600
    for entry in entries:
        os.utime(entry, (past, past))
    _next_job_succeeds(live)
    used = [e for e in entries if e.stat().st_mtime > past + 1800]
    assert len(used) == 1, [(e.name, e.stat().st_mtime) for e in entries]
