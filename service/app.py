"""``create_app(settings)``: the FastAPI application with its store, executor and routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from heygem import __version__
from service.deps import Services
from service.errors import install_error_handler
from service.jobs import JobState
from service.lifecycle import Executor, JobLifecycle
from service.limits import BodyLimits
from service.metrics import Gauge, Metrics, StateCollector
from service.observe import RequestContext
from service.pool import PoolConfig, WorkerPool
from service.redact import Redactor
from service.retention import Retention, RetentionPolicy
from service.routes import compat, generations, health, uploads
from service.settings import MiB, ServiceSettings
from service.store import JobStore
from service.web import install_web

log = logging.getLogger(__name__)

FORM_OVERHEAD = 1024 * 1024  # multipart boundaries and the small form fields


def local_executor(
    settings: ServiceSettings, lifecycle: JobLifecycle, metrics: Metrics
) -> WorkerPool:
    return WorkerPool(
        PoolConfig(
            workers=settings.workers,
            options=settings.base_options(),
            heartbeat_interval=settings.heartbeat_interval,
            stall_timeout=settings.effective_worker_stall_timeout,
            start_timeout=settings.worker_start_timeout,
            cancel_grace=settings.cancel_grace,
            max_jobs=settings.worker_max_jobs,
            max_rss_bytes=settings.worker_max_rss_mib * MiB
            if settings.worker_max_rss_mib
            else None,
            log_level=settings.log_level,
        ),
        lifecycle,
        metrics,
    )


def start_services(settings: ServiceSettings, metrics: Metrics, redactor: Redactor) -> Services:
    """Open the store, recover jobs left by a previous process, start the executor."""
    for sub in ("jobs", "uploads"):
        (settings.data_dir / sub).mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.database)
    lifecycle = JobLifecycle(
        store,
        metrics,
        redactor,
        publish=partial(
            compat.publish_compat_result,
            settings.media_root if settings.publish_compat_results else None,
        ),
        unpublish=partial(compat.unpublish_compat_result, settings.media_root),
        data_dir=settings.data_dir,
    )
    executor: Executor
    if settings.executor == "celery":
        from service.celery_executor import CeleryExecutor

        # Jobs running on remote workers carry on without this process: it follows them.
        executor = CeleryExecutor(settings, lifecycle, metrics)
    else:
        recovered = lifecycle.recover(settings.on_restart, settings.max_attempts)
        if any(recovered.values()):
            log.warning(
                "jobs left running by the previous process: %d requeued, %d failed",
                recovered["requeued"],
                recovered["failed"],
            )
        executor = local_executor(settings, lifecycle, metrics)
    executor.start()
    return Services(settings, store, lifecycle, executor, metrics, redactor)


def retention_for(services: Services) -> Retention:
    settings = services.settings
    policy = RetentionPolicy(
        data_dir=settings.data_dir,
        cache_dir=settings.cache_dir,
        job_ttl=settings.job_ttl,
        upload_ttl=settings.upload_ttl,
        cache_max_bytes=settings.cache_max_bytes,
        cache_keep_recent=settings.cache_keep_recent,
        interval=settings.retention_interval,
    )
    return Retention(policy, services.lifecycle, services.store, services.metrics)


def state_gauges(services: Services, retention: Retention) -> list[Gauge]:
    settings, store = services.settings, services.store

    def jobs() -> Iterable[tuple[tuple[str, ...], float]]:
        return [((s.value,), n) for s, n in store.counts().items()]

    def workers_by_state() -> Iterable[tuple[tuple[str, ...], float]]:
        states: dict[str, int] = {}
        for worker in services.executor.workers():
            states[worker.state] = states.get(worker.state, 0) + 1
        return [((settings.executor, state), n) for state, n in states.items()]

    def rss() -> Iterable[tuple[tuple[str, ...], float]]:
        return [
            ((w.name,), w.rss_bytes) for w in services.executor.workers() if w.rss_bytes is not None
        ]

    return [
        Gauge("heygem_jobs", "Jobs in the store, by state.", ("state",), jobs),
        Gauge(
            "heygem_queue_depth",
            "Jobs waiting for a worker, by executor (local or celery).",
            ("executor",),
            lambda: [((settings.executor,), store.counts()[JobState.QUEUED])],
        ),
        Gauge(
            "heygem_queue_capacity",
            "Maximum queued jobs before 429.",
            (),
            lambda: [((), settings.max_queue)],
        ),
        Gauge(
            "heygem_queued_jobs_by_client",
            "Queued jobs per client (capped at HEYGEM_SERVICE_MAX_QUEUED_PER_CLIENT).",
            ("client",),
            lambda: [((c,), n) for c, n in store.queued_by_client().items()],
        ),
        Gauge(
            "heygem_workers",
            "Worker processes (seen, for celery), by executor and state.",
            ("executor", "state"),
            workers_by_state,
        ),
        Gauge(
            "heygem_worker_rss_bytes",
            "Resident memory of each worker process (recycled above the limit).",
            ("worker",),
            rss,
        ),
        Gauge(
            "heygem_storage_bytes",
            "Bytes used under the data directory, by area (as of the last retention sweep).",
            ("area",),
            lambda: [((area,), n) for area, n in retention.usage().items()],
        ),
        Gauge(
            "heygem_draining",
            "1 while the service drains for shutdown (new work gets 503).",
            (),
            lambda: [((), float(services.lifecycle.draining.is_set()))],
        ),
        *services.executor.gauges(),
    ]


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    settings.base_options()  # a wrong pipeline setting fails here, not in every worker
    metrics = Metrics()
    redactor = Redactor.for_service(settings.data_dir, settings.cache_dir, settings.media_root)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = start_services(settings, metrics, redactor)
        retention = retention_for(services)
        collector = StateCollector(state_gauges(services, retention))
        metrics.add_collector(collector)
        retention.start()
        app.state.services = services
        app.state.retention = retention
        try:
            yield
        finally:
            metrics.registry.unregister(collector)  # the app may be started again
            retention.stop()
            # Normally drained already (SIGTERM); whatever still runs is cancelled with
            # that reason rather than left 'running' in the store. Remote workers (celery)
            # carry on: the next API process follows their jobs.
            if settings.executor == "local":
                services.lifecycle.abandon_running(services.executor, settings.cancel_grace)
            services.executor.stop()
            services.store.close()

    app = FastAPI(
        title="heygem-harness",
        version=__version__,
        lifespan=lifespan,
        description="Lip-sync generation: native /v1 API and HeyGem-compatible "
        "/easy API. Errors: {error: {type, message, hint, status, cause}}.",
    )
    app.state.redactor = redactor
    install_error_handler(app)
    app.add_middleware(
        BodyLimits,
        max_bytes=2 * settings.max_upload_bytes + FORM_OVERHEAD,
        read_timeout=settings.body_read_timeout,
    )
    app.add_middleware(RequestContext, metrics=metrics)
    for router in (generations.router, uploads.router, compat.router, health.router):
        app.include_router(router)
    install_web(app)  # the operators' page at / and the endpoints it needs
    return app


def drain(app: FastAPI) -> None:
    """SIGTERM: stop admitting, give running jobs the shutdown grace, then cancel them."""
    services: Services | None = getattr(app.state, "services", None)
    if services is None:
        return
    settings = services.settings
    if settings.executor != "local":  # jobs on remote workers outlive this process
        services.lifecycle.draining.set()
        return
    services.lifecycle.drain(services.executor, settings.shutdown_grace, settings.cancel_grace)
