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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.requests import Request

from service.deps import Caller, Services, admitting
from service.errors import CLIENT_NAMES_KEY, PathNotAllowed, QueueFull, ServiceUnavailable
from service.jobs import Job, JobState, NewJob
from service.media import check_audio, check_video, confined
from service.options import JobOptions, JobOptionsModel

log = logging.getLogger(__name__)


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass
class Submission:
    """One submission being admitted: its directory and the names its client used."""

    services: Services
    request: Request
    caller: Caller
    job_id: str
    directory: Path
    names: dict[str, str] = field(default_factory=dict)  # "audio"/"video" -> client's name

    def input(self, kind: str, path: Path, client_name: str) -> Path:
        """Record what the client calls ``path`` (error messages use that name only)."""
        self.names[kind] = client_name
        known: dict[str, str] = self.request.scope.setdefault(CLIENT_NAMES_KEY, {})
        known[str(path)] = client_name
        known[str(self.directory)] = "the job directory"
        return path

    def media_path(self, kind: str, reference: str, what: str) -> Path:
        """A media-root reference, confined to the root; another client's published compat
        result (``<code>-r.mp4`` in the shared root) is not theirs to use."""
        root = self.services.settings.media_root
        resolved = confined(root, reference, what)
        owner = (
            self.services.store.published_owner(f"/{resolved.name}")
            if root is not None and resolved.parent == root.resolve()
            else None
        )
        if owner is not None and self.caller.scope is not None and owner != self.caller.name:
            raise PathNotAllowed(
                f"{what}: {reference[:200]!r} is another client's result",
                hint="use your own files or results",
            )
        return self.input(kind, resolved, reference)


@contextmanager
def submission(services: Services, request: Request, caller: Caller) -> Iterator[Submission]:
    """A fresh directory for one submission; removed again if admission fails."""
    admitting(services)
    check_queue(services, caller)
    job_id = new_id()
    path = services.settings.data_dir / "jobs" / job_id
    path.mkdir(parents=True)
    try:
        yield Submission(services, request, caller, job_id, path)
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


def check_queue(services: Services, caller: Caller) -> None:
    """Cheap early refusal, before uploads are probed (create() re-checks atomically)."""
    settings = services.settings
    queued = services.store.counts()[JobState.QUEUED]
    mine = services.store.queued_by_client().get(caller.name, 0)
    if queued >= settings.max_queue or mine >= settings.queued_cap_per_client:
        wait = retry_after(services, queued)
        services.metrics.rejected_submission("QueueFull")
        what = (
            f"the queue is full ({queued} jobs waiting)"
            if queued >= settings.max_queue
            else f"you have {mine} jobs waiting, the most one client may have queued"
        )
        raise QueueFull(what, retry_after=wait, hint=f"retry after {wait} s")


def job_overrides(services: Services, options: JobOptionsModel) -> dict[str, Any]:
    """The client's overrides, checked against the warm options (InvalidOption -> 400)."""
    options.apply(
        services.settings.base_options(), allow_fault=services.settings.allow_fault_injection
    )
    return options.given()


def no_overrides() -> JobOptionsModel:
    return JobOptions()


def admit(
    sub: Submission,
    audio: Path,
    video: Path,
    *,
    options: dict[str, Any],
    source: str = "v1",
    code: str | None = None,
    warnings: tuple[str, ...] = (),
) -> Job:
    services, settings = sub.services, sub.services.settings
    audio_info = check_audio(audio, settings)
    check_video(video, settings)
    duration = audio_info.duration or settings.options.max_audio_seconds
    job = NewJob(
        id=sub.job_id,
        audio_path=str(audio),
        video_path=str(video),
        output_path=str(sub.directory / "result.mp4"),
        options=options,
        source=source,
        code=code,
        warnings=warnings,
        client=sub.caller.name,
        input_names=dict(sub.names),
        timeout=settings.job_timeout_for(duration),
    )
    queued = services.store.counts()[JobState.QUEUED]
    created = services.store.create(
        job,
        max_queued=settings.max_queue,
        max_queued_per_client=settings.queued_cap_per_client,
        retry_after=retry_after(services, queued),
    )
    try:
        services.executor.submit(created)
    except ServiceUnavailable:  # e.g. the broker is down: nothing is left half-queued
        services.store.withdraw(created.id)
        raise
    services.metrics.submitted(source)
    log.info(
        "job %s queued (%s, client %s, time limit %g s)",
        sub.job_id,
        source,
        sub.caller.name,
        job.timeout,
        extra={"job_id": sub.job_id},
    )
    return created
