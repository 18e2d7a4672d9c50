"""The inside of ``heygem worker``: a Celery worker whose pool processes hold warm pipelines.

- Each prefork pool process loads its pipeline once, in ``worker_process_init`` (before it
  takes any job), and runs one job at a time with the same code as the local executor's
  worker processes (``service.worker.run_job``: the pipeline's watchdogs, progress mapping,
  outcome). A pool process whose pipeline cannot be built stops the whole worker with
  the reason: it would otherwise be replaced and fail again forever.
- Progress goes to the result backend as task state ``PROGRESS``; the outcome is the
  task's result (a JSON payload, never an exception). The API reads both.
- Cancel: the API revokes the job (no copy of it will start anywhere) and sends
  ``heygem_cancel``, which signals the pool process running it (SIGUSR2); the handler sets
  the pipeline's own cancel event, so the job ends as cancelled within seconds and the
  process stays warm. Should it not stop, the API revokes with terminate (SIGKILL).
- Time limit: the pipeline is cancelled at the job's limit (derived from its audio by the
  API), and Celery's hard ``time_limit`` kills the process ``cancel_grace`` later.
- A pool process that dies mid-job is recorded (its exit decoded, as the local executor
  does) before Celery retries the job; the task counts its own starts, so a job whose
  whole worker keeps vanishing fails after ``max_attempts`` instead of looping.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from celery import Task
from celery.exceptions import Ignore, WorkerLostError
from celery.signals import task_postrun, worker_process_init, worker_ready, worker_shutdown
from celery.worker import state as worker_state
from celery.worker.control import control_command, inspect_command
from celery.worker.request import Request

from diagnostics.workers import PoolProcess, WorkerStatus, remove_status, write_status
from heygem.cgroups import usable_cpus
from heygem.config import GenerateOptions
from heygem.errors import FailureCause
from heygem.runner.exits import OomWatch, describe_exit
from heygem.runner.processes import StoppedClock
from service.celery_app import (
    ATTEMPTS_KEY,
    CANCEL_COMMAND,
    CANCEL_SIGNAL,
    PROGRESS,
    STATUS_COMMAND,
    TASK_NAME,
    make_celery,
    shown_url,
)
from service.jobs import Phase
from service.observe import job_id as current_job
from service.protocol import FromWorker, JobDone, JobFailed, Progress, RunJob
from service.settings import ServiceSettings
from service.shared import from_ref
from service.worker import (
    WarmPipelines,
    limit_arenas,
    limit_threads,
    release_memory,
    run_job,
    thread_budget,
    warm_up,
)

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("service.celery_worker")

LOST_KEY = "heygem:lost:{}"  # JSON list of how this job's pool processes died
STATUS_INTERVAL = 2.0  # seconds between status-file updates
MAX_WATCHES = 256
PROGRESS_INTERVAL = 0.25  # seconds between progress reports within one phase and step
# A busy pool process seen stopped (state T) this long is killed (checked this often), so
# its job is handed on within seconds, not at its hard time limit.
STOPPED_KILL_AFTER = 2.0
STOPPED_CHECK_INTERVAL = 0.5
STOPPED_AND_KILLED: dict[int, float] = {}  # pid -> seconds stopped (main process only)
_EXIT = re.compile(r"(signal|exitcode) (-?\d+)")  # billiard's human_status()


@dataclass(frozen=True)
class WorkerSetup:
    """What every pool process of one ``heygem worker`` needs (inherited at fork)."""

    settings: ServiceSettings
    options: GenerateOptions
    hostname: str
    device: str
    concurrency: int
    start_error_file: Path  # a pool process that cannot warm up writes why here
    findings: tuple[dict[str, Any], ...] = ()  # the start-up doctor's (Finding.to_dict())

    @property
    def cpus(self) -> int:
        return max(1, usable_cpus() // max(1, self.concurrency))


@dataclass
class PoolProcessState:
    """The one pool process's warm pipelines and the job it runs (set up after fork)."""

    setup: WorkerSetup
    pipelines: WarmPipelines | None = None
    job_id: str | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    retire: str | None = None

    def warm(self) -> None:
        limit_threads(self.setup.cpus)
        limit_arenas()
        started = time.perf_counter()
        pipelines = WarmPipelines(thread_budget(self.setup.cpus))
        pipelines.get(self.setup.options)
        warm_up()
        self.pipelines = pipelines
        log.info("pool process %d warm in %.1f s", os.getpid(), time.perf_counter() - started)

    def on_cancel_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.job_id is not None:
            log.info("job %s: cancel requested", self.job_id)
            self.cancel.set()


