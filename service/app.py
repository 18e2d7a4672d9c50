"""``create_app(settings)``: the FastAPI application with its store, workers and routers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from heygem import __version__
from service.deps import Services
from service.errors import install_error_handler
from service.limits import BodySizeLimit
from service.metrics import Metrics
from service.pool import PoolConfig, WorkerPool
from service.routes import compat, generations, health, uploads
from service.settings import ServiceSettings
from service.store import JobStore

log = logging.getLogger(__name__)

FORM_OVERHEAD = 1024 * 1024  # multipart boundaries and the small form fields


def start_services(settings: ServiceSettings) -> Services:
    """Open the store, recover jobs left by a previous process, start the workers."""
    for sub in ("jobs", "uploads"):
        (settings.data_dir / sub).mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.database)
    recovered = store.recover(settings.on_restart, settings.max_attempts)
    if any(recovered.values()):
        log.warning(
            "jobs left running by the previous process: %d requeued, %d failed",
            recovered["requeued"],
            recovered["failed"],
        )
    metrics = Metrics()
    pool = WorkerPool(
        PoolConfig(
            workers=settings.workers,
            options=settings.base_options(),
            heartbeat_interval=settings.heartbeat_interval,
            stall_timeout=settings.worker_stall_timeout,
            start_timeout=settings.worker_start_timeout,
            cancel_grace=settings.cancel_grace,
            job_timeout=settings.job_timeout,
            log_level=settings.log_level,
        ),
        store,
        metrics,
        on_success=partial(
            compat.publish_compat_result,
            settings.media_root if settings.publish_compat_results else None,
        ),
    )
    pool.start()
    return Services(settings=settings, store=store, pool=pool, metrics=metrics)


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    settings = settings or ServiceSettings()
    settings.base_options()  # a wrong pipeline setting fails here, not in every worker

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = start_services(settings)
        app.state.services = services
        try:
            yield
        finally:
            services.pool.stop()
            services.store.close()

    app = FastAPI(
        title="heygem-harness",
        version=__version__,
        lifespan=lifespan,
        description="Lip-sync generation: native /v1 API and HeyGem-compatible "
        "/easy API. Errors: {error: {type, message, hint, status}}.",
    )
    install_error_handler(app)
    app.add_middleware(BodySizeLimit, max_bytes=2 * settings.max_upload_bytes + FORM_OVERHEAD)
    for router in (generations.router, uploads.router, compat.router, health.router):
        app.include_router(router)
    return app
