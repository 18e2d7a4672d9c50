"""The real thing: ``python -m service.cli`` under uvicorn, submit -> poll -> download."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import stream_summary
from tests.service.helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
def test_uvicorn_submit_poll_download(tmp_path: Path, shared_cache: Path, media_root: Path) -> None:
    port = _free_port()
    env = os.environ | {
        "HEYGEM_SERVICE_CACHE_DIR": str(shared_cache),
        "HEYGEM_SERVICE_BATCH_SIZE": "8",
        "HEYGEM_SERVICE_LOG_LEVEL": "info",
    }
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--data-dir",
            str(tmp_path / "data"),
            "--media-root",
            str(media_root),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=10) as client:

            def ready() -> bool:
                if server.poll() is not None:
                    pytest.fail("server exited:\n" + (tmp_path / "server.log").read_text())
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(ready, timeout=90, interval=0.2)
            workers = [c.pid for c in psutil.Process(server.pid).children()]
            assert workers, "no worker process"
            with (
                (media_root / "speech.wav").open("rb") as audio,
                (media_root / "template.mp4").open("rb") as video,
            ):
                response = client.post(
                    "/v1/generations",
                    files={"audio": ("speech.wav", audio), "video": ("template.mp4", video)},
                )
            assert response.status_code == 202, response.text
            job = response.json()["id"]

            def finished() -> dict[str, object] | None:
                body: dict[str, object] = client.get(f"/v1/generations/{job}").json()
                return body if body["state"] in ("succeeded", "failed", "cancelled") else None

            status = wait_for(finished, timeout=60, interval=0.1)
            assert status["state"] == "succeeded", status
            result = tmp_path / "result.mp4"
            with client.stream("GET", f"/v1/generations/{job}/result") as download:
                assert download.status_code == 200
                with result.open("wb") as out:
                    for chunk in download.iter_bytes():
                        out.write(chunk)
            assert stream_summary(result)["frames"] == status["frames"]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            code = server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
        log.close()
    # uvicorn re-raises the signal it handled once shutdown is complete.
    text = (tmp_path / "server.log").read_text()
    assert code in (0, -signal.SIGTERM) and "Application shutdown complete" in text, text
    deadline = time.monotonic() + 5
    while any(
        psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie" for pid in workers
    ):
        assert time.monotonic() < deadline, "worker processes outlived the server"
        time.sleep(0.05)
