"""The real thing: ``python -m service.cli`` under uvicorn on loopback: submit -> poll ->
download; SIGTERM drains (503 for new work, running jobs finish within the grace period,
the rest are cancelled with that reason); a client that stalls its body gets 408."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from service.jobs import JobState
from service.store import JobStore
from tests.helpers import stream_summary, wait_for
from tests.service.server import Server, running_server

ROOT = Path(__file__).resolve().parents[2]
FINAL = ("succeeded", "failed", "cancelled")


def _final(client: httpx.Client, job: str, timeout: float = 60) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/v1/generations/{job}").json()
        return body if body["state"] in FINAL else None

    result: dict[str, Any] = wait_for(final, timeout=timeout, interval=0.1)
    return result


@pytest.mark.slow
def test_uvicorn_submit_poll_download(tmp_path: Path, shared_cache: Path, media_root: Path) -> None:
    with running_server(tmp_path, media_root=media_root, cache=shared_cache, workers=1) as server:
        workers = [c.pid for c in psutil.Process(server.process.pid).children()]
        assert workers, "no worker process"
        with httpx.Client(base_url=server.base, timeout=10) as client:
            with (
                (media_root / "speech.wav").open("rb") as audio,
                (media_root / "template.mp4").open("rb") as video,
            ):
                response = client.post(
                    "/v1/generations",
                    files={"audio": ("speech.wav", audio), "video": ("template.mp4", video)},
                    headers={"X-Request-ID": "round-trip-1"},
                )
            assert response.status_code == 202, response.text
            assert response.headers["x-request-id"] == "round-trip-1"
            job = response.json()["id"]
            status = _final(client, job)
            assert status["state"] == "succeeded", status
            result = tmp_path / "result.mp4"
            with client.stream("GET", f"/v1/generations/{job}/result") as download:
                assert download.status_code == 200
                with result.open("wb") as out:
                    for chunk in download.iter_bytes():
                        out.write(chunk)
            assert stream_summary(result)["frames"] == status["frames"]
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=30)
    # uvicorn re-raises the signal it handled once shutdown is complete.
    text = server.output()
    assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in text, text
    # Every line about the job carries the request id and the job id.
    assert f"req=round-trip-1 job={job}" in text, text
    deadline = time.monotonic() + 5
    while any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in workers
    ):
        assert time.monotonic() < deadline, "worker processes outlived the server"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_drains_running_jobs_then_cancels_with_the_reason(
    tmp_path: Path, shared_cache: Path, media_root: Path
) -> None:
    """Item 9: SIGTERM used to abort the running job and leave it 'running' in the store."""
    refs = {"audio_path": "speech.wav", "video_path": "template.mp4"}
    with running_server(
        tmp_path,
        media_root=media_root,
        cache=shared_cache,
        workers=2,
        shutdown_grace="8",
        cancel_grace="5",
        allow_fault_injection="1",
    ) as server:
        with httpx.Client(base_url=server.base, timeout=10) as client:

            def all_warm() -> bool:
                detail = client.get("/readyz").json()["checks"]["workers"]["detail"]
                return detail.startswith("2 of 2 workers warm")

            wait_for(all_warm, timeout=120, interval=0.2)
            long = client.post("/v1/generations", data=refs | {"fault": "generate:slow:3"})
            ids = [long.json()["id"]]

            def status(job: str) -> dict[str, Any]:
                body: dict[str, Any] = client.get(f"/v1/generations/{job}").json()
                return body

            wait_for(lambda: status(ids[0])["phase"] == "generating", timeout=60, interval=0.1)
            short = client.post("/v1/generations", data=refs | {"fault": "generate:slow:0.3"})
            ids.insert(0, short.json()["id"])
            wait_for(lambda: status(ids[0])["state"] == "running", timeout=30, interval=0.05)
            server.process.send_signal(signal.SIGTERM)

            def refused() -> httpx.Response | None:
                response = client.post("/v1/generations", data=refs)
                return response if response.status_code == 503 else None

            answer = wait_for(refused, timeout=10, interval=0.1)
            assert answer.json()["error"]["type"] == "ServiceUnavailable"
            assert int(answer.headers["retry-after"]) >= 1
            ready = client.get("/readyz")
            assert ready.status_code == 503 and not ready.json()["checks"]["accepting"]["ok"]
            assert _final(client, ids[0], timeout=20)["state"] == "succeeded"
        code = server.process.wait(timeout=60)
    assert code in (0, -signal.SIGTERM), server.output()
    store = JobStore(server.data_dir / "jobs.sqlite3")
    try:
        assert store.get(ids[0]).state is JobState.SUCCEEDED
        cancelled = store.get(ids[1])
        assert cancelled.state is JobState.CANCELLED, cancelled
        assert cancelled.error is not None and cancelled.error.cause == "cancelled"
        assert "shut down" in cancelled.error.message and "8 s" in cancelled.error.message
        assert store.running() == []
        assert len(store.page(limit=10, offset=0)[0]) == 2  # the refused one never queued
    finally:
        store.close()


def _raw_request(server: Server, head: bytes, drip: bytes = b"") -> tuple[bytes, float]:
    """Send ``head`` on a raw connection, then ``drip`` every 0.2 s, reading until the
    server closes the connection (or 14 s pass): (what it answered, seconds it took)."""
    host, port = server.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(head)
        started = time.monotonic()
        sock.settimeout(0.2)
        received = b""
        while time.monotonic() - started < 14:
            try:
                if drip:
                    sock.sendall(drip)
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # the server closed the connection
                break
            if not chunk:
                break
            received += chunk
        return received, time.monotonic() - started


def test_a_client_that_stalls_its_body_gets_408(
    tmp_path: Path, shared_cache: Path, media_root: Path
) -> None:
    """Item 10: headers sent, body stalled: the connection used to stay open for good."""
    with running_server(
        tmp_path, media_root=media_root, cache=shared_cache, workers=0, body_read_timeout="1"
    ) as server:
        received, waited = _raw_request(
            server,
            b"POST /v1/uploads HTTP/1.1\r\nHost: test\r\nX-Request-ID: stalled-1\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; "
            b'name="file"; filename="a.wav"\r\n\r\nRIFF',
        )
        head = received.split(b"\r\n", 1)[0]
        assert head == b"HTTP/1.1 408 Request Timeout", received[:300]
        assert b'"type":"RequestTimeout"' in received and b"stalled-1" in received
        assert waited < 14  # answered and closed, not left hanging until our own timeout


def test_a_client_that_drips_its_body_gets_408(
    tmp_path: Path, shared_cache: Path, media_root: Path
) -> None:
    """A body that never stalls but arrives at a few bytes a second (slowloris) held the
    request open for as long as the client liked."""
    with running_server(
        tmp_path, media_root=media_root, cache=shared_cache, workers=0, body_read_timeout="1"
    ) as server:
        received, waited = _raw_request(
            server,
            b"POST /easy/submit HTTP/1.1\r\nHost: test\r\nX-Request-ID: drip-1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
            drip=b" " * 10,  # 50 bytes a second, never a pause
        )
        head = received.split(b"\r\n", 1)[0]
        assert head == b"HTTP/1.1 408 Request Timeout", received[:300]
        assert b"too slowly" in received and b"drip-1" in received
        assert waited < 10
