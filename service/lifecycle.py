"""Every transition a job makes, in one place, whichever executor runs it.

The API side submits, cancels and deletes; an executor (today the local worker pool, later
e.g. Celery) claims jobs, reports progress and ends them as succeeded, failed or cancelled.
Both go through ``JobLifecycle``, so the rules live here once: a cancelled job says why,
a failure records the phase it happened in (read from the store at that moment), errors
reach clients without server paths, metrics are counted, and on shutdown running jobs
are drained, then cancelled with that reason.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from heygem.errors import Cancelled, FailureCause, HeygemError
from service.errors import JobTimedOut, ServiceRestarted
from service.jobs import Job, JobError, JobState
from service.metrics import Gauge, Metrics
from service.redact import Redactor
from service.store import JobStore

log = logging.getLogger(__name__)

POLL = 0.1  # seconds between looks at the store while draining


class Executor(Protocol):
    """What runs jobs: the local worker pool, or a remote one. It drives the lifecycle."""

    def start(self) -> None: ...

    def submit(self, job: Job) -> None:
        """A job was just queued: take it (raise ServiceUnavailable when that is impossible;
        admission then withdraws the job and answers 503)."""

    def wake(self) -> None:
        """A job was queued or a cancel requested: look at the store now."""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the workers (running jobs must have been ended by the lifecycle first)."""

    def workers(self) -> list[WorkerInfo]: ...

    def healthy(self) -> bool:
        """The executor's own supervision is alive (not: a worker is free)."""

    def checks(self) -> dict[str, tuple[bool, str]]:
        """Executor-specific readiness checks for /readyz: name -> (ok, detail)."""

    def gauges(self) -> list[Gauge]:
        """Executor-specific gauges for /metrics, read at scrape time."""


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as /readyz (admin view) and /metrics see it."""

    name: str
    state: str  # starting, idle, busy, down
    pid: int | None = None
    job_id: str | None = None
    seconds_since_heartbeat: float | None = None
    rss_bytes: int | None = None
    jobs_done: int = 0
    last_start_error: str | None = None

    @property
    def warm(self) -> bool:
        return self.state in ("idle", "busy")


@dataclass(frozen=True)
class CancelReason:
    """Why a job is cancelled: shown to its client as the job's error."""

    message: str
    hint: str | None = None


BY_REQUEST = CancelReason("cancelled by request")


