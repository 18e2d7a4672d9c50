"""The ``celery`` executor: jobs go through Redis to ``heygem worker`` processes anywhere.

The API stays the only writer of its job store. A submitted job is published as a Celery
task whose id is the job id (the task names its media by reference on the shared
directory, see ``service.shared``); a broker that cannot take it makes the submission a
503 and the job is withdrawn. A follower thread reads the result backend for every job
in flight (queued or running in the store) and turns what the workers wrote into the
same lifecycle transitions the local pool makes:

- ``PROGRESS`` (meta: attempt, worker, phase, percent, frames, step): started / progress;
- ``RETRY``: a pool process died with the job and Celery sent it again: back to queued,
  with a warning saying how the attempt ended (cancelled instead, when a cancel was asked);
- ``SUCCESS``: the job's outcome payload (succeeded, failed, cancelled, timed out);
- ``FAILURE``: Celery gave up (attempts used up, hard time limit, ...);
- ``REVOKED``: the cancel had to kill the process.

Reading the backend rather than listening to events is what lets an API that restarts
pick up its running jobs where the workers are: the backend keeps every state until read.
A monitor thread asks the workers for their status (a remote-control broadcast) and
reads the queue length, for /readyz and /metrics.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from heygem.errors import Cancelled, FailureCause, HeygemError
from service.celery_app import (
    CANCEL_COMMAND,
    PROGRESS,
    STATUS_COMMAND,
    TASK_NAME,
    make_celery,
    shown_url,
)
from service.errors import JobTimedOut, ServiceUnavailable, WorkerCrashed
from service.jobs import Job, JobError, JobState
from service.lifecycle import JobLifecycle, WorkerInfo
from service.metrics import Gauge, Metrics
from service.settings import ENV_PREFIX, ServiceSettings
from service.shared import to_ref, write_marker

log = logging.getLogger(__name__)

TICK = 0.5  # seconds between looks at the backend for the jobs in flight
MONITOR_INTERVAL = 3.0  # seconds between worker status broadcasts
REPLY_TIMEOUT = 1.0  # how long a broadcast waits for the workers' answers
SEEN_FOR = 3 * MONITOR_INTERVAL + 2 * REPLY_TIMEOUT  # a worker unheard of longer is gone
RESEND_CANCEL = 1.0  # seconds between repeats of the cancel command until the job ends
LOST_KEY = "heygem:lost:{}"
RECONCILE_AGE = 30.0  # seconds: younger jobs may still be being published by admission
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0.2, "interval_step": 0.2}


@dataclass
class _Tracked:
    """What the follower remembers about one job in flight."""

    attempt: int = 0
    progress: tuple[Any, ...] | None = None  # the last progress applied (phase, percent...)
    cancel_sent: float | None = None
    cancel_repeated: float = 0.0
    killed: float | None = None
    was_running: bool = False


class CeleryExecutor:
    """The ``celery`` executor (see ``service.lifecycle.Executor``)."""

    def __init__(
        self, settings: ServiceSettings, lifecycle: JobLifecycle, metrics: Metrics
    ) -> None:
        self.settings = settings
        self._lifecycle = lifecycle
        self._metrics = metrics
        self.app = make_celery(settings)
        self._tracked: dict[str, _Tracked] = {}
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.last_tick = time.monotonic()
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, dict[str, Any]]] = {}  # hostname -> (when, status)
        self._broker_error: str | None = "not checked yet"
        self._queue_depth: int | None = None
        self._unacked: int | None = None

    # -- Executor ------------------------------------------------------------------------
    def start(self) -> None:
        write_marker(self.settings.data_dir)
        for job in self._lifecycle.store.active():
            self._tracked[job.id] = _Tracked(was_running=job.state is JobState.RUNNING)
        if self._tracked:
            log.info("following %d jobs already in flight on the workers", len(self._tracked))
        for name, target in (("heygem-follower", self._follow), ("heygem-monitor", self._watch)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def submit(self, job: Job) -> None:
        payload = {
            "audio": to_ref(job.audio_path, self.settings),
            "video": to_ref(job.video_path, self.settings),
            "output": to_ref(job.output_path, self.settings),
            "options": job.options,
            "timeout": job.timeout,
            "api_data_dir": str(self.settings.data_dir),
            "api_media_root": str(self.settings.media_root) if self.settings.media_root else None,
        }
        hard_limit = job.timeout + self.settings.cancel_grace if job.timeout else None
        try:
            self.app.send_task(
                TASK_NAME,
                kwargs={"job": payload},
                task_id=job.id,
                queue=self.settings.celery_queue,
                time_limit=hard_limit,
                retry=True,
                retry_policy=PUBLISH_RETRY,
            )
        except Exception as exc:  # noqa: BLE001 - kombu/redis raise many kinds; all mean "down"
            self._broker_down(exc)
            wait = self.settings.retry_after_seconds
            raise ServiceUnavailable(
                f"the job queue (Redis at {shown_url(self.settings)}) cannot be reached, so "
                "the job was not accepted",
                retry_after=wait,
                hint=f"retry after {wait} s; the operator should check the Redis broker",
            ) from None
        with self._lock:
            self._tracked.setdefault(job.id, _Tracked())
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout)
        self.app.close()

    def healthy(self) -> bool:
        alive = all(t.is_alive() for t in self._threads) and bool(self._threads)
        return alive and time.monotonic() - self.last_tick < 10 * TICK + 5.0

    def workers(self) -> list[WorkerInfo]:
        now = time.monotonic()
        infos = []
        with self._lock:
            seen = dict(self._seen)
        for hostname, (when, status) in sorted(seen.items()):
            if now - when > SEEN_FOR:
                continue
            for process in status.get("processes", []):
                job = process.get("job_id")
                infos.append(
                    WorkerInfo(
                        name=f"{hostname}/{process.get('pid')}",
                        state=str(process.get("state") or ("busy" if job else "idle")),
                        pid=process.get("pid"),
                        job_id=job,
                        seconds_since_heartbeat=round(now - when, 2),
                    )
                )
        return infos

    def checks(self) -> dict[str, tuple[bool, str]]:
        error = self._broker_error
        where = shown_url(self.settings)
        if error is None:
            return {"broker": (True, f"Redis at {where} reachable")}
        return {"broker": (False, f"Redis at {where} unreachable: {error}")}

    def gauges(self) -> list[Gauge]:
        def nodes() -> Iterable[tuple[tuple[str, ...], float]]:
            now = time.monotonic()
            with self._lock:
                count = sum(1 for when, _ in self._seen.values() if now - when <= SEEN_FOR)
            return [(("celery",), count)]

        def depth() -> Iterable[tuple[tuple[str, ...], float]]:
            return [] if self._queue_depth is None else [(("celery",), self._queue_depth)]

        def unacked() -> Iterable[tuple[tuple[str, ...], float]]:
            return [] if self._unacked is None else [(("celery",), self._unacked)]

        return [
            Gauge(
                "heygem_workers_seen",
                "Worker nodes (heygem worker) that answered the last status broadcast.",
                ("executor",),
                nodes,
            ),
            Gauge(
                "heygem_broker_queue_messages",
                "Jobs waiting in the broker's queue (not yet taken by a worker).",
                ("executor",),
                depth,
            ),
            Gauge(
                "heygem_broker_unacked_messages",
                "Jobs taken by workers and not yet acknowledged (running, or lost with a "
                "worker until the visibility timeout hands them on).",
                ("executor",),
                unacked,
            ),
            Gauge(
                "heygem_broker_up",
                "1 when the Redis broker answered the last check.",
                ("executor",),
                lambda: [(("celery",), float(self._broker_error is None))],
            ),
        ]

    # -- following the jobs in flight ----------------------------------------------------
    def _follow(self) -> None:
        reconciled = False
        while not self._stopping.is_set():
            self.last_tick = time.monotonic()
            try:
                if not reconciled or self._broker_error is not None:
                    # at start, and after an outage: a Redis that lost data lost jobs too
                    reconciled = False
                    self._reconcile()
                    reconciled = True
                self._tick()
            except Exception as exc:  # a Redis outage must not end the thread
                self._broker_down(exc)
                log.debug("follower tick failed", exc_info=True)
            self._wake.wait(TICK)
            self._wake.clear()

    def _tick(self) -> None:
        store = self._lifecycle.store
        active = {job.id: job for job in store.active()}
        with self._lock:
            for job_id in active:
                self._tracked.setdefault(job_id, _Tracked())
            gone = [job_id for job_id in self._tracked if job_id not in active]
        for job_id in gone:
            self._ended_here(job_id)
        if not active:
            return
        metas = self._metas(list(active))
        self._broker_error = None
        for job_id, job in active.items():
            tracked = self._tracked[job_id]
            try:
                self._apply(job, tracked, metas.get(job_id) or {"status": "PENDING"})
                if job.cancel_requested and job.state is JobState.RUNNING:
                    self._cancel(job, tracked)
            except HeygemError as exc:
                log.warning("job %s: %s", job_id, exc)

    def _reconcile(self) -> None:
        """Jobs the store has in flight that Redis knows nothing about (no state, no
        message: the API stopped between storing and publishing one, or Redis restarted
        without its data) are published again; a running one goes back to queued first."""
        now = time.time()
        candidates = [
            job
            for job in self._lifecycle.store.active()
            if now - job.created_at > RECONCILE_AGE  # not a submission still publishing
        ]
        if not candidates:
            return
        metas = self._metas([job.id for job in candidates])
        unknown = [job for job in candidates if job.id not in metas]
        if not unknown:
            return
        published = self._messages()
        for job in unknown:
            if job.id in published:
                continue
            if job.state is JobState.RUNNING:
                self._lifecycle.requeue_lost(
                    job.id, "the broker lost this job (Redis restarted without it); sent again"
                )
            log.warning("job %s was not on the broker: publishing it again", job.id)
            self.submit(self._lifecycle.store.get(job.id))

    def _messages(self) -> set[str]:
        """Ids of the jobs waiting in the queue or taken and not yet acknowledged."""
        client = self.app.backend.client  # the broker's Redis (one URL for both)
        ids = set()
        for raw in client.lrange(self.settings.celery_queue, 0, -1):
            ids.add(str(json.loads(raw).get("headers", {}).get("id")))
        for raw in client.hvals("unacked"):
            ids.add(str(json.loads(raw)[0].get("headers", {}).get("id")))
        return ids

    def _metas(self, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        backend = self.app.backend
        keys = [backend.get_key_for_task(job_id) for job_id in job_ids]
        values = backend.client.mget(keys)
        metas = {}
        for job_id, value in zip(job_ids, values, strict=True):
            if value is not None:
                metas[job_id] = backend.decode_result(value)
        return metas

    def _apply(self, job: Job, tracked: _Tracked, meta: dict[str, Any]) -> None:
        status, info = meta.get("status"), meta.get("result")
        if status == PROGRESS and isinstance(info, dict):
            self._progress(self._running(job, tracked, info), tracked, info)
        elif status == "RETRY" and job.state is JobState.RUNNING:
            self._requeue(job, tracked)
        elif status == "SUCCESS" and isinstance(info, dict):
            job = self._running(job, tracked, info)
            if isinstance(info.get("progress"), dict):  # its last state, perhaps unseen
                self._progress(job, tracked, info["progress"])
            self._outcome(job, info)
        elif status == "FAILURE":
            self._failure(self._running(job, tracked, {}), info)
        elif status == "REVOKED" and (job.state is JobState.RUNNING or job.cancel_requested):
            self._revoked(job, tracked)

    def _progress(self, job: Job, tracked: _Tracked, info: dict[str, Any]) -> None:
        phase, percent = str(info.get("phase")), int(info.get("percent") or 0)
        step = str(info["step"]) if info.get("step") else None
        done, total = _count(info.get("step_done")), _count(info.get("step_total"))
        progress = (phase, percent, step, done, total)
        if job.state is JobState.RUNNING and progress != tracked.progress:
            tracked.progress = progress
            self._lifecycle.progress(
                job.id,
                phase,
                percent,
                frames_done=info.get("frames_done"),
                frames_total=info.get("frames_total"),
                step=step,
                step_done=done,
                step_total=total,
            )

    def _running(self, job: Job, tracked: _Tracked, info: dict[str, Any]) -> Job:
        """The job as running on the worker ``info`` names (it may have started and even
        ended between two looks)."""
        attempt = int(info.get("attempt") or 0)
        worker = f"{info.get('worker', 'a worker')} (pid {info.get('pid', '?')})"
        if job.state is JobState.RUNNING and attempt > tracked.attempt > 0:
            self._requeue(job, tracked)  # a new attempt began before we saw the last end
            job = self._lifecycle.store.get(job.id)
        if job.state is JobState.QUEUED:
            started = self._lifecycle.started(job.id, worker)
            tracked.attempt, tracked.progress, tracked.was_running = attempt, None, True
            return started or self._lifecycle.store.get(job.id)
        if attempt > tracked.attempt:
            tracked.attempt = attempt
        tracked.was_running = True
        return job

    def _requeue(self, job: Job, tracked: _Tracked) -> None:
        if job.cancel_requested:
            # Killed at the end of the cancel grace (or died on its own meanwhile): Celery
            # sends the job again, but it was revoked, so no worker starts it. Requeued,
            # it would wait as "queued" forever: it ends here, cancelled.
            self._revoked(job, tracked)
            return
        lost = self._losses(job.id)
        if len(lost) >= job.attempts:  # the worker's main process recorded how it ended
            last = lost[-1]
            what = f"its worker process died ({last.get('what')})"
            worker = last.get("worker", job.worker or "a worker")
        else:
            what = "the worker vanished (no exit recorded: its machine or main process died)"
            worker = job.worker or "a worker"
        self._lifecycle.requeue_lost(
            job.id, f"attempt {job.attempts} on {worker} was lost: {what}; the job was queued again"
        )
        tracked.progress = None

    def _outcome(self, job: Job, payload: dict[str, Any]) -> None:
        outcome = payload.get("outcome")
        if outcome == "succeeded":
            result = dict(payload.get("result") or {}) | {"output": job.output_path}
            self._lifecycle.succeed(job, result)
        elif outcome == "timed_out":
            self._lifecycle.fail(job.id, self._lifecycle.timed_out(job, float(payload["limit"])))
        else:
            error = JobError.from_dict(dict(payload.get("error") or {}))
            self._lifecycle.fail(job.id, error, cancelled=bool(payload.get("cancelled")))

    def _failure(self, job: Job, info: Any) -> None:
        """Celery itself ended the task: the attempts ran out, or the hard time limit."""
        kind: str | None
        if isinstance(info, BaseException):  # the backend rebuilds the exception
            kind, text = type(info).__name__, str(info)
        elif isinstance(info, dict):
            kind, message = info.get("exc_type"), info.get("exc_message")
            text = " ".join(map(str, message)) if isinstance(message, list) else str(message)
        else:
            kind, text = None, str(info)
        error: HeygemError
        if kind == "WorkerLostError":
            lost = self._losses(job.id)
            last = lost[-1] if lost else {}
            error = WorkerCrashed(
                f"the worker process running this job died {max(len(lost), 1)} time(s), the "
                f"attempt limit ({ENV_PREFIX}MAX_ATTEMPTS={self.settings.max_attempts}); the "
                f"last one, on {last.get('worker', 'a worker')}: "
                f"{last.get('what', text)}",
                hint=last.get("fix") or "check the worker's log",
                cause=FailureCause(last.get("cause", FailureCause.EXITED.value)),
            )
        elif kind == "TimeLimitExceeded":
            limit = job.timeout or 0.0
            error = JobTimedOut(
                f"the job ran longer than its {limit:g} s time limit and did not stop within "
                f"the {self.settings.cancel_grace:g} s cancel grace, so its worker process was "
                "killed",
                hint="use shorter inputs, or ask the operator to raise "
                "HEYGEM_SERVICE_JOB_TIMEOUT_PER_AUDIO_SECOND",
                cause=FailureCause.TIMED_OUT,
            )
        else:
            error = WorkerCrashed(
                f"the worker failed the job outside the pipeline: {kind}: {text}",
                hint="this is a bug or a worker problem; the worker's log has the traceback",
                cause=FailureCause.INTERNAL,
            )
        self._lifecycle.fail(job.id, error)

    def _revoked(self, job: Job, tracked: _Tracked) -> None:
        grace = self.settings.cancel_grace
        if tracked.killed is not None:
            message = (
                f"cancelled; the worker did not stop within {grace:g} s, so its process was killed"
            )
        elif job.cancel_requested:
            message = "cancelled; its worker process ended before the job stopped"
        else:
            message = "cancelled: the task was revoked on the workers (not through this API)"
        self._lifecycle.fail(job.id, Cancelled(message), cancelled=job.cancel_requested)

    def _losses(self, job_id: str) -> list[dict[str, Any]]:
        try:
            raw = self.app.backend.client.lrange(LOST_KEY.format(job_id), 0, -1)
            return [json.loads(item) for item in raw]
        except Exception:  # noqa: BLE001 - the record is a nicety; the job still ends
            return []

    # -- cancelling ----------------------------------------------------------------------
    def _cancel(self, job: Job, tracked: _Tracked) -> None:
        """Revoke (no copy of the job starts again) and ask the pipeline to cancel; after
        the cancel grace, revoke with terminate: the process is killed."""
        now = time.monotonic()
        control = self.app.control
        if tracked.cancel_sent is None:
            tracked.cancel_sent = now
            control.revoke(job.id)
        if tracked.killed is None and now - tracked.cancel_sent > self.settings.cancel_grace:
            tracked.killed = now
            log.warning("job %s did not stop within the cancel grace: killing it", job.id)
            control.revoke(job.id, terminate=True, signal="SIGKILL")
        elif tracked.killed is None and now - tracked.cancel_repeated >= RESEND_CANCEL:
            tracked.cancel_repeated = now  # again until it ends: it may not have started yet
            control.broadcast(CANCEL_COMMAND, arguments={"job_id": job.id})
        elif tracked.killed is not None and now - tracked.killed > self.settings.cancel_grace:
            grace = self.settings.cancel_grace
            self._lifecycle.fail(
                job.id,
                Cancelled(
                    f"cancelled; its worker neither stopped it nor answered within {2 * grace:g} s "
                    "(the worker may be gone)"
                ),
                cancelled=True,
            )

    def _ended_here(self, job_id: str) -> None:
        """A job left the store's active set. Cancelled while queued: make sure no worker
        runs it (revoke; mark it revoked in the backend, which a starting task checks)."""
        with self._lock:
            tracked = self._tracked.pop(job_id, None)
        try:
            job = self._lifecycle.store.get(job_id)
        except HeygemError:
            return
        if job.state is not JobState.CANCELLED or tracked is None or tracked.cancel_sent:
            return  # ended by its worker, or cancelled while running (already revoked)
        try:
            backend = self.app.backend
            if backend.get_state(job_id) in ("PENDING", "RETRY"):
                backend.mark_as_revoked(job_id, "cancelled while queued")
            self.app.control.revoke(job_id)
            self.app.control.broadcast(CANCEL_COMMAND, arguments={"job_id": job_id})
        except Exception as exc:  # noqa: BLE001 - a worker that starts it finds it ended
            log.warning("job %s: could not revoke it on the broker (%s)", job_id, exc)

    # -- workers and the broker ----------------------------------------------------------
    def _watch(self) -> None:
        self._monitor_once()
        while not self._stopping.wait(MONITOR_INTERVAL):
            self._monitor_once()

    def _monitor_once(self) -> None:
        try:
            client = self.app.backend.client
            client.ping()
            self._queue_depth = int(client.llen(self.settings.celery_queue))
            self._unacked = int(client.hlen("unacked"))
            replies = self.app.control.broadcast(STATUS_COMMAND, reply=True, timeout=REPLY_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - down is a state, not a crash
            self._broker_down(exc)
            return
        self._broker_error = None
        now = time.monotonic()
        with self._lock:
            for reply in replies or []:
                for hostname, status in reply.items():
                    if isinstance(status, dict) and "processes" in status:
                        self._seen[hostname] = (now, status)
            for hostname in [h for h, (when, _) in self._seen.items() if now - when > SEEN_FOR]:
                del self._seen[hostname]

    def _broker_down(self, exc: BaseException) -> None:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if self._broker_error is None:
            log.error("the Redis broker at %s is unreachable: %s", shown_url(self.settings), text)
        self._broker_error = text[:200]


def _count(value: Any) -> int | None:
    """A count from a worker's progress meta (JSON), or None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
