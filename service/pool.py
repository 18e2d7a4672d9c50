"""The local executor: worker processes and the supervisor thread that owns them.

Only the supervisor thread touches worker slots: it claims queued jobs for idle workers,
relays their progress, notices deaths (decoded exit codes), silence (no heartbeat),
cancellations and time limits, kills what must die, recycles workers that ran many jobs
or grew too large, and starts replacements. Every job transition goes through
``JobLifecycle``; request threads talk to the supervisor through the store plus a
wake-up pipe.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import psutil

from heygem.cgroups import usable_cpus
from heygem.config import GenerateOptions
from heygem.errors import Cancelled, FailureCause, HeygemError
from heygem.runner.exits import OomWatch, describe_exit
from service.errors import WorkerCrashed, WorkerStalled
from service.jobs import Job, JobError
from service.lifecycle import JobLifecycle, WorkerInfo
from service.metrics import Gauge, Metrics
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
from service.worker import WorkerConfig, worker_main

log = logging.getLogger(__name__)

TICK = 0.25  # seconds between supervisor checks when nothing happens
MAX_BACKOFF = 30.0
MiB = 1024 * 1024


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
    stall_timeout: float  # a silent worker process is killed after this (last resort)
    start_timeout: float
    cancel_grace: float
    max_jobs: int | None = None  # recycle a worker after this many jobs
    max_rss_bytes: int | None = None  # ... or when it holds more memory than this
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
    silence_limit: float = 0.0
    jobs_done: int = 0
    oom: OomWatch | None = None
    cancel_sent: float | None = None
    cancel_error: HeygemError | None = None  # set when the cancel is a time limit
    kill_error: HeygemError | None = None  # why we killed it (instead of a decoded exit)
    kill_reason: str = ""  # the restart reason metrics see
    retiring: str | None = None
    retiring_since: float = 0.0
    failed_starts: int = 0
    restart_at: float = 0.0
    restart_reason: str = "start"
    start_error: str | None = None  # why the last start failed, for /readyz

    @property
    def name(self) -> str:
        return f"local-{self.index} (pid {self.pid})"


class WorkerPool:
    """The ``local`` executor (see ``service.lifecycle.Executor``)."""

    def __init__(self, config: PoolConfig, lifecycle: JobLifecycle, metrics: Metrics) -> None:
        self.config = config
        self._lifecycle = lifecycle
        self._metrics = metrics
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [_Slot(i) for i in range(config.workers)]
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.last_tick = time.monotonic()
        self._cpus = max(1, usable_cpus() // max(1, config.workers))

    # -- Executor ------------------------------------------------------------------------
    def start(self) -> None:
        now = time.monotonic()
        for slot in self._slots:
            slot.restart_at = now
        self._thread = threading.Thread(target=self._run, name="heygem-supervisor", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        self.wake()  # the supervisor claims it from the store

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"!")

    def checks(self) -> dict[str, tuple[bool, str]]:
        return {}

    def gauges(self) -> list[Gauge]:
        return []

    def workers(self) -> list[WorkerInfo]:
        now = time.monotonic()
        return [
            WorkerInfo(
                name=str(s.index),
                state=s.state.value,
                pid=s.pid,
                job_id=s.job.id if s.job else None,
                seconds_since_heartbeat=round(now - s.last_seen, 2) if s.pid else None,
                rss_bytes=_rss(s.pid),
                jobs_done=s.jobs_done,
                last_start_error=s.start_error,
            )
            for s in self._slots
        ]

    def healthy(self) -> bool:
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
            self._lifecycle.progress(
                message.job_id,
                message.phase,
                message.percent,
                frames_done=message.frames_done,
                frames_total=message.frames_total,
                step=message.step,
                step_done=message.step_done,
                step_total=message.step_total,
            )
        elif isinstance(message, JobDone) and self._owns(slot, message.job_id):
            assert slot.job is not None
            self._lifecycle.succeed(slot.job, message.result)
            self._job_ended(slot)
        elif isinstance(message, JobFailed) and self._owns(slot, message.job_id):
            assert slot.job is not None
            if message.cancelled and slot.cancel_error is not None:  # the time limit
                self._lifecycle.fail(slot.job.id, slot.cancel_error)
            else:
                error = JobError.from_dict(message.error)
                self._lifecycle.fail(slot.job.id, error, cancelled=message.cancelled)
            self._job_ended(slot)
        elif isinstance(message, Retiring):
            slot.retiring, slot.retiring_since = message.reason, time.monotonic()

    def _owns(self, slot: _Slot, job_id: str) -> bool:
        return slot.job is not None and slot.job.id == job_id

    def _job_ended(self, slot: _Slot) -> None:
        slot.job, slot.cancel_sent, slot.cancel_error = None, None, None
        slot.jobs_done += 1
        if slot.state is SlotState.BUSY:
            slot.state = SlotState.IDLE
        reason = self._recycle_reason(slot)
        if reason and not slot.retiring:
            log.info("recycling worker %d (pid %s): %s", slot.index, slot.pid, reason)
            slot.retiring, slot.retiring_since = reason, time.monotonic()
            self._send(slot, Stop())

    def _recycle_reason(self, slot: _Slot) -> str | None:
        cfg = self.config
        if cfg.max_jobs is not None and slot.jobs_done >= cfg.max_jobs:
            return f"ran {slot.jobs_done} jobs (limit {cfg.max_jobs})"
        rss = _rss(slot.pid)
        if cfg.max_rss_bytes is not None and rss is not None and rss > cfg.max_rss_bytes:
            return (
                f"resident memory {rss // MiB} MiB above the {cfg.max_rss_bytes // MiB} MiB limit"
            )
        return None

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
                    WorkerCrashed(f"worker {slot.index} did not exit after retiring"),
                    reason="recycled",
                )
            return
        limit = slot.silence_limit if slot.job is not None else cfg.stall_timeout
        if slot.state in (SlotState.IDLE, SlotState.BUSY) and now - slot.last_seen > limit:
            self._metrics.worker_stalled()
            doing = "while running this job" if slot.job else "while idle"
            self._kill(
                slot,
                WorkerStalled(
                    f"the worker process sent no heartbeat for {now - slot.last_seen:.1f} s "
                    f"{doing} (limit {limit:g} s): it was stuck, so it was killed and replaced",
                    hint="the worker was stopped or native code held it; "
                    "`heygem-diagnose ps` inspects a live worker",
                    cause=FailureCause.PROCESS_STOPPED
                    if _stopped(slot.pid)
                    else FailureCause.NO_PROGRESS,
                ),
                reason="stalled",
            )
            return
        if slot.state is SlotState.BUSY and slot.job is not None:
            self._check_cancel(slot, now)

    def _check_cancel(self, slot: _Slot, now: float) -> None:
        assert slot.job is not None
        job = slot.job
        if slot.cancel_sent is None:
            timed_out = job.timeout is not None and now - slot.job_started > job.timeout
            if timed_out:
                assert job.timeout is not None
                slot.cancel_error = self._lifecycle.timed_out(job, job.timeout)
            if timed_out or self._lifecycle.cancel_requested(job.id):
                self._send(slot, CancelJob(job.id))
                slot.cancel_sent = now
        elif now - slot.cancel_sent > self.config.cancel_grace:
            grace = self.config.cancel_grace
            error = slot.cancel_error or Cancelled(
                f"cancelled; the worker did not stop within {grace:g} s, so its process was killed"
            )
            self._kill(slot, error, reason="cancel_timeout", cancelled=slot.cancel_error is None)

    def _dispatch(self, slot: _Slot, now: float) -> None:
        if slot.state is not SlotState.IDLE or slot.retiring or self._stopping.is_set():
            return
        assert slot.pid is not None
        job = self._lifecycle.claim(slot.name)
        if job is None:
            return
        task = RunJob(job.id, job.audio_path, job.video_path, job.output_path, job.options)
        if not self._send(slot, task):
            self._lifecycle.requeue(job.id)
            return
        slot.state, slot.job, slot.job_started = SlotState.BUSY, job, now
        slot.silence_limit = self._silence_limit(job)
        slot.oom = OomWatch()

    def _silence_limit(self, job: Job) -> float:
        """A job that allows its stages more silence gives its worker as much, plus margin."""
        stall = job.options.get("stall_timeout")
        job_limit = float(stall) + 2 * self.config.heartbeat_interval + 5.0 if stall else 0.0
        return max(self.config.stall_timeout, job_limit)

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
        slot.retiring, slot.kill_error, slot.jobs_done = None, None, 0
        slot.oom = OomWatch()
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
        oom = slot.oom.killed_since() if slot.oom is not None else None
        exit_ = describe_exit(exitcode, oom_killed=oom)
        reason: str
        if slot.kill_error is not None:
            error, reason = slot.kill_error, slot.kill_reason
        elif slot.retiring:
            reason = "recycled"
            error = WorkerCrashed(f"the worker process left ({slot.retiring})")
        else:
            reason = "crashed" if exitcode != 0 else "exited"
            doing = "while running this job" if slot.job else "while idle"
            error = WorkerCrashed(
                f"the worker process died {doing}: {exit_.what}", hint=exit_.fix, cause=exit_.cause
            )
        if slot.job is not None:
            self._lifecycle.fail(slot.job.id, error, cancelled=cancelled)
        if slot.state is SlotState.STARTING:
            slot.failed_starts += 1
            log.error(
                "worker %d (pid %s) died while starting: %s", slot.index, slot.pid, exit_.what
            )
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


def _rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.Error, OSError):
        return None


def _stopped(pid: int | None) -> bool:
    try:
        return pid is not None and psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except (psutil.Error, OSError):
        return False
