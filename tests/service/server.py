"""A real ``heygem serve`` (``python -m service.cli`` under uvicorn) on a free loopback port,
for the tests that need the whole server: the service's own and the web page's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import wait_for
from tests.service.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base: str
    log: Path
    data_dir: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_server(
    directory: Path, *, media_root: Path, cache: Path, workers: int, **env: str
) -> Iterator[Server]:
    """``python -m service.cli`` on a free loopback port until the block ends (SIGTERM)."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HEYGEM_SERVICE_")}
    # opencv, imported by this test process, adds itself to LD_LIBRARY_PATH: not the server's.
    libraries = [p for p in environ.pop("LD_LIBRARY_PATH", "").split(":") if p and "cv2" not in p]
    if libraries:
        environ["LD_LIBRARY_PATH"] = ":".join(libraries)
    environ |= {
        "HEYGEM_SERVICE_PIPELINE__CACHE_DIR": str(cache),
        "HEYGEM_SERVICE_PIPELINE__BATCH_SIZE": "8",
        "HEYGEM_SERVICE_LOG_LEVEL": "info",
    } | {f"HEYGEM_SERVICE_{k.upper()}": v for k, v in env.items()}
    log = directory / "server.log"
    data_dir = directory / "data"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "--host", "127.0.0.1", "--port", str(port),
             "--workers", str(workers), "--data-dir", str(data_dir),
             "--media-root", str(media_root)],
            cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = Server(process, f"http://127.0.0.1:{port}", log, data_dir)
    try:
        with httpx.Client(base_url=server.base, timeout=10) as client:

            def up() -> bool:
                if process.poll() is not None:
                    pytest.fail("server exited:\n" + server.output())
                try:
                    return client.get("/readyz" if workers else "/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(up, timeout=180, interval=0.2, what="the server to be ready")
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                raise