class _BackendReporter:
    """``run_job``'s progress messages as task state updates (best effort: a Redis that is
    restarting must not fail the job; the outcome is stored with retries by Celery)."""

    def __init__(self, task: Task, job_id: str, meta: dict[str, Any]) -> None:
        self._task, self._job_id, self._meta = task, job_id, meta
        self._lock = threading.Lock()
        self.last: dict[str, Any] = meta
        self._sent = 0.0

    def send(self, message: FromWorker) -> None:
        if not isinstance(message, Progress):
            return
        self.report(
            message.phase,
            message.percent,
            frames_done=message.frames_done,
            frames_total=message.frames_total,
            step=message.step,
            step_done=message.step_done,
            step_total=message.step_total,
        )

    def report(self, phase: str, percent: int, **details: str | int | None) -> None:
        """``details``: frames and the step (``Progress``'s fields)."""
        meta = self._meta | {"phase": phase, "percent": percent} | details
        same = (phase, meta.get("step")) == (self.last.get("phase"), self.last.get("step"))
        self.last = meta  # the outcome carries it: the API may not have seen this state
        now = time.monotonic()
        if same and now - self._sent < PROGRESS_INTERVAL:
            return  # each report is a Redis round trip; the API looks twice a second
        self._sent = now
        try:
            with self._lock:  # stage threads report too
                self._task.update_state(task_id=self._job_id, state=PROGRESS, meta=meta)
        except Exception as exc:  # noqa: BLE001 - progress is advisory; the job goes on
            log.warning("job %s: could not report progress (%s)", self._job_id, exc)


class GenerationRequest(Request):
    """Runs in the worker's main process: when a pool process dies with a job, record how
    (decoded as the local executor decodes it) before Celery retries or fails the job."""

    oom_watches: dict[str, OomWatch] = {}  # noqa: RUF012 - one main process, one dict

    def on_accepted(self, pid: int, time_accepted: float) -> None:
        watches = GenerationRequest.oom_watches
        watches[self.id] = OomWatch()
        while len(watches) > MAX_WATCHES:  # Celery's own on_success cannot be hooked
            watches.pop(next(iter(watches)))
        super().on_accepted(pid, time_accepted)

    def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False):  # type: ignore[no-untyped-def]
        exc = getattr(exc_info.exception, "exc", exc_info.exception)
        watch = GenerationRequest.oom_watches.pop(self.id, None)
        if isinstance(exc, WorkerLostError | SystemExit):
            self._record_loss(str(exc), watch)
        return super().on_failure(exc_info, send_failed_event, return_ok)

    def _record_loss(self, text: str, watch: OomWatch | None) -> None:
        match = _EXIT.search(text)
        code = None
        if match is not None:
            code = -int(match.group(2)) if match.group(1) == "signal" else int(match.group(2))
        exit_ = describe_exit(code, oom_killed=watch.killed_since() if watch else None)
        record = {
            "worker": self.hostname,
            "pid": self.worker_pid,
            "what": exit_.what if code is not None else text,
            "fix": exit_.fix,
            "cause": exit_.cause.value if code is not None else FailureCause.EXITED.value,
            "at": time.time(),
        }
        stopped = STOPPED_AND_KILLED.pop(self.worker_pid or 0, None)
        if stopped is not None:  # we killed it: say why, not just "SIGKILL"
            record |= {
                "what": f"the pool process was stopped (state T) for {stopped:.1f} s, so its "
                "worker killed it",
                "fix": "find who stopped it (a debugger, Ctrl-Z, a container pause); "
                "`heygem-diagnose ps` shows process states",
                "cause": FailureCause.PROCESS_STOPPED.value,
            }
        try:
            client = self.task.backend.client
            key = LOST_KEY.format(self.id)
            client.rpush(key, json.dumps(record))
            client.expire(key, int(self.task.app.conf.result_expires or 86400))
        except Exception as exc:  # noqa: BLE001 - Celery still retries the job
            log.warning("job %s: could not record how its process died (%s)", self.id, exc)
        log.error(
            "job %s: pool process %s died (%s); Celery retries it or gives up",
            self.id,
            self.worker_pid,
            record["what"],
        )


class GenerationTask(Task):
    Request = GenerationRequest
    acks_late = True
    reject_on_worker_lost = True  # should the retry below fail to send: requeue
    retry_on_worker_lost = True  # a dead pool process: send the job again, counted
    default_retry_delay = 0
    track_started = False  # our own PROGRESS state says more


