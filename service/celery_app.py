"""The Celery application both sides build from the same ``ServiceSettings``.

Redis is the broker (the job queue) and the result backend (where workers report: task
state ``PROGRESS`` with the phase and percent as meta, then the job's outcome as the
task's result). The API polls the backend for the jobs it has in flight: the backend
keeps each state until the API reads it, so an API that restarts finds its running jobs
where the workers left them (Celery events would be lost while it is down).

Delivery: one job at a time per worker process (prefetch 1), acknowledged only when it
ended (acks_late). A pool process that dies mid-job (kill -9, OOM) is retried at once by
Celery (``retry_on_worker_lost``, counted: ``max_attempts``), and the message is requeued
(``reject_on_worker_lost``) should that retry fail to send. A whole worker that dies
leaves its message unacknowledged in Redis, which hands it to another worker after the
visibility timeout (``visibility_timeout``); the task counts its attempts itself for
that case.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from service.settings import ServiceSettings

if TYPE_CHECKING:
    from celery import Celery

TASK_NAME = "heygem.generate"
CANCEL_COMMAND = "heygem_cancel"  # remote control: the pipeline's own cancel, in its process
STATUS_COMMAND = "heygem_status"  # remote control: a worker's processes, jobs, findings
PROGRESS = "PROGRESS"  # custom task state: meta = {attempt, worker, pid, phase, percent...}
CANCEL_SIGNAL = "SIGUSR2"  # what heygem_cancel sends to the pool process (billiard leaves
# SIGUSR2 alone; SIGTERM and SIGUSR1 are its own)
ATTEMPTS_KEY = "heygem:attempts:{}"  # per-job start counter in the backend's Redis
VISIBILITY_MARGIN = 60.0  # seconds on top of the longest job before Redis redelivers
RESTORE_INTERVAL = 10  # seconds between a worker's sweeps for messages of dead workers
CONNECT_TIMEOUT = 3.0  # a broker that does not answer within this is "down"


def longest_job_seconds(settings: ServiceSettings) -> float:
    """The longest time limit any admitted job can have (from the longest audio)."""
    return settings.job_timeout_for(settings.options.max_audio_seconds)


def visibility_timeout(settings: ServiceSettings) -> float:
    """How long Redis waits before handing an unacknowledged job to another worker.

    A running job's message stays unacknowledged until it ends, so this must be longer than
    any job may run, or Redis would start a second copy of a healthy slow job.
    """
    if settings.broker_visibility_timeout is not None:
        return settings.broker_visibility_timeout
    return longest_job_seconds(settings) + settings.cancel_grace + VISIBILITY_MARGIN


def broker_url(settings: ServiceSettings) -> str:
    if settings.broker_url is None:
        raise ValueError("HEYGEM_SERVICE_BROKER_URL is not set")
    return settings.broker_url.get_secret_value()


def shown_url(settings: ServiceSettings) -> str:
    """The broker URL without its password (for messages and logs)."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(broker_url(settings)))


def celery_config(settings: ServiceSettings) -> dict[str, Any]:
    timeout = visibility_timeout(settings)
    restore = min(RESTORE_INTERVAL, max(1, int(timeout / 4)))
    return {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_default_queue": settings.celery_queue,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_deduplicate_successful_tasks": True,  # a redelivered finished job is skipped
        "worker_proc_alive_timeout": settings.worker_start_timeout,  # the warm-up may be slow
        "worker_max_tasks_per_child": settings.worker_max_jobs,
        "worker_max_memory_per_child": settings.worker_max_rss_mib * 1024
        if settings.worker_max_rss_mib
        else None,
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
        "worker_send_task_events": False,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": CONNECT_TIMEOUT,
        "broker_transport_options": {
            "visibility_timeout": timeout,
            "socket_connect_timeout": CONNECT_TIMEOUT,
            "unacked_restore_interval": restore,
            "unacked_restore_throttle": 1,
        },
        "result_backend_transport_options": {"socket_connect_timeout": CONNECT_TIMEOUT},
        "redis_socket_connect_timeout": CONNECT_TIMEOUT,
        "redis_socket_timeout": 30.0,
        "redis_retry_on_timeout": True,
        # Outcomes wait in Redis for the API as long as it keeps finished jobs.
        "result_expires": int(settings.job_ttl),
        "result_extended": False,
        # A worker whose Redis restarts keeps its job's outcome until it can store it.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 60,
        "result_backend_max_sleep_between_retries_ms": 5000,
    }


def make_celery(settings: ServiceSettings) -> Celery:
    """The Celery app (broker and backend on the same Redis), configured for both sides."""
    from celery import Celery

    url = broker_url(settings)
    app = Celery("heygem", broker=url, backend=url, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app