class JobLifecycle:
    def __init__(
        self,
        store: JobStore,
        metrics: Metrics,
        redactor: Redactor,
        *,
        publish: Callable[[Job], str | None] = lambda job: None,
        unpublish: Callable[[Job], None] = lambda job: None,
        data_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self._redactor = redactor
        self._publish = publish
        self._unpublish = unpublish
        self._data_dir = data_dir
        self.draining = threading.Event()

    # -- start-up ------------------------------------------------------------------------
    def recover(self, policy: str, max_attempts: int) -> dict[str, int]:
        """Jobs a previous process left running: back to the queue, or failed."""
        requeued = failed = 0
        for job in self.store.recover():
            if policy == "retry" and job.attempts < max_attempts and not job.cancel_requested:
                self.store.requeue_after_restart(job.id)
                requeued += 1
                continue
            error = ServiceRestarted(
                f"the service stopped while this job was running (attempt {job.attempts})",
                hint="submit the job again",
                cause=FailureCause.SERVICE_RESTARTED,
            )
            self.fail(job.id, error, cancelled=job.cancel_requested)
            failed += 1
        return {"requeued": requeued, "failed": failed}

    # -- the API side --------------------------------------------------------------------
    def cancel(self, job_id: str, client: str | None, reason: CancelReason = BY_REQUEST) -> Job:
        """Cancel a queued job at once; flag a running one (its executor stops it)."""
        error = Cancelled(reason.message, hint=reason.hint)
        job = self.store.request_cancel(job_id, JobError.of(error), client)
        if job.state is JobState.CANCELLED:
            self.metrics.job_ended("cancelled", FailureCause.CANCELLED.value)
            self._log_end(job, "cancelled", error.message)
        return job

    def delete(self, job_id: str, client: str | None) -> Job:
        """Remove a finished job and its files."""
        job = self.store.delete_finished(job_id, client)
        self.remove_files(job)
        log.info("job %s deleted", job.id, extra={"job_id": job.id})
        return job

    def remove_files(self, job: Job) -> None:
        """The job's own directory (its uploads of this request, its result) and the copy
        of its result published to the media root."""
        self._unpublish(job)
        directory = Path(job.output_path).parent
        if self._data_dir is not None and directory.parent == self._data_dir / "jobs":
            shutil.rmtree(directory, ignore_errors=True)

    # -- the executor side ---------------------------------------------------------------
    def claim(self, worker: str) -> Job | None:
        """The next queued job for ``worker``, or None (also while draining)."""
        if self.draining.is_set():
            return None
        job = self.store.claim_next(worker)
        if job is not None:
            log.info("job %s started on worker %s", job.id, worker, extra={"job_id": job.id})
        return job

    def requeue(self, job_id: str) -> None:
        self.store.requeue(job_id)

    def started(self, job_id: str, worker: str) -> Job | None:
        """A remote executor's worker started this queued job (None: it was not queued)."""
        job = self.store.start(job_id, worker)
        if job is not None:
            log.info("job %s started on worker %s", job_id, worker, extra={"job_id": job_id})
        return job

    def requeue_lost(self, job_id: str, warning: str) -> None:
        """A remote worker lost this running job; the broker delivers it again."""
        if self.store.requeue_lost(job_id, warning):
            log.warning("job %s back in the queue: %s", job_id, warning, extra={"job_id": job_id})

    def progress(
        self,
        job_id: str,
        phase: str,
        percent: int,
        *,
        frames_done: int | None = None,
        frames_total: int | None = None,
        step: str | None = None,
        step_done: int | None = None,
        step_total: int | None = None,
    ) -> None:
        """Where a running job is (executors throttle: about one call per percent of a
        step or of the frames, and one per step change)."""
        self.store.set_progress(
            job_id,
            phase,
            percent,
            frames_done=frames_done,
            frames_total=frames_total,
            step=step,
            step_done=step_done,
            step_total=step_total,
        )

    def cancel_requested(self, job_id: str) -> bool:
        try:
            return self.store.get(job_id).cancel_requested
        except HeygemError:
            return True  # deleted under us: stop it

    def timed_out(self, job: Job, limit: float) -> JobTimedOut:
        return JobTimedOut(
            f"the job ran longer than its {limit:g} s time limit",
            hint="use shorter inputs, or ask the operator to raise "
            "HEYGEM_SERVICE_JOB_TIMEOUT_PER_AUDIO_SECOND",
            cause=FailureCause.TIMED_OUT,
        )

    def succeed(self, job: Job, result: dict[str, Any]) -> None:
        published = None
        try:
            published = self._publish(job)
        except (OSError, HeygemError) as exc:
            log.warning("job %s: could not publish its result: %s", job.id, exc)
            result = result | {
                "warnings": [*result.get("warnings", []), "the result could not be published"]
            }
        result = result | {
            "warnings": [self._redact(job, str(w)) for w in result.get("warnings", [])]
        }
        if not self.store.succeed(job.id, result, published):
            log.info("job %s: success reported after it had ended; ignored", job.id)
            return
        queued = (job.started_at - job.created_at) if job.started_at else None
        self.metrics.job_succeeded(result, queued)
        self._log_end(job, "succeeded", "")

    def fail(
        self, job_id: str, error: HeygemError | JobError, *, cancelled: bool = False
    ) -> Job | None:
        """End a job unsuccessfully; a cancelled job's error says why it was cancelled."""
        try:
            job = self.store.get(job_id)
        except HeygemError:
            return None
        raw = error if isinstance(error, JobError) else JobError.of(error)
        if cancelled and job.cancel_reason:
            raw = JobError(
                type="Cancelled",
                message=job.cancel_reason,
                hint=raw.hint if raw.type == "Cancelled" else None,
                cause=FailureCause.CANCELLED.value,
                stage=raw.stage,
            )
        shown = JobError(
            **{
                **raw.to_dict(),
                "message": self._redact(job, raw.message),
                "hint": self._redact(job, raw.hint) if raw.hint else None,
            }
        )
        ended = self.store.finish_unsuccessfully(job_id, shown, cancelled=cancelled)
        if ended is None:
            return None
        state = "cancelled" if cancelled else "failed"
        self.metrics.job_ended(state, raw.cause, raw.type)
        assert ended.error is not None
        self._log_end(ended, state, f"{raw.type} in phase {ended.error.phase}: {raw.message}")
        return ended

    # -- shutdown ------------------------------------------------------------------------
    def drain(self, executor: Executor, grace: float, cancel_grace: float) -> None:
        """Stop admitting and claiming; let running jobs finish for ``grace`` seconds, then
        cancel them (the reason is recorded); whatever still runs after ``cancel_grace``
        is ended here. Submissions meanwhile get 503 with Retry-After."""
        self.draining.set()
        running = self.store.counts()[JobState.RUNNING]
        log.warning("shutting down: %d running jobs get %g s to finish", running, grace)
        self._wait_idle(grace)
        reason = CancelReason(
            f"cancelled: the service shut down and the job did not finish within the "
            f"{grace:g} s shutdown grace period",
            hint="submit it again once the service is back",
        )
        self._cancel_running(executor, reason, cancel_grace)

    def abandon_running(self, executor: Executor, cancel_grace: float) -> None:
        """The last word at shutdown: no job stays 'running' in the store."""
        self.draining.set()
        reason = CancelReason(
            "cancelled: the service stopped while the job was running",
            hint="submit it again once the service is back",
        )
        self._cancel_running(executor, reason, cancel_grace)

    def _cancel_running(self, executor: Executor, reason: CancelReason, grace: float) -> None:
        jobs = self.store.running()
        if not jobs:
            return
        for job in jobs:
            self.cancel(job.id, None, reason)
        executor.wake()
        self._wait_idle(grace)
        for job in self.store.running():
            self.fail(job.id, Cancelled(reason.message, hint=reason.hint), cancelled=True)

    def _wait_idle(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while self.store.counts()[JobState.RUNNING] and time.monotonic() < deadline:
            time.sleep(POLL)

    # -- helpers -------------------------------------------------------------------------
    def _redact(self, job: Job, text: str) -> str:
        names = {
            job.audio_path: job.input_names.get("audio", "the audio"),
            job.video_path: job.input_names.get("video", "the template video"),
            job.output_path: "the result",
            str(Path(job.output_path).parent): "the job directory",
        }
        return self._redactor.text(text, names)

    def _log_end(self, job: Job, state: str, detail: str) -> None:
        log.info(
            "job %s %s%s",
            job.id,
            state,
            f": {detail}" if detail else "",
            extra={"job_id": job.id, "client": job.client},
        )