def install(app: Celery, setup: WorkerSetup) -> None:
    """Register the generation task, the control commands and the process hooks."""
    settings = setup.settings
    process = PoolProcessState(setup)

    @worker_process_init.connect(weak=False)
    def _warm(**_: Any) -> None:
        from billiard.util import set_pdeathsig

        # A pool process must not outlive its worker: its job is redelivered elsewhere.
        set_pdeathsig(signal.SIGKILL)
        try:
            process.warm()
        except Exception as exc:
            log.exception("the pipeline cannot be built in this worker")
            setup.start_error_file.write_text(_describe(exc))
            os.kill(os.getppid(), signal.SIGTERM)  # stop the worker: nothing here can run
            raise

    @app.task(
        name=TASK_NAME,
        base=GenerationTask,
        bind=True,
        max_retries=settings.max_attempts - 1,
    )
    def generate(task: Task, job: dict[str, Any]) -> dict[str, Any]:
        job_id = str(task.request.id)
        backend = task.backend
        if backend.get_state(job_id) in ("SUCCESS", "FAILURE", "REVOKED"):
            raise Ignore()  # a copy of a job that already ended (or was cancelled)
        attempt = int(backend.client.incr(ATTEMPTS_KEY.format(job_id)))
        backend.client.expire(ATTEMPTS_KEY.format(job_id), int(settings.job_ttl))
        meta = {"attempt": attempt, "worker": setup.hostname, "pid": os.getpid()}
        if attempt > settings.max_attempts:
            return _lost_too_often(attempt - 1, settings) | meta
        token = current_job.set(job_id)
        started = time.perf_counter()
        try:
            outcome = _generate(task, process, job_id, job, meta)
        finally:
            current_job.reset(token)
        return outcome | meta | {"task_seconds": round(time.perf_counter() - started, 3)}

    @task_postrun.connect(weak=False)
    def _maybe_retire(**_: Any) -> None:
        # The outcome is stored; Celery counts a pool process lost after storing SUCCESS
        # as a success, and starts a fresh process.
        if process.retire:
            log.warning("pool process %d leaves: %s", os.getpid(), process.retire)
            logging.shutdown()
            os._exit(0)

    @control_command(args=[("job_id", str)], signature="<job_id>")
    def heygem_cancel(state: Any, job_id: str) -> dict[str, str]:
        """Cancel a running job through the pipeline's own cancel (its process stays)."""
        for request in list(worker_state.active_requests):
            if request.id == job_id and request.worker_pid:
                os.kill(request.worker_pid, getattr(signal, CANCEL_SIGNAL))
                return {"ok": f"cancelling {job_id} in pool process {request.worker_pid}"}
        return {"ok": f"{job_id} is not running here"}

    @inspect_command()
    def heygem_status(state: Any) -> dict[str, Any]:
        """This worker's pool processes, their jobs and its start-up findings."""
        return status(state.consumer).to_dict()

    assert heygem_cancel.__name__ == CANCEL_COMMAND and heygem_status.__name__ == STATUS_COMMAND
    started = time.time()

    def status(consumer: Any) -> WorkerStatus:
        pool = getattr(consumer, "pool", None)
        pids = list((pool.info if pool is not None else {}).get("processes", []))
        # billiard's set of processes still in worker_process_init (warming up)
        waiting = getattr(getattr(pool, "_pool", None), "_waiting_to_start", ())
        warming = {getattr(p, "pid", None) for p in waiting}
        now = time.time()
        running = {
            r.worker_pid: (r.id, r.time_start)
            for r in list(worker_state.active_requests)
            if r.worker_pid
        }
        processes = [
            PoolProcess(
                pid,
                running[pid][0] if pid in running else None,
                round(now - running[pid][1], 1) if pid in running and running[pid][1] else None,
                "busy" if pid in running else "starting" if pid in warming else "idle",
            )
            for pid in pids
        ]
        return WorkerStatus(
            pid=os.getpid(),
            hostname=setup.hostname,
            device=setup.device,
            concurrency=setup.concurrency,
            queue=settings.celery_queue,
            broker=shown_url(settings),
            started_at=started,
            updated_at=time.time(),
            processes=processes,
            findings=list(setup.findings),
        )

    clock = StoppedClock()

    def kill_stopped(consumer: Any) -> None:
        """A busy pool process stopped (SIGSTOP, a debugger) holds its job forever: after
        STOPPED_KILL_AFTER seconds kill it, so Celery hands the job to another attempt."""
        pool = getattr(consumer, "pool", None)
        busy = {r.worker_pid for r in list(worker_state.active_requests) if r.worker_pid}
        for pid in (pool.info if pool is not None else {}).get("processes", []):
            seconds = clock.stopped_for(pid) if pid in busy else 0.0
            if seconds >= STOPPED_KILL_AFTER:
                log.error("pool process %d has been stopped for %.1f s: killing it", pid, seconds)
                STOPPED_AND_KILLED[pid] = seconds
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    @worker_ready.connect(weak=False)
    def _watch_stopped(sender: Any, **_: Any) -> None:
        sender.timer.call_repeatedly(STOPPED_CHECK_INTERVAL, kill_stopped, (sender,))

    @worker_ready.connect(weak=False)
    def _publish_status(sender: Any, **_: Any) -> None:
        def write() -> None:
            try:
                write_status(status(sender))
            except OSError as exc:
                log.debug("cannot write the worker status file: %s", exc)

        write()
        sender.timer.call_repeatedly(STATUS_INTERVAL, write)

    @worker_shutdown.connect(weak=False)
    def _forget_status(**_: Any) -> None:
        remove_status(os.getpid())


