"""Liveness, readiness and Prometheus metrics (no API key: probes and scrapers)."""

from __future__ import annotations

import shutil
import tempfile

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from service.deps import Services, ServicesDep
from service.jobs import JobState
from service.metrics import gauge
from service.models import Check, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness}},
    summary="Workers warm, supervisor healthy, disk writable",
)
def readyz(services: ServicesDep) -> JSONResponse:
    workers = services.pool.snapshot()
    warm = [w for w in workers if w["state"] in ("idle", "busy")]
    detail = (
        f"{len(warm)} of {len(workers)} workers warm"
        if workers
        else ("no workers configured (HEYGEM_SERVICE_WORKERS=0)")
    )
    start_errors = {w["last_start_error"] for w in workers if w["last_start_error"]}
    if start_errors:
        detail += "; workers fail to start: " + "; ".join(sorted(start_errors))
    checks = {
        "workers": Check(ok=bool(warm), detail=detail),
        "watchdog": Check(
            ok=services.pool.supervisor_healthy(),
            detail="supervisor thread ticking"
            if services.pool.supervisor_healthy()
            else "supervisor thread is not running or stuck",
        ),
        "disk": _disk(services),
    }
    ready = all(c.ok for c in checks.values())
    body = Readiness(ready=ready, checks=checks, workers=workers)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


def _disk(services: Services) -> Check:
    data_dir = services.settings.data_dir
    try:
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".ready-") as probe:
            probe.write(b"ok")
            probe.flush()
        free = shutil.disk_usage(data_dir).free
    except OSError as exc:
        return Check(ok=False, detail=f"{data_dir} is not writable: {exc}")
    needed = services.settings.min_free_disk_bytes
    if free < needed:
        return Check(ok=False, detail=f"{free} bytes free in {data_dir}, below {needed}")
    return Check(ok=True, detail=f"{data_dir} writable, {free // 2**20} MiB free")


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(services: ServicesDep) -> PlainTextResponse:
    counts = services.store.counts()
    workers = services.pool.snapshot()
    by_state: dict[str, int] = {}
    for worker in workers:
        by_state[worker["state"]] = by_state.get(worker["state"], 0) + 1
    extra: list[str] = []
    extra += gauge(
        "heygem_jobs",
        "Jobs in the store, by state.",
        {(("state", s.value),): float(n) for s, n in counts.items()},
    )
    extra += gauge(
        "heygem_queue_depth", "Jobs waiting for a worker.", {(): float(counts[JobState.QUEUED])}
    )
    extra += gauge(
        "heygem_queue_capacity",
        "Maximum queued jobs before 429.",
        {(): float(services.settings.max_queue)},
    )
    extra += gauge(
        "heygem_workers",
        "Worker processes, by state.",
        {(("state", s),): float(n) for s, n in by_state.items()},
    )
    text = services.metrics.render(extra)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")
