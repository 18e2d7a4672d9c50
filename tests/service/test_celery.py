"""Scale-out on Celery, for real on loopback: a Redis server with AOF and two ``heygem
worker`` "machines" (separate working directories, one shared data directory) behind the
API. No job is lost: a killed pool process, a killed worker, a restarted Redis, a Redis
that is down at submit time, an API that restarts. The module has its own Redis, so
restarting it disturbs no other test."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.jobs import Job, NewJob
from service.settings import ServiceSettings
from service.shared import write_marker
from service.store import JobStore
from tests.helpers import wait_for
from tests.service.cluster import (
    ROOT,
    RedisServer,
    Worker,
    start_workers,
    stop_workers,
    warm_workers,
    worker_env,
)
from tests.service.helpers import KEYS, metric, wait_final

if TYPE_CHECKING:
    from service.celery_executor import CeleryExecutor
    from service.lifecycle import JobLifecycle

REFS = {"audio_path": "speech.wav", "video_path": "template.mp4"}
ADMIN = {"X-API-Key": KEYS["ops"]}
SLOW = "generate:slow:0.4"  # ~3 s of generating
VISIBILITY = 12.0  # seconds before Redis hands a dead worker's job on (jobs here take < 6 s)

pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    settings: ServiceSettings
    redis: RedisServer
    workers: list[Worker]
    client: TestClient

    def stop_api(self) -> None:
        self.client.__exit__(None, None, None)

    def start_api(self) -> None:
        self.client = TestClient(create_app(self.settings), headers=ADMIN)
        self.client.__enter__()

    def restart_api(self) -> None:
        self.stop_api()
        self.start_api()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, shared_cache: Path, media_root: Path
) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("scale-out")
    redis = RedisServer(base / "redis")
    redis.start()
    settings = ServiceSettings(
        data_dir=base / "shared",
        media_root=media_root,
        api_key=KEYS["ops"],
        allow_fault_injection=True,
        cancel_grace=5.0,
        max_attempts=2,
        executor="celery",
        broker_url=redis.url,
        celery_queue="scale-out",
        broker_visibility_timeout=VISIBILITY,
        pipeline={"cache_dir": shared_cache, "batch_size": 8},
    )
    client = TestClient(create_app(settings), headers=ADMIN)
    client.__enter__()
    workers = start_workers(settings, base)
    state = Cluster(settings, redis, workers, client)
    try:
        warm_workers(client, 2, workers=workers)
        yield state
    finally:
        state.client.__exit__(None, None, None)
        stop_workers(state.workers)
        redis.stop()


def _submit(client: TestClient, **options: Any) -> str:
    response = client.post("/v1/generations", data=REFS | options)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _generating(client: TestClient, job_id: str, attempt: int = 1) -> dict[str, Any]:
    def status() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/generations/{job_id}").json()
        ok = body["phase"] == "generating" and body["progress"] > 10
        return body if ok and body["attempts"] == attempt else None

    result: dict[str, Any] = wait_for(status, timeout=60, what=f"attempt {attempt} generating")
    return result


def _pid_of(status: dict[str, Any]) -> int:
    match = re.search(r"\(pid (\d+)\)", status["worker"] or "")
    assert match, status
    return int(match.group(1))


def _machine_of(status: dict[str, Any]) -> str:
    return str(status["worker"]).split(" ", 1)[0]


def _worker_named(cluster: Cluster, machine: str) -> Worker:
    return next(w for w in cluster.workers if w.name == machine)


def test_jobs_run_on_both_machines(cluster: Cluster) -> None:
    client = cluster.client
    ids = [_submit(client, fault="generate:slow:0.2") for _ in range(4)]
    finals = [wait_final(client, job_id, timeout=120) for job_id in ids]
    assert [s["state"] for s in finals] == ["succeeded"] * 4, finals
    assert {_machine_of(s) for s in finals} == {w.name for w in cluster.workers}
    for status in finals:  # the result was written on the shared directory by the worker
        assert client.get(status["result_url"]).headers["content-type"] == "video/mp4"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_killed_pool_process_hands_its_job_to_another_attempt(cluster: Cluster) -> None:
    client = cluster.client
    job_id = _submit(client, fault=SLOW)
    pid = _pid_of(_generating(client, job_id))
    os.kill(pid, signal.SIGKILL)
    status = wait_final(client, job_id, timeout=90)
    assert status["state"] == "succeeded" and status["attempts"] == 2, status
    lost = [w for w in status["warnings"] if w.startswith("attempt 1 ")]
    assert lost and "SIGKILL" in lost[0] and "queued again" in lost[0], status["warnings"]
    assert "no OOM kill" in lost[0]  # kill -9 by a person, not blamed on memory
    warm_workers(client, 2, workers=cluster.workers)  # Celery replaced the process


def test_a_stopped_pool_process_is_killed_within_seconds_and_its_job_handed_on(
    cluster: Cluster,
) -> None:
    client = cluster.client
    job_id = _submit(client, fault=SLOW)
    pid = _pid_of(_generating(client, job_id))
    os.kill(pid, signal.SIGSTOP)  # frozen: its pipeline's own watchdog is frozen with it
    stopped_at = time.monotonic()
    wait_for(lambda: not _alive(pid), 15, what=f"the stopped pool process {pid} to be killed")
    assert time.monotonic() - stopped_at < 5.0
    status = wait_final(client, job_id, timeout=90)
    assert status["state"] == "succeeded" and status["attempts"] == 2, status
    lost = [w for w in status["warnings"] if w.startswith("attempt 1 ")]
    assert lost and "stopped (state T)" in lost[0], status["warnings"]
    warm_workers(client, 2, workers=cluster.workers)


def test_a_job_whose_process_dies_every_time_fails_after_max_attempts(cluster: Cluster) -> None:
    client = cluster.client
    job_id = _submit(client, fault=SLOW)
    os.kill(_pid_of(_generating(client, job_id, attempt=1)), signal.SIGKILL)
    os.kill(_pid_of(_generating(client, job_id, attempt=2)), signal.SIGKILL)
    status = wait_final(client, job_id, timeout=60)
    error = status["error"]
    assert status["state"] == "failed" and error["type"] == "WorkerCrashed", status
    assert error["cause"] == "killed" and "SIGKILL" in error["message"], error
    assert "HEYGEM_SERVICE_MAX_ATTEMPTS=2" in error["message"] and error["hint"]
    assert error["phase"] == "generating" and status["attempts"] == 2
    warm_workers(client, 2, workers=cluster.workers)


def test_a_dead_worker_machine_hands_its_job_to_the_other(cluster: Cluster) -> None:
    """kill -9 of a whole worker: its unacknowledged job is redelivered by Redis after the
    visibility timeout, to the worker that is left."""
    client = cluster.client
    job_id = _submit(client, fault=SLOW)
    first = _generating(client, job_id)
    dead = _worker_named(cluster, _machine_of(first))
    dead.kill()
    status = wait_final(client, job_id, timeout=VISIBILITY + 60)
    assert status["state"] == "succeeded" and status["attempts"] == 2, status
    assert _machine_of(status) != dead.name
    assert any("vanished" in w for w in status["warnings"]), status["warnings"]
    dead.start()  # the machine comes back
    warm_workers(client, 2, workers=cluster.workers)


def test_a_redis_restart_loses_no_queued_job(cluster: Cluster) -> None:
    client = cluster.client
    ids = [_submit(client, fault="generate:slow:0.3") for _ in range(5)]  # 2 run, 3 wait
    wait_for(
        lambda: client.get(f"/v1/generations/{ids[0]}").json()["state"] == "running",
        timeout=60,
    )
    assert metric(client.get("/metrics").text, "heygem_broker_queue_messages") is not None
    cluster.redis.restart()  # SIGTERM (AOF flushed), then up again on the same files
    finals = [wait_final(client, job_id, timeout=180) for job_id in ids]
    assert [s["state"] for s in finals] == ["succeeded"] * 5, finals
    wait_for(
        lambda: client.get("/readyz").json()["checks"]["broker"]["ok"], timeout=30
    )  # the API's view of the broker recovered too


def test_broker_down_at_submit_is_503_with_retry_after(cluster: Cluster) -> None:
    client = cluster.client
    before = client.get("/v1/generations").json()["total"]
    cluster.redis.stop()
    try:
        refused = client.post("/v1/generations", data=REFS)
        assert refused.status_code == 503, refused.text
        error = refused.json()["error"]
        assert error["type"] == "ServiceUnavailable" and "Redis" in error["message"]
        assert error["hint"] and int(refused.headers["retry-after"]) >= 1
        compat = client.post(
            "/easy/submit",
            json={"audio_url": "speech.wav", "video_url": "template.mp4", "code": "down-1"},
        )
        assert compat.json()["code"] == 10001 and compat.headers["retry-after"]
        assert client.get("/v1/generations").json()["total"] == before  # nothing half-queued
        assert not list((cluster.settings.data_dir / "jobs").glob("*/audio*"))

        def not_ready() -> bool:
            body = client.get("/readyz").json()
            return not body["ready"] and not body["checks"]["broker"]["ok"]

        wait_for(not_ready, timeout=20, what="/readyz to report the broker down")
        assert metric(client.get("/metrics").text, "heygem_broker_up", executor="celery") == 0
    finally:
        cluster.redis.start()
    wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60)
    assert wait_final(client, _submit(client), timeout=120)["state"] == "succeeded"


def test_an_api_restart_keeps_following_jobs_on_the_workers(cluster: Cluster) -> None:
    client = cluster.client
    running = _submit(client, fault="generate:slow:0.6")
    _generating(client, running)
    waiting = [_submit(client, fault="generate:slow:0.2") for _ in range(2)]
    cluster.restart_api()  # the old API process is gone; the jobs carry on on the workers
    client = cluster.client
    for job_id in (running, *waiting):
        status = wait_final(client, job_id, timeout=120)
        assert status["state"] == "succeeded" and status["attempts"] == 1, status


def test_a_job_stored_but_never_published_is_sent_when_the_api_starts(
    cluster: Cluster, media_root: Path
) -> None:
    """The API stopped between storing a job and publishing it (or Redis lost it)."""
    cluster.stop_api()
    job_id = uuid.uuid4().hex
    directory = cluster.settings.data_dir / "jobs" / job_id
    directory.mkdir(parents=True)
    store = JobStore(cluster.settings.database)
    try:
        new = NewJob(
            id=job_id,
            audio_path=str(media_root / "speech.wav"),
            video_path=str(media_root / "template.mp4"),
            output_path=str(directory / "result.mp4"),
            options={},
            client="default",
            timeout=120.0,
        )
        store.create(new, max_queued=16, max_queued_per_client=16, retry_after=1)
    finally:
        store.close()
    with sqlite3.connect(cluster.settings.database) as db:  # stored a while ago
        db.execute("UPDATE jobs SET created_at = created_at - 120 WHERE id = ?", (job_id,))
    cluster.start_api()
    status = wait_final(cluster.client, job_id, timeout=120)
    assert status["state"] == "succeeded" and status["attempts"] == 1, status


def test_cancel_of_a_queued_job_keeps_it_off_the_workers(cluster: Cluster) -> None:
    client = cluster.client
    busy = [_submit(client, fault=SLOW) for _ in range(2)]  # both machines busy
    queued = _submit(client)
    cancelled = client.delete(f"/v1/generations/{queued}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    for job_id in busy:
        assert wait_final(client, job_id, timeout=90)["state"] == "succeeded"
    after = _submit(client)  # runs once a machine is free; the cancelled one never does
    assert wait_final(client, after, timeout=90)["state"] == "succeeded"
    status = client.get(f"/v1/generations/{queued}").json()
    assert status["state"] == "cancelled" and status["started_at"] is None
    result = cluster.settings.data_dir / "jobs" / queued / "result.mp4"
    assert not result.exists()


def test_workers_seen_queue_depth_and_ps(cluster: Cluster) -> None:
    client = cluster.client

    def idle() -> str | None:
        text = client.get("/metrics").text
        return (
            text if metric(text, "heygem_workers", executor="celery", state="idle") == 2 else None
        )

    text = wait_for(idle, timeout=30, what="both pool processes idle in /metrics")
    assert metric(text, "heygem_workers_seen", executor="celery") == 2
    assert metric(text, "heygem_queue_depth", executor="celery") == 0
    assert metric(text, "heygem_broker_queue_messages", executor="celery") == 0
    assert metric(text, "heygem_broker_up", executor="celery") == 1
    ready = client.get("/readyz").json()
    assert ready["checks"]["broker"]["ok"] and len(ready["workers"]) == 2
    # heygem-diagnose ps on one "machine": the worker's tree, labelled, with its pool process
    worker = cluster.workers[0]
    done = subprocess.run(
        [sys.executable, "-m", "diagnostics.cli", "ps", "--json"],
        env=worker.env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(done.stdout)
    seen = {w["hostname"]: w for w in report["celery_workers"]}
    assert worker.name in seen, report["celery_workers"]
    assert [p["pid"] for p in seen[worker.name]["processes"]] == worker.pool_pids()
    assert seen[worker.name]["pid"] == worker.pid


# --- a worker that cannot work refuses to start -------------------------------------------
def _run_worker(tmp_path: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = worker_env({"HEYGEM_SERVICE_BROKER_URL": redis_url})
    return subprocess.run(
        [sys.executable, "-m", "service.worker_cli", *args],
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("missing", ["directory", "marker"])
def test_a_worker_without_the_shared_directory_refuses_to_start(
    tmp_path: Path, missing: str
) -> None:
    shared = tmp_path / "mnt" / "heygem"
    if missing == "marker":
        shared.mkdir(parents=True)  # an empty local directory where the mount should be
    done = _run_worker(tmp_path, "redis://127.0.0.1:1/0", "--data-dir", str(shared))
    assert done.returncode == 2, done.stderr
    assert "heygem worker: error:" in done.stderr and str(shared) in done.stderr
    assert ".heygem-shared.json" in done.stderr and "mount" in done.stderr, done.stderr


def test_a_gpu_worker_without_cuda_refuses_at_start(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    write_marker(shared)
    done = _run_worker(
        tmp_path, "redis://127.0.0.1:1/0", "--data-dir", str(shared), "--device", "cuda:0"
    )
    assert done.returncode == 2, done.stderr
    assert "--device cuda:0 asks for a GPU" in done.stderr, done.stderr
    assert "what to do:" in done.stderr


def test_settings_name_what_is_wrong(tmp_path: Path) -> None:
    env = worker_env({"HEYGEM_SERVICE_BROKER_URL": "amqp://guest@rabbit//"})
    done = subprocess.run(
        [sys.executable, "-m", "service.worker_cli", "--data-dir", str(tmp_path)],
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "not a Redis URL" in done.stderr, done.stderr
    with pytest.raises(ValueError, match="EXECUTOR=celery needs HEYGEM_SERVICE_BROKER_URL"):
        ServiceSettings(executor="celery", data_dir=tmp_path)


def _offline_follower(
    tmp_path: Path, job_id: str
) -> tuple[JobStore, JobLifecycle, CeleryExecutor, Job]:
    """The API's Celery follower over a store holding one queued job, with a broker URL
    nothing answers on: ``_apply`` is fed the task states by hand (no Redis needed)."""
    from service.celery_executor import CeleryExecutor
    from service.lifecycle import JobLifecycle
    from service.metrics import Metrics
    from service.redact import Redactor

    settings = ServiceSettings(
        data_dir=tmp_path, executor="celery", broker_url="redis://127.0.0.1:1/0"
    )
    store = JobStore(settings.database)
    job = store.create(
        NewJob(job_id, "a.wav", "v.mp4", "o.mp4", {}),
        max_queued=1,
        max_queued_per_client=1,
        retry_after=1,
    )
    lifecycle = JobLifecycle(store, Metrics(), Redactor([]))
    return store, lifecycle, CeleryExecutor(settings, lifecycle, Metrics()), job


def test_the_step_goes_through_the_result_backend_to_the_store(tmp_path: Path) -> None:
    """A worker's step reports as Celery task states, read back by the API's follower into
    its store: a step change is sent at once, reports within a step at most every
    PROGRESS_INTERVAL, and the last one travels with the outcome (no Redis needed)."""
    from heygem.progress import StepProgress
    from service.celery_app import PROGRESS
    from service.celery_executor import _Tracked
    from service.celery_worker import _BackendReporter
    from service.worker import StepReports

    store, _, follower, job = _offline_follower(tmp_path, "a" * 32)
    states: list[dict[str, Any]] = []

    class Task:  # what update_state writes to the result backend
        def update_state(self, task_id: str, state: str, meta: dict[str, Any]) -> None:
            assert task_id == job.id
            states.append({"status": state, "result": meta})

    reporter = _BackendReporter(Task(), job.id, {"attempt": 1, "worker": "w0", "pid": 7})
    report = StepReports(job.id, reporter)
    report(StepProgress("audio_features", 0, None))
    for done in range(1, 401):  # well within one interval: only the change is sent
        report(StepProgress("template", done, 400))
    assert [(s["result"]["step"], s["result"]["step_done"]) for s in states] == [
        ("audio_features", 0),
        ("template", 1),
    ]
    assert reporter.last["step_done"] == 400  # what the outcome will carry

    tracked = _Tracked()
    for meta in [*states, {"status": PROGRESS, "result": reporter.last}]:
        follower._apply(store.get(job.id), tracked, meta)
    seen = store.get(job.id)
    assert seen.state.value == "running" and seen.worker == "w0 (pid 7)"
    assert (seen.phase, seen.step) == ("preparing", "template")
    assert (seen.step_done, seen.step_total) == (400, 400)
    store.close()


@pytest.mark.parametrize("reports", [["RETRY"], ["REVOKED"], ["RETRY", "REVOKED"]])
def test_a_cancelled_job_whose_process_is_lost_ends_cancelled(
    tmp_path: Path, reports: list[str]
) -> None:
    """Cancelled while running, its process killed (the cancel grace ran out, or it died):
    Celery reports a retry of the revoked job, which no worker will start. The follower
    ends it cancelled; it used to put it back to queued, where it waited forever (the web
    page's cancel, on a loaded machine). No Redis needed."""
    from service.celery_app import PROGRESS
    from service.celery_executor import _Tracked

    store, lifecycle, follower, job = _offline_follower(tmp_path, "b" * 32)
    tracked = _Tracked()
    running = {"attempt": 1, "worker": "w0", "pid": 7, "phase": "generating", "percent": 30}
    follower._apply(store.get(job.id), tracked, {"status": PROGRESS, "result": running})
    lifecycle.cancel(job.id, None)
    assert store.get(job.id).state.value == "running" and store.get(job.id).cancel_requested
    for status in reports:
        follower._apply(store.get(job.id), tracked, {"status": status, "result": None})
    ended = store.get(job.id)
    assert ended.state.value == "cancelled", ended
    assert ended.error is not None and ended.error.type == "Cancelled"
    store.close()


def test_visibility_timeout_outlasts_the_longest_job(tmp_path: Path) -> None:
    """Redis must never hand a slow, healthy job to a second worker."""
    from service.celery_app import longest_job_seconds, visibility_timeout

    settings = ServiceSettings(
        data_dir=tmp_path,
        executor="celery",
        broker_url="redis://127.0.0.1:6379/0",
        pipeline={"max_audio_seconds": 300.0},
        job_timeout_per_audio_second=10.0,
        job_timeout_min=120.0,
    )
    assert longest_job_seconds(settings) == 120.0 + 10.0 * 300.0
    assert visibility_timeout(settings) > longest_job_seconds(settings) + settings.cancel_grace


def test_the_broker_password_stays_out_of_messages(tmp_path: Path) -> None:
    from service.celery_app import shown_url

    secret = uuid.uuid4().hex
    settings = ServiceSettings(
        data_dir=tmp_path, executor="celery", broker_url=f"redis://:{secret}@redis:6379/0"
    )
    assert secret not in repr(settings) and secret not in shown_url(settings)
    assert shown_url(settings).endswith("@redis:6379/0")


def test_a_worker_with_docker_default_shm_refuses_at_start(tmp_path: Path) -> None:
    """Docker's 64 MB /dev/shm under a DataLoader with workers: the HeyGem hang, reported
    when the worker starts (not when its first job stalls)."""
    from matrix.run_cell import in_private_shm, shm_unavailable_reason

    reason = shm_unavailable_reason()
    if reason is not None:
        pytest.skip(f"no private /dev/shm here: {reason}")
    shared = tmp_path / "shared"
    shared.mkdir()
    write_marker(shared)
    env = worker_env(
        {
            "HEYGEM_SERVICE_BROKER_URL": "redis://127.0.0.1:1/0",
            "HEYGEM_SERVICE_PIPELINE__NUM_WORKERS": "4",
        }
    )
    command = [sys.executable, "-m", "service.worker_cli", "--data-dir", str(shared)]
    done = subprocess.run(
        in_private_shm("64m", command),
        cwd=tmp_path,
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "start-up check failed" in done.stderr and "/dev/shm" in done.stderr, done.stderr
    assert "what to do:" in done.stderr