def _generate(
    task: Task, process: PoolProcessState, job_id: str, job: dict[str, Any], meta: dict[str, Any]
) -> dict[str, Any]:
    setup = process.setup
    settings = setup.settings
    assert process.pipelines is not None, "the pool process has no warm pipeline"
    reporter = _BackendReporter(task, job_id, meta)
    reporter.report(Phase.STARTING.value, 0)
    run = RunJob(
        job_id,
        str(from_ref(job["audio"], settings)),
        str(from_ref(job["video"], settings)),
        str(from_ref(job["output"], settings)),
        job.get("options") or {},
    )
    Path(run.output).parent.mkdir(parents=True, exist_ok=True)
    limit = float(job["timeout"]) if job.get("timeout") else None
    timed_out = threading.Event()
    process.cancel = threading.Event()
    process.job_id = job_id
    previous = signal.signal(getattr(signal, CANCEL_SIGNAL), process.on_cancel_signal)
    timer = None
    if limit is not None:

        def expire() -> None:
            timed_out.set()
            process.cancel.set()

        timer = threading.Timer(limit, expire)
        timer.daemon = True
        timer.start()
    try:
        outcome, retire = run_job(run, process.pipelines, setup.options, reporter, process.cancel)
    finally:
        if timer is not None:
            timer.cancel()
        process.job_id = None
        signal.signal(getattr(signal, CANCEL_SIGNAL), previous)
        release_memory()
    process.retire = retire
    last = {"progress": reporter.last}
    if isinstance(outcome, JobDone):
        return {"outcome": "succeeded", "result": outcome.result} | last
    assert isinstance(outcome, JobFailed)
    error = _in_api_terms(outcome.error, job, settings)
    if outcome.cancelled and timed_out.is_set():
        return {"outcome": "timed_out", "limit": limit, "error": error} | last
    return {"outcome": "failed", "error": error, "cancelled": outcome.cancelled} | last


def _in_api_terms(
    error: dict[str, Any], job: dict[str, Any], settings: ServiceSettings
) -> dict[str, Any]:
    """This machine's paths in an error, as the API's (its redaction knows those)."""
    mounts = {str(settings.data_dir): job.get("api_data_dir")}
    if settings.media_root is not None:
        mounts[str(settings.media_root)] = job.get("api_media_root")
    fixed = dict(error)
    for key in ("message", "hint"):
        text = fixed.get(key)
        if isinstance(text, str):
            for mine, theirs in mounts.items():
                if theirs and mine != theirs:
                    text = text.replace(mine, theirs)
            fixed[key] = text
    return fixed


def _lost_too_often(starts: int, settings: ServiceSettings) -> dict[str, Any]:
    return {
        "outcome": "failed",
        "cancelled": False,
        "error": {
            "type": "WorkerLost",
            "message": f"the job was started {starts} times and each time its worker vanished "
            "before it finished (the worker's machine, container or main process died; "
            f"attempt limit {settings.max_attempts})",
            "hint": "check the workers' logs and `heygem-diagnose ps` on their machines; "
            "submit the job again once they are stable",
            "cause": FailureCause.WORKER_LOST.value,
            "stage": None,
        },
    }


def _describe(exc: BaseException) -> str:
    hint = getattr(exc, "hint", None)
    return f"{type(exc).__name__}: {exc}" + (f" ({hint})" if hint else "")


def default_hostname() -> str:
    return f"heygem-{os.getpid()}@{socket.gethostname()}"


def build_app(setup: WorkerSetup) -> Celery:
    app = make_celery(setup.settings)
    install(app, setup)
    return app
