"""The worker process: one warm pipeline, jobs one at a time, heartbeats, cancellation.

Started with the ``spawn`` method (no inherited locks or CUDA state). Heavy imports happen
here, after the thread limits are in the environment, so every library sees them. The
worker leaves (and the supervisor starts a fresh one) whenever a job left stage threads
behind: a stage stuck in native code cannot be stopped, only its process can.

Memory: the frames a job streams are allocated by its stage threads in glibc's per-thread
arenas and stay mapped after the job unless they are handed back, so the worker limits
the number of arenas and trims the heap after every job (measured in the README); the
supervisor recycles a worker that still grows past its limit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import queue
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from heygem.config import GenerateOptions
from heygem.errors import Cancelled, FailureCause, HeygemError, PipelineStalled
from heygem.progress import StepProgress
from service.jobs import Phase
from service.observe import ContextFilter
from service.observe import job_id as current_job
from service.options import job_options
from service.protocol import (
    CancelJob,
    FromWorker,
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

if TYPE_CHECKING:
    from heygem.pipeline import Pipeline
    from heygem.resources import ThreadBudget

log = logging.getLogger("service.worker")

# Progress a client sees: preparation is a small slice, streaming the rest (100 = done).
PREPARING_PERCENT = 5
STREAM_START, STREAM_SPAN = 10, 89
_WARM_PIPELINES = 2  # distinct option sets kept loaded per worker (each holds a model)
_M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)
_ARENAS = 2


@dataclass(frozen=True)
class WorkerConfig:
    index: int
    options: GenerateOptions
    heartbeat_interval: float
    cpus: int  # this worker's share of the machine
    log_level: str = "info"


class Reporter(Protocol):
    """Where a running job's messages go: the service's pipe here, Celery's result backend
    in ``service.celery_worker``."""

    def send(self, message: FromWorker) -> None: ...


class _Sender:
    """conn.send from several threads (heartbeat, progress, main) without interleaving."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self.broken = threading.Event()

    def send(self, message: FromWorker) -> None:
        if self.broken.is_set():
            return
        try:
            with self._lock:
                self._conn.send(message)
        except (OSError, EOFError, ValueError):
            self.broken.set()  # the service is gone; the reader sees EOF and stops us


