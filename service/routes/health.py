"""Liveness, readiness and Prometheus metrics (no API key needed: probes and scrapers).

``/readyz`` tells anyone whether the service is ready and which check failed; the details
(data directory, free space, worker processes, start errors) only go to an admin key.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from service.deps import OptionalClientDep, Services, ServicesDep
from service.metrics import CONTENT_TYPE
from service.models import Check, Readiness, WorkerStatus

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness}},
    summary="Workers warm, supervisor healthy, disk writable, not shutting down",
)
def readyz(services: ServicesDep, caller: OptionalClientDep) -> JSONResponse:
    admin = caller is not None and caller.admin
    workers = services.executor.workers()
    warm = [w for w in workers if w.warm]
    detail = f"{len(warm)} of {len(workers)} workers warm"
    if not workers:
        detail = (
            "no workers configured (HEYGEM_SERVICE_WORKERS=0)"
            if services.settings.executor == "local"
            else "no heygem worker has answered on the broker (start `heygem worker`)"
        )
    start_errors = sorted({w.last_start_error for w in workers if w.last_start_error})
    if start_errors:
        detail += "; workers fail to start" + (": " + "; ".join(start_errors) if admin else "")
    healthy = services.executor.healthy()
    draining = services.lifecycle.draining.is_set()
    checks = {
        "workers": Check(ok=bool(warm), detail=detail),
        "watchdog": Check(
            ok=healthy,
            detail="supervisor thread ticking"
            if healthy
            else "supervisor thread is not running or stuck",
        ),
        "disk": _disk(services, admin),
        "accepting": Check(
            ok=not draining,
            detail="shutting down: no new work" if draining else "accepting new jobs",
        ),
    }
    for name, (ok, text) in services.executor.checks().items():
        checks[name] = Check(ok=ok, detail=text)
    ready = all(c.ok for c in checks.values())
    body = Readiness(
        ready=ready,
        checks=checks,
        workers=[WorkerStatus(**asdict(w)) for w in workers] if admin else [],
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


def _disk(services: Services, admin: bool) -> Check:
    data_dir = services.settings.data_dir
    where = str(data_dir) if admin else "the data directory"
    try:
        with tempfile.NamedTemporaryFile(dir=data_dir, prefix=".ready-") as probe:
            probe.write(b"ok")
            probe.flush()
        free = shutil.disk_usage(data_dir).free
    except OSError as exc:
        return Check(ok=False, detail=f"{where} is not writable" + (f": {exc}" if admin else ""))
    needed = services.settings.min_free_disk_bytes
    if free < needed:
        room = f": {free} bytes free, below {needed}" if admin else ""
        return Check(ok=False, detail=f"{where} is low on space{room}")
    room = f", {free // 2**20} MiB free" if admin else ""
    return Check(ok=True, detail=f"{where} writable{room}")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    responses={200: {"content": {"text/plain": {}}}},
    response_class=Response,
)
def metrics(services: ServicesDep) -> Response:
    return Response(services.metrics.render(), media_type=CONTENT_TYPE)
