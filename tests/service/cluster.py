"""A scaled-out service on loopback: a Redis server (AOF on, its own temporary directory,
a free port) and ``heygem worker`` processes as separate "machines" (own working
directories, one shared data directory). Redis comes from Debian's ``redis-server``."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from fastapi.testclient import TestClient

from service.settings import ServiceSettings
from tests.helpers import wait_for
from tests.service.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]


def redis_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return binary


@dataclass
class RedisServer:
    """redis-server with persistence (appendonly, fsync always), restartable in place."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always",
             "--save", "", "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(self.answers, timeout=20, what=f"redis-server on port {self.port}")

    def answers(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """A clean shutdown (SIGTERM: Redis flushes its AOF), as a restart by an operator."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=20)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class Worker:
    """One ``heygem worker`` on its own "machine" (its own working directory)."""

    name: str
    home: Path
    env: dict[str, str]
    args: list[str]
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.home / "worker.log"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "heygem.cli", "worker", "--name", self.name, *self.args],
                cwd=self.home, env=self.env | {"PYTHONPATH": str(ROOT)},
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pool_pids(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.pid).children()]
        except psutil.Error:
            return []

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """kill -9 of the worker's main process (its pool processes die with it)."""
        assert self.process is not None
        pool = self.pool_pids()
        self.process.kill()
        self.process.wait(timeout=10)
        wait_for(
            lambda: not any(psutil.pid_exists(p) and _not_zombie(p) for p in pool),
            timeout=10,
            what="the pool processes to die with their worker",
        )

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)  # cold shutdown: its jobs go back at once
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _not_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def worker_env(settings_env: dict[str, str]) -> dict[str, str]:
    """The environment of a worker: this one without HEYGEM_SERVICE_*, plus the given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HEYGEM_SERVICE_")}
    return base | settings_env


# Settings a worker must share with the API (the rest may differ per machine).
SHARED_SETTINGS = (
    "broker_url",
    "celery_queue",
    "data_dir",
    "media_root",
    "max_attempts",
    "cancel_grace",
    "job_timeout",
    "job_timeout_min",
    "job_timeout_per_audio_second",
    "job_ttl",
    "broker_visibility_timeout",
    "worker_max_jobs",
    "worker_max_rss_mib",
    "log_level",
)
SHARED_PIPELINE = ("cache_dir", "batch_size")


def settings_env(settings: ServiceSettings) -> dict[str, str]:
    """``settings`` as the HEYGEM_SERVICE_* variables a worker reads."""
    env = {}
    for name in SHARED_SETTINGS:
        value = getattr(settings, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"HEYGEM_SERVICE_{name.upper()}"] = str(value)
    for name in SHARED_PIPELINE:
        env[f"HEYGEM_SERVICE_PIPELINE__{name.upper()}"] = str(getattr(settings.options, name))
    return env


def start_workers(
    settings: ServiceSettings, base: Path, count: int = 2, concurrency: int = 1
) -> list[Worker]:
    """``count`` workers on separate "machines" (own directories) sharing the data dir."""
    workers = []
    for n in range(count):
        home = base / f"machine-{n}"
        env = worker_env(settings_env(settings)) | {
            "HEYGEM_WORKER_STATUS_DIR": str(home / "status")
        }
        worker = Worker(f"w{n}@machine-{n}", home, env, ["--concurrency", str(concurrency)])
        worker.start()
        workers.append(worker)
    return workers


def stop_workers(workers: list[Worker]) -> None:
    for worker in workers:
        worker.stop()


def warm_workers(
    client: TestClient, count: int, timeout: float = 180.0, workers: list[Worker] | None = None
) -> None:
    """Wait until the API sees ``count`` warm pool processes. A worker that exits, or a
    timeout, fails at once with what the API saw last and the end of each worker's log."""
    seen = {"detail": ""}

    def warm() -> bool:
        if any(not w.alive() for w in workers or []):
            raise AssertionError("a worker exited while starting")
        detail: str = client.get("/readyz").json()["checks"]["workers"]["detail"]
        seen["detail"] = detail
        return detail.startswith(f"{count} of ") and f"of {count} workers warm" in detail

    try:
        wait_for(warm, timeout=timeout, interval=0.25, what=f"{count} warm workers")
    except AssertionError as exc:
        logs = "\n".join(
            f"--- {w.name} (alive: {w.alive()}) ---\n" + "\n".join(w.output().splitlines()[-40:])
            for w in workers or []
        )
        raise AssertionError(f"{exc}; /readyz said {seen['detail']!r}\n{logs}") from None
