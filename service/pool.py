"""Worker processes and the supervisor thread that owns them.

Only the supervisor thread touches worker slots: it dispatches queued jobs to idle
workers, relays their progress into the store, notices deaths (decoded exit codes),
silence (no heartbeat), cancellations and timeouts, kills what must die and starts
replacements. Request threads talk to it through the store plus a wake-up pipe.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

from heygem.cgroups import usable_cpus
from heygem.config import GenerateOptions
from heygem.errors import Cancelled, HeygemError
from heygem.runner.exits import OomWatch, describe_exit
from service.errors import JobNotFound, JobTimedOut, WorkerCrashed, WorkerStalled
from service.jobs import Job, JobError
from service.metrics import Metrics
from service.protocol import (
    CancelJob,
    Heartbeat,
    JobDone,
    JobFailed,
    Progress,
    Ready,
    Retiring,
    RunJob,
    StartFailed,
    Stop,
)
from service.store import JobStore
from service.worker import WorkerConfig, worker_main

log = logging.getLogger(__name__)

TICK = 0.25  # seconds between supervisor checks when nothing happens
MAX_BACKOFF = 30.0


class SlotState(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    DOWN = "down"  # dead, waiting for its restart (back-off)


@dataclass(frozen=True)
class PoolConfig:
    workers: int
    options: GenerateOptions
    heartbeat_interval: float
    stall_timeout: float
    start_timeout: float
    cancel_grace: float
    job_timeout: float | None
    log_level: str = "info"


@dataclass
class _Slot:
    index: int
    state: SlotState = SlotState.DOWN
    process: BaseProcess | None = None
    conn: Connection | None = None
    pid: int | None = None
    job: Job | None = None
    started: float = 0.0
    last_seen: float = 0.0
    job_started: float = 0.0
    cancel_sent: float | None = None
    cancel_error: HeygemError | None = None  # set when the cancel is a timeout
    kill_error: HeygemError | None = None  # why we killed it (instead of a decoded exit)
    kill_reason: str = ""  # the restart reason metrics see
    retiring: str | None = None
    retiring_since: float = 0.0
    failed_starts: int = 0
    restart_at: float = 0.0
    restart_reason: str = "start"
    start_error: str | None = None  # why the last start failed, for /readyz


class WorkerPool:
    def __init__(
        self,
        config: PoolConfig,
        store: JobStore,
        metrics: Metrics,
        on_success: Callable[[Job], str | None] = lambda job: None,
    ) -> None:
        self.config = config
        self._store = store
        self._metrics = metrics
        self._on_success = on_success
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(config.workers)]
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.last_tick = time.monotonic()
        self._cpus = max(1, usable_cpus() // max(1, config.workers))
        self._oom = OomWatch()

    # -- API for the request side --------------------------------------------------------
    def start(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            slot.restart_at = now
        self._thread = threading.Thread(target=self._run, name="heygem-supervisor", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Have the supervisor look at the store now (a job was queued or cancelled)."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [
            {
                "index": s.index,
                "state": s.state.value,
                "pid": s.pid,
                "job_id": s.job.id if s.job else None,
                "seconds_since_heartbeat": round(now - s.last_seen, 2) if s.pid else None,
                "last_start_error": s.start_error,
            }
            for s in self._slots
        ]

    def supervisor_healthy(self) -> bool:
        alive = self._thread is not None and self._thread.is_alive()
        return alive and time.monotonic() - self.last_tick < 10 * TICK + 5.0

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
        for slot in self._slots:
            self._send(slot, Stop())
        deadline = time.monotonic() + timeout
        for slot in self._slots:
            if slot.process is not None:
                slot.process.join(max(0.1, deadline - time.monotonic()))
                if slot.process.is_alive():
                    slot.process.kill()
                    slot.process.join(2.0)
            self._close(slot)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # -- the supervisor thread -----------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            self.last_tick = time.monotonic()
            try:
                self._tick()
            except Exception:
                log.exception("supervisor tick failed")
                time.sleep(TICK)

    def _tick(self) -> None:
        waitables: list[Any] = [self._wake_r]
        for slot in self._slots:
            if slot.conn is not None:
                waitables.append(slot.conn)
            if slot.process is not None:
                waitables.append(slot.process.sentinel)
        ready = wait(waitables, timeout=TICK)
        if self._wake_r in ready:
            with contextlib.suppress(BlockingIOError, OSError):
                os.read(self._wake_r, 4096)
        now = time.monotonic()
        for slot in self._slots:
            if slot.conn is not None and slot.conn in ready:
                self._drain(slot, now)
            self._check(slot, now)
        for slot in self._slots:
            self._dispatch(slot, now)

    def _drain(self, slot: _Slot, now: float) -> None:
        assert slot.conn is not None
        try:
            while slot.conn.poll():
                message = slot.conn.recv()
                slot.last_seen = now
                self._handle(slot, message)
        except (EOFError, OSError):
            self._close(slot)  # the process sentinel reports the death itself

    def _handle(self, slot: _Slot, message: object) -> None:
        if isinstance(message, Ready):
            slot.state, slot.pid, slot.failed_starts = SlotState.IDLE, message.pid, 0
            slot.start_error = None
            log.info(
                "worker %d (pid %d) warm in %.1f s on %s",
                slot.index,
                message.pid,
                message.warm_seconds,
                ",".join(message.providers),
            )
        elif isinstance(message, StartFailed):
            error = JobError.from_dict(message.error)
            slot.start_error = error.message + (f" ({error.hint})" if error.hint else "")
        elif isinstance(message, Heartbeat):
            pass
        elif isinstance(message, Progress) and self._owns(slot, message.job_id):
            self._store.set_progress(message.job_id, message.stage, message.percent)
        elif isinstance(message, JobDone) and self._owns(slot, message.job_id):
            assert slot.job is not None
            self._succeed(slot.job, message.result)
            self._job_ended(slot)
        elif isinstance(message, JobFailed) and self._owns(slot, message.job_id):
            assert slot.job is not None
            error = JobError.from_dict(message.error)
            if message.cancelled and slot.cancel_error is not None:
                error = _job_error(slot.cancel_error)
                self._fail(slot.job, error)
            else:
                self._fail(slot.job, error, cancelled=message.cancelled)
            self._job_ended(slot)
        elif isinstance(message, Retiring):
            slot.retiring, slot.retiring_since = message.reason, time.monotonic()

    def _owns(self, slot: _Slot, job_id: str) -> bool:
        return slot.job is not None and slot.job.id == job_id

    def _job_ended(self, slot: _Slot) -> None:
        slot.job, slot.cancel_sent, slot.cancel_error = None, None, None
        if slot.state is SlotState.BUSY:
            slot.state = SlotState.IDLE

    def _check(self, slot: _Slot, now: float) -> None:
        cfg = self.config
        proc = slot.process
        if proc is not None and proc.exitcode is not None:
            self._died(slot, proc.exitcode, now)
            return
        if slot.state is SlotState.DOWN:
            if now >= slot.restart_at and not self._stopping.is_set():
                self._spawn(slot, now)
            return
        if slot.state is SlotState.STARTING and now - slot.started > cfg.start_timeout:
            self._kill(
                slot,
                WorkerCrashed(
                    f"worker {slot.index} did not become ready within {cfg.start_timeout:.0f} s",
                    hint="check the worker log; model loading may be failing",
                ),
                reason="start_timeout",
            )
            return
        if slot.retiring:
            if now - slot.retiring_since > cfg.cancel_grace:  # it said it would leave
                self._kill(
                    slot,
                    WorkerCrashed(
                        f"worker {slot.pid} did not exit after retiring ({slot.retiring})"
                    ),
                    reason="recycled",
                )
            return
        if slot.state in (SlotState.IDLE, SlotState.BUSY) and (
            now - slot.last_seen > cfg.stall_timeout
        ):
            self._metrics.worker_stalled()
            doing = f"while running job {slot.job.id}" if slot.job else "while idle"
            self._kill(
                slot,
                WorkerStalled(
                    f"worker process {slot.pid} sent no heartbeat for {now - slot.last_seen:.1f} s "
                    f"{doing} (stall timeout {cfg.stall_timeout:g} s); it was killed and replaced",
                    stage=slot.job.stage if slot.job else None,
                    hint="the worker was stuck (native code holding the GIL, or stopped); "
                    "`heygem-diagnose ps` inspects a live worker",
                ),
                reason="stalled",
            )
            return
        if slot.state is SlotState.BUSY and slot.job is not None:
            self._check_cancel(slot, now)

    def _check_cancel(self, slot: _Slot, now: float) -> None:
        assert slot.job is not None
        cfg = self.config
        if slot.cancel_sent is None:
            timed_out = cfg.job_timeout is not None and now - slot.job_started > cfg.job_timeout
            if timed_out:
                slot.cancel_error = JobTimedOut(
                    f"the job ran longer than the {cfg.job_timeout:g} s job timeout",
                    stage=slot.job.stage,
                    hint="use shorter inputs or raise the timeout",
                )
            try:
                requested = self._store.get(slot.job.id).cancel_requested
            except JobNotFound:
                requested = True
            if timed_out or requested:
                self._send(slot, CancelJob(slot.job.id))
                slot.cancel_sent = now
        elif now - slot.cancel_sent > cfg.cancel_grace:
            error = slot.cancel_error or Cancelled(
                f"cancelled; the worker did not stop within {cfg.cancel_grace:g} s, so its "
                "process was killed"
            )
            self._kill(slot, error, reason="cancel_timeout", cancelled=slot.cancel_error is None)

    def _dispatch(self, slot: _Slot, now: float) -> None:
        if slot.state is not SlotState.IDLE or slot.retiring or self._stopping.is_set():
            return
        assert slot.pid is not None
        job = self._store.claim_next(slot.pid)
        if job is None:
            return
        task = RunJob(job.id, job.audio_path, job.video_path, job.output_path, job.options)
        if not self._send(slot, task):
            self._store.requeue(job.id)
            return
        slot.state, slot.job, slot.job_started = SlotState.BUSY, job, now
        log.info("job %s -> worker %d (pid %d)", job.id, slot.index, slot.pid)

    # -- life and death ------------------------------------------------------------------
    def _spawn(self, slot: _Slot, now: float) -> None:
        cfg = self.config
        parent, child = self._ctx.Pipe(duplex=True)
        config = WorkerConfig(
            slot.index, cfg.options, cfg.heartbeat_interval, self._cpus, cfg.log_level
        )
        process = self._ctx.Process(
            target=worker_main,
            args=(config, child),
            name=f"heygem-worker-{slot.index}",
            daemon=True,
        )
        try:
            process.start()
        except (OSError, RuntimeError) as exc:  # fork/exec limits, a broken __main__
            parent.close()
            child.close()
            slot.failed_starts += 1
            slot.restart_at = now + min(MAX_BACKOFF, 2.0**slot.failed_starts)
            log.error("could not start worker %d: %s", slot.index, exc)
            return
        child.close()
        slot.process, slot.conn, slot.pid = process, parent, process.pid
        slot.state, slot.started, slot.last_seen = SlotState.STARTING, now, now
        slot.retiring = None
        slot.kill_error = None
        if slot.restart_reason != "start":
            self._metrics.worker_restarted(slot.restart_reason)
        log.info("worker %d starting (pid %s, %s)", slot.index, process.pid, slot.restart_reason)

    def _kill(
        self, slot: _Slot, error: HeygemError, *, reason: str, cancelled: bool = False
    ) -> None:
        slot.kill_error, slot.kill_reason = error, reason
        if slot.process is not None and slot.process.is_alive():
            log.warning("killing worker %d (pid %s): %s", slot.index, slot.pid, error.message)
            slot.process.kill()
            slot.process.join(5.0)
        exitcode = slot.process.exitcode if slot.process is not None else None
        self._died(
            slot, exitcode if exitcode is not None else -9, time.monotonic(), cancelled=cancelled
        )

    def _died(self, slot: _Slot, exitcode: int, now: float, *, cancelled: bool = False) -> None:
        exit_ = describe_exit(exitcode, oom_killed=self._oom.killed_since())
        what, fix = exit_.what, exit_.fix
        reason: str
        if slot.kill_error is not None:
            error, reason = slot.kill_error, slot.kill_reason
        elif slot.retiring:
            reason = "recycled"
            error = WorkerCrashed(f"worker process {slot.pid} left ({slot.retiring})", hint=fix)
        else:
            reason = "crashed" if exitcode != 0 else "exited"
            error = WorkerCrashed(
                f"worker process {slot.pid} died while running this job: {what}",
                stage=slot.job.stage if slot.job else None,
                hint=fix,
                cause=exit_.cause,
            )
        if slot.job is not None:
            self._fail(slot.job, _job_error(error), cancelled=cancelled)
        if slot.state is SlotState.STARTING:
            slot.failed_starts += 1
            log.error("worker %d (pid %s) died while starting: %s", slot.index, slot.pid, what)
        elif reason != "recycled":
            log.error("worker %d (pid %s) is gone: %s", slot.index, slot.pid, error.message)
        if slot.process is not None:
            slot.process.join(1.0)  # reap: no <defunct> workers
        self._close(slot)
        backoff = min(MAX_BACKOFF, 2.0**slot.failed_starts - 1) if slot.failed_starts else 0
        slot.state, slot.process, slot.pid, slot.job = SlotState.DOWN, None, None, None
        slot.cancel_sent, slot.cancel_error, slot.retiring = None, None, None
        slot.restart_at, slot.restart_reason = now + backoff, reason

    def _close(self, slot: _Slot) -> None:
        if slot.conn is not None:
            with contextlib.suppress(OSError):
                slot.conn.close()
            slot.conn = None

    def _send(self, slot: _Slot, message: RunJob | CancelJob | Stop) -> bool:
        if slot.conn is None:
            return False
        try:
            slot.conn.send(message)
            return True
        except (OSError, EOFError, ValueError):
            return False

    # -- job outcomes --------------------------------------------------------------------
    def _succeed(self, job: Job, result: dict[str, Any]) -> None:
        published = None
        try:
            published = self._on_success(job)
        except (OSError, HeygemError) as exc:
            log.warning("job %s: could not publish its result: %s", job.id, exc)
            result = result | {
                "warnings": [*result.get("warnings", []), f"result not published: {exc}"]
            }
        self._store.succeed(job.id, result, published)
        queued = (job.started_at - job.created_at) if job.started_at else None
        self._metrics.job_succeeded(result, queued)

    def _fail(self, job: Job, error: JobError, *, cancelled: bool = False) -> None:
        self._store.finish_unsuccessfully(job.id, error, cancelled=cancelled)
        self._metrics.job_ended("cancelled" if cancelled else "failed", error.type)


def _job_error(exc: HeygemError) -> JobError:
    return JobError(type(exc).__name__, exc.message, exc.hint, getattr(exc, "stage", None))