class _Control:
    """The running job's cancel event, shared by the main and the command-reader thread.

    A cancel can arrive before the job it names has started (it was still queued here);
    it is remembered, so the job is cancelled the moment it starts.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._job: tuple[str, threading.Event] | None = None
        self._cancelled: set[str] = set()

    def begin(self, job_id: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._job = (job_id, event)
            if job_id in self._cancelled:
                event.set()
            self._cancelled.discard(job_id)
        return event

    def end(self) -> None:
        with self._lock:
            self._job = None

    def cancel(self, job_id: str | None = None) -> None:
        """Cancel ``job_id`` (now or when it starts); None cancels whatever runs."""
        with self._lock:
            if self._job is not None and job_id in (None, self._job[0]):
                self._job[1].set()
            elif job_id is not None:
                self._cancelled.add(job_id)


def worker_main(config: WorkerConfig, conn: Connection) -> None:
    """Entry point of a worker process."""
    # Ctrl-C in a terminal signals the whole group; the service stops workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_threads(config.cpus)
    limit_arenas()
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter(
            f"%(levelname)s worker-{config.index}[%(process)d] %(name)s [job=%(job_id)s]: "
            "%(message)s"
        )
    )
    handler.addFilter(ContextFilter())
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler])
    sender = _Sender(conn)
    stop = threading.Event()
    threading.Thread(
        target=_heartbeats,
        args=(sender, config.heartbeat_interval, stop),
        name="worker-heartbeat",
        daemon=True,
    ).start()
    started = time.perf_counter()
    pipelines = WarmPipelines(thread_budget(config.cpus))
    try:
        runner, _ = pipelines.get(config.options).load()
    except Exception as exc:
        sender.send(
            StartFailed(
                exc.to_dict()
                if isinstance(exc, HeygemError)
                else {
                    "type": type(exc).__name__,
                    "message": str(exc) or repr(exc),
                    "hint": "the worker log has the traceback",
                }
            )
        )
        log.exception("cannot build the pipeline")
        raise SystemExit(3) from exc
    warm_up()
    sender.send(
        Ready(os.getpid(), round(time.perf_counter() - started, 3), tuple(runner.info.used))
    )
    log.info(
        "warm in %.1f s (providers %s)", time.perf_counter() - started, ",".join(runner.info.used)
    )

    jobs: queue.Queue[RunJob | None] = queue.Queue()
    control = _Control()
    threading.Thread(
        target=_read_commands, args=(conn, jobs, control, stop), name="worker-commands", daemon=True
    ).start()
    while (task := jobs.get()) is not None and not stop.is_set():
        cancel = control.begin(task.job_id)
        token = current_job.set(task.job_id)  # every log line of this job names it
        outcome, retire = run_job(task, pipelines, config.options, sender, cancel)
        current_job.reset(token)
        control.end()
        if retire:  # said first, so the supervisor sends no new job to a leaving worker
            sender.send(Retiring(retire))
        sender.send(outcome)
        release_memory()
        if retire:
            log.warning("leaving after job %s: %s", task.job_id, retire)
            conn.close()
            logging.shutdown()
            # Not a normal exit: interpreter shutdown can block on what the stuck stage
            # holds, and this process's state is suspect anyway.
            os._exit(0)
    stop.set()
    conn.close()


def run_job(
    task: RunJob,
    pipelines: WarmPipelines,
    base: GenerateOptions,
    sender: Reporter,
    cancel: threading.Event,
) -> tuple[JobDone | JobFailed, str | None]:
    """Run one job: how it ended, and why this worker must leave (if it must)."""
    jlog = logging.LoggerAdapter(log, {"job_id": task.job_id})
    sender.send(Progress(task.job_id, Phase.PREPARING.value, PREPARING_PERCENT))
    last = [-1]

    def progress(done: int, total: int) -> None:
        percent = STREAM_START + (STREAM_SPAN * done) // max(total, 1)
        if percent != last[0]:  # one message per percent, not per frame
            last[0] = percent
            sender.send(
                Progress(
                    task.job_id,
                    Phase.GENERATING.value,
                    percent,
                    done,
                    total,
                    step="generate",
                    step_done=done,
                    step_total=total,
                )
            )

    stalled = False
    outcome: JobDone | JobFailed
    try:
        pipeline = pipelines.get(job_options(base, task.options))
        result = pipeline.generate(
            Path(task.audio),
            Path(task.video),
            Path(task.output),
            progress=progress,
            cancel=cancel,
            job_id=task.job_id,
            on_step=StepReports(task.job_id, sender),
        )
        outcome = JobDone(task.job_id, result.to_dict() | {"output": task.output})
        jlog.info(
            "job %s done: %d frames in %.2f s",
            task.job_id,
            result.frames,
            result.timings.get("total", 0.0),
        )
    except Cancelled as exc:
        outcome = JobFailed(task.job_id, exc.to_dict(), cancelled=True)
        jlog.info("job %s cancelled", task.job_id)
    except HeygemError as exc:
        stalled = isinstance(exc, PipelineStalled)
        outcome = JobFailed(task.job_id, exc.to_dict(), cancelled=cancel.is_set())
        jlog.warning("job %s failed: %s", task.job_id, exc)
    except Exception as exc:  # noqa: BLE001 - a bug must fail the job, not the worker
        jlog.exception("job %s raised", task.job_id)
        outcome = JobFailed(
            task.job_id,
            {
                "type": "InternalError",
                "message": f"{type(exc).__name__}: {exc}",
                "hint": "this is a bug; the worker log has the traceback",
                "cause": FailureCause.INTERNAL.value,
                "stage": None,
            },
        )
    stray = [t.name for t in threading.enumerate() if t.name.startswith("heygem-") and t.is_alive()]
    if stray:
        return outcome, f"stage threads still running after the job: {', '.join(stray)}"
    if stalled:
        return outcome, "the pipeline stalled; a fresh process is the only sure reset"
    return outcome, None


class StepReports:
    """The pipeline's step reports (``heygem.progress``) as ``Progress`` messages while the
    job prepares.

    Steps before streaming run concurrently (the model load, the audio features, the
    template analysis), so the step shown is the one started last that is still running
    (the one that just finished when none is). A message goes out only when the shown step
    or its percent changes: about 100 for a 10 000-frame analysis, not 10 000, whatever
    the other steps report meanwhile. Frames written (``generate``) are ``run_job``'s own
    frame progress.
    """

    def __init__(self, job_id: str, sender: Reporter) -> None:
        self._job_id, self._sender = job_id, sender
        self._lock = threading.Lock()  # steps report from the pipeline's helper threads
        self._running: dict[str, StepProgress] = {}  # in the order the steps started
        self._shown: tuple[str, int, bool] | None = None

    def __call__(self, report: StepProgress) -> None:
        if report.step == "generate":
            return
        with self._lock:
            if report.finished:
                self._running.pop(report.step, None)
            else:
                self._running[report.step] = report  # a known step keeps its place
            shown = next(reversed(self._running.values()), report)
            key = (shown.step, step_percent(shown), shown.finished)
            if key == self._shown:
                return
            self._shown = key
            self._sender.send(
                Progress(
                    self._job_id,
                    Phase.PREPARING.value,
                    PREPARING_PERCENT,
                    step=shown.step,
                    step_done=shown.done,
                    step_total=shown.total,
                )
            )


def step_percent(report: StepProgress) -> int:
    """0-100 of a step (a step without countable units: 0 until it finishes)."""
    if not report.total:
        return 100 if report.finished else 0
    return max(0, min(100, 100 * report.done // report.total))


class WarmPipelines:
    """Loaded pipelines by options: a job with the warm options reuses the warm one."""

    def __init__(self, budget: ThreadBudget) -> None:
        self._budget = budget
        self._cache: OrderedDict[GenerateOptions, Pipeline] = OrderedDict()

    def get(self, options: GenerateOptions) -> Pipeline:
        from heygem.pipeline import Pipeline

        if options in self._cache:
            self._cache.move_to_end(options)
            return self._cache[options]
        pipeline = Pipeline(options, self._budget)
        pipeline.load()
        self._cache[options] = pipeline
        while len(self._cache) > _WARM_PIPELINES:
            self._cache.popitem(last=False)
        return pipeline


def _read_commands(
    conn: Connection, jobs: queue.Queue[RunJob | None], control: _Control, stop: threading.Event
) -> None:
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            message = Stop()  # the service died: stop rather than linger as an orphan
        if isinstance(message, RunJob):
            jobs.put(message)
        elif isinstance(message, CancelJob):
            control.cancel(message.job_id)
        elif isinstance(message, Stop):
            stop.set()
            control.cancel()
            jobs.put(None)
            return


def _heartbeats(sender: _Sender, interval: float, stop: threading.Event) -> None:
    pid = os.getpid()
    while not stop.wait(interval):
        sender.send(Heartbeat(pid))


def limit_threads(cpus: int) -> None:
    # Before torch/numpy load: OpenMP/MKL/BLAS read these once, at import.
    for var in (
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "NUMEXPR_NUM_THREADS",
    ):
        os.environ.setdefault(var, str(max(1, cpus)))


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def limit_arenas() -> None:
    """Few malloc arenas: every stage thread of every job would otherwise get its own,
    and memory freed in an arena is rarely returned (glibc only; elsewhere a no-op)."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(_M_ARENA_MAX, _ARENAS)


def release_memory() -> None:
    """After a job: collect cycles and hand the free heap back to the system (glibc)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def thread_budget(cpus: int) -> ThreadBudget:
    from heygem.resources import ThreadBudget

    return ThreadBudget.for_machine(cpus)


def warm_up() -> None:
    """JIT-compile the audio feature code now, not during the first job."""
    import numpy as np

    from heygem.audio import features

    try:
        wav = np.zeros(features.SAMPLE_RATE, np.float32)
        features.melspectrogram(wav)
        features.voice_activity(wav, 25, 25.0)
    except Exception:
        log.warning("audio warm-up failed; the first job will be slower", exc_info=True)
