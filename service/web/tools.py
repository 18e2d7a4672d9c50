"""The diagnostics the web page asks for that need the heavy libraries: the environment
doctor and a result's lip-sync score, each run as ``heygem-diagnose ... --json`` in a
child process.

Why a child: the doctor imports torch and onnxruntime, the sync score dlib and its
landmark model; the API process loads none of them (workers hold the heavy libraries, the
API stays small), and a child that hangs is killed at its time limit without touching
the server. Children run one at a time (a sync score is seconds of CPU per video second;
the machine's cores belong to the generation workers first), and are killed when the
server stops.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heygem.errors import HeygemError
from service.errors import ServiceUnavailable

log = logging.getLogger(__name__)

DOCTOR_SECONDS = 180.0
DOCTOR_FRESH = 10.0
SYNC_SCORE_SECONDS = 600.0
SYNC_SCORE_FILE = "sync-score.json"  # beside the result: removed with the job


class ToolFailed(HeygemError):
    """A diagnostics child process could not give an answer."""


@dataclass(frozen=True)
class DoctorRun:
    report: dict[str, Any]
    finished_at: float
    seconds: float


class Tools:
    def __init__(self) -> None:
        self._queue = ThreadPoolExecutor(max_workers=1, thread_name_prefix="web-tool")
        self._children: set[subprocess.Popen[str]] = set()
        self._lock = threading.Lock()
        self._closed = False
        self._doctor: DoctorRun | None = None
        self._doctor_lock = threading.Lock()
        self._scores: dict[str, Future[None]] = {}

    # -- running heygem-diagnose ---------------------------------------------------------
    def run(self, args: Sequence[str], timeout: float) -> dict[str, Any]:
        """``heygem-diagnose ARGS --json``: its report (exit 0 or 1), else ToolFailed."""
        command = [sys.executable, "-m", "diagnostics.cli", *args, "--json"]
        with self._lock:
            if self._closed:
                raise _stopping()
            child = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            self._children.add(child)
        try:
            out, err = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            raise ToolFailed(
                f"heygem-diagnose {args[0]} did not finish within {timeout:g} s",
                hint="run it on the server by hand to see where it hangs",
            ) from None
        finally:
            with self._lock:
                self._children.discard(child)
        if child.returncode not in (0, 1):
            last = (err.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
            raise ToolFailed(
                f"heygem-diagnose {args[0]} could not run: {last}",
                hint="the server log has the details",
            )
        try:
            report: dict[str, Any] = json.loads(out)
        except json.JSONDecodeError as exc:
            raise ToolFailed(
                f"heygem-diagnose {args[0]} printed no JSON report ({exc.msg})",
                hint="the server log has the details",
            ) from exc
        return report

    def close(self) -> None:
        """Kill running children, drop queued work (the server is stopping)."""
        with self._lock:
            self._closed = True
            children = list(self._children)
        for child in children:
            child.kill()
        self._queue.shutdown(wait=False, cancel_futures=True)

    # -- the environment doctor ----------------------------------------------------------
    def doctor(self, refresh: bool = False) -> DoctorRun:
        """The last doctor report, run now if there is none or ``refresh`` asks for it.

        Concurrent callers wait for the one run in progress rather than start another, and
        a report younger than ``DOCTOR_FRESH`` seconds counts as fresh (clicks and scripts
        cannot keep a core busy with doctors)."""
        asked = time.time()
        with self._doctor_lock:
            last = self._doctor
            if last is not None and (
                not refresh or last.finished_at >= min(asked, time.time() - DOCTOR_FRESH)
            ):
                return last
            started = time.perf_counter()
            report = self.run(["env"], DOCTOR_SECONDS)
            self._doctor = DoctorRun(report, time.time(), time.perf_counter() - started)
            return self._doctor

    # -- lip-sync scores -----------------------------------------------------------------
    def sync_score(self, job_id: str, video: Path, audio: Path) -> dict[str, Any] | None:
        """The score of a result: its report once measured, None while it is measured.

        Measured once per result in the background and kept beside it; a failed
        measurement raises ToolFailed (once; asking again measures again)."""
        cached = video.parent / SYNC_SCORE_FILE
        if cached.is_file():
            report: dict[str, Any] = json.loads(cached.read_text())
            return report
        with self._lock:
            if self._closed:
                raise _stopping()
            running = self._scores.get(job_id)
            if running is not None and running.done():
                del self._scores[job_id]
                running.result()  # raises what the measurement raised
                return self.sync_score(job_id, video, audio)
            if running is None:
                self._scores[job_id] = self._queue.submit(self._measure, video, audio, cached)
        return None

    def _measure(self, video: Path, audio: Path, cached: Path) -> None:
        report = self.run(["sync-score", str(video), str(audio)], SYNC_SCORE_SECONDS)
        partial = cached.with_name(f".{cached.name}.part")
        partial.write_text(json.dumps(report))
        partial.replace(cached)


def _stopping() -> ServiceUnavailable:
    return ServiceUnavailable(
        "the server is shutting down", retry_after=10, hint="retry once it is back"
    )
