"""What a running ``heygem worker`` (a Celery worker) tells local diagnostics about itself.

The worker's main process keeps a small JSON status file, ``<dir>/<pid>.json``, current
within a few seconds: its Celery name, device, pool processes and the job each one runs,
and the findings of the doctor probes it ran at start (a too small /dev/shm, no CUDA for a
GPU worker). ``heygem-diagnose ps`` reads it to label the worker's process tree and to
report those findings; the file goes away when the worker stops. The format is defined
here, by the reader; the writer is the service (``service.celery_worker``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diagnostics.findings import Finding, Severity

ENV_DIR = "HEYGEM_WORKER_STATUS_DIR"


def status_dir() -> Path:
    """Where workers of this user keep their status files (one per worker main process)."""
    given = os.environ.get(ENV_DIR)
    if given:
        return Path(given)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) if runtime else Path(tempfile.gettempdir())
    return base / f"heygem-workers-{os.getuid()}"


@dataclass(frozen=True)
class PoolProcess:
    pid: int
    job_id: str | None = None
    seconds: float | None = None  # how long it has run this job
    state: str = "idle"  # starting (warming its pipeline), idle or busy


@dataclass(frozen=True)
class WorkerStatus:
    """One worker main process as it describes itself."""

    pid: int
    hostname: str  # the Celery node name, e.g. heygem@gpu-box-1
    device: str
    concurrency: int
    queue: str
    broker: str  # without its password
    started_at: float
    updated_at: float
    processes: list[PoolProcess] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)  # Finding.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorkerStatus:
        processes = [PoolProcess(**p) for p in data.get("processes", [])]
        return cls(**{**data, "processes": processes})

    def start_findings(self) -> list[Finding]:
        """What its start-up checks found wrong (a worker whose checks failed did not start,
        so these are warnings: it runs, but e.g. slower or closer to a limit)."""
        return [
            Finding(
                str(f.get("id", "worker-start")),
                Severity(str(f.get("severity", "info"))),
                f"worker {self.hostname} (pid {self.pid}) at start: {f.get('title', '')}",
                evidence=tuple(str(e) for e in f.get("evidence", ())),
                fix=f.get("fix"),
                subject=f"pid {self.pid}",
            )
            for f in self.findings
            if f.get("severity") in (Severity.WARN.value, Severity.FAIL.value)
        ]

    def lines(self) -> list[str]:
        busy = [p for p in self.processes if p.job_id]
        lines = [
            f"celery worker {self.hostname} (pid {self.pid}): device {self.device}, "
            f"{len(self.processes)} pool process(es), {len(busy)} busy, queue {self.queue} "
            f"on {self.broker}"
        ]
        for p in self.processes:
            doing = (
                f"job {p.job_id}" + (f" for {p.seconds:.0f} s" if p.seconds is not None else "")
                if p.job_id
                else p.state
            )
            lines.append(f"  pool process {p.pid}: {doing}")
        return lines


def write_status(status: WorkerStatus, directory: Path | None = None) -> Path:
    """Replace the status file atomically (readers never see half a file)."""
    directory = directory or status_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{status.pid}.json"
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(status.to_dict()))
    temporary.replace(path)
    return path


def remove_status(pid: int, directory: Path | None = None) -> None:
    ((directory or status_dir()) / f"{pid}.json").unlink(missing_ok=True)


def read_status(pid: int, directory: Path | None = None) -> WorkerStatus | None:
    """The status of worker ``pid``, or None (no such worker, or a file it left behind
    when it was killed: the pid must still be alive)."""
    path = (directory or status_dir()) / f"{pid}.json"
    try:
        status = WorkerStatus.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return status
