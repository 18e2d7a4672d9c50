"""Turn checked inputs into a queued job: content probes, limits, the bounded queue.

Whatever fails, the job directory is removed and the rejection is counted; only a job
that passed every check reaches the store.
"""

from __future__ import annotations

import logging
import math
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from heygem.config import FaultInjection
from heygem.errors import InvalidOption
from service.deps import Services
from service.errors import QueueFull
from service.jobs import Job, JobState, NewJob
from service.media import check_audio, check_video

log = logging.getLogger(__name__)

# Per-job overrides a client may send; everything else is the server's warm pipeline.
JOB_OPTIONS = ("backend", "batch_size", "fps", "preset", "crf", "stall_timeout", "fault")


def new_id() -> str:
    return uuid.uuid4().hex


@contextmanager
def job_directory(services: Services, job_id: str) -> Iterator[Path]:
    """A fresh directory for one submission; removed again if admission fails."""
    path = services.settings.data_dir / "jobs" / job_id
    path.mkdir(parents=True)
    try:
        yield path
    except BaseException as exc:
        shutil.rmtree(path, ignore_errors=True)
        services.metrics.rejected_submission(type(exc).__name__)
        raise


def retry_after(services: Services, queued: int) -> int:
    """Seconds until a queue slot is likely free (a guess from recent job durations)."""
    mean = services.metrics.mean_job_seconds()
    if mean is None:
        return services.settings.retry_after_seconds
    workers = max(1, services.settings.workers)
    return max(1, min(3600, math.ceil(mean * max(1, queued) / workers)))


def check_queue(services: Services) -> None:
    """Cheap early refusal, before uploads are probed (create() re-checks atomically)."""
    queued = services.store.counts()[JobState.QUEUED]
    if queued >= services.settings.max_queue:
        wait = retry_after(services, queued)
        services.metrics.rejected_submission("QueueFull")
        raise QueueFull(
            f"the queue is full ({queued} jobs waiting)",
            retry_after=wait,
            hint=f"retry after {wait} s",
        )


def job_overrides(services: Services, given: dict[str, Any]) -> dict[str, Any]:
    """The client's option overrides, validated against the warm options."""
    overrides = {k: v for k, v in given.items() if k in JOB_OPTIONS and v is not None}
    if "fault" in overrides:
        if not services.settings.allow_fault_injection:
            raise InvalidOption(
                "fault injection is disabled on this server", hint="drop the 'fault' option"
            )
        fault = FaultInjection.from_env(str(overrides["fault"]))
        services.settings.base_options().with_changes(
            **{k: v for k, v in overrides.items() if k != "fault"}, fault=fault
        )
    elif overrides:
        services.settings.base_options().with_changes(**overrides)
    return overrides


def admit(
    services: Services,
    job_id: str,
    job_dir: Path,
    audio: Path,
    video: Path,
    *,
    options: dict[str, Any],
    source: str = "v1",
    code: str | None = None,
    warnings: tuple[str, ...] = (),
) -> Job:
    settings = services.settings
    check_audio(audio, settings)
    check_video(video, settings)
    job = NewJob(
        id=job_id,
        audio_path=str(audio),
        video_path=str(video),
        output_path=str(job_dir / "result.mp4"),
        options=options,
        source=source,
        code=code,
        warnings=warnings,
    )
    queued = services.store.counts()[JobState.QUEUED]
    created = services.store.create(
        job, max_queued=settings.max_queue, retry_after=retry_after(services, queued)
    )
    services.metrics.submitted(source)
    services.pool.wake()
    log.info("job %s queued (%s)", job_id, source, extra={"job_id": job_id})
    return created
