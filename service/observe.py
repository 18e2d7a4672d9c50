"""Request ids, job ids, access logs and HTTP metrics (ASGI middleware + a log filter).

Every response carries ``X-Request-ID`` (the client's own, if it sent a sane one, else a
new one) and, where a job is concerned, ``X-Job-ID``. Every log line written while serving
a request carries both; one access line per request says method, route, status, time.
Metrics are labelled by route template (``/v1/generations/{job_id}``), never by raw path,
so their number stays bounded.
"""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.metrics import Metrics

REQUEST_ID_HEADER = "X-Request-ID"
JOB_ID_HEADER = "X-Job-ID"
UNMATCHED = "unmatched"
QUIET_ROUTES = ("/healthz", "/readyz", "/metrics")  # polled: their access lines are debug
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
job_id: contextvars.ContextVar[str] = contextvars.ContextVar("job_id", default="-")
access_log = logging.getLogger("service.access")


class ContextFilter(logging.Filter):
    """Adds ``request_id`` and ``job_id`` to every record (an explicit ``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id.get()
        if not hasattr(record, "job_id"):
            record.job_id = job_id.get()
        return True


class RequestContext:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and _SANE_ID.match(given) else uuid.uuid4().hex
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 500
        job = "-"

        async def send_with_ids(message: Message) -> None:
            nonlocal status, job
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = rid
                job = headers.get(JOB_ID_HEADER, "-")
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = str(scope.get("method", "-"))
            self.metrics.http_request(method, route, status, seconds)
            access_log.log(
                logging.DEBUG if route in QUIET_ROUTES else logging.INFO,
                "%s %s -> %d in %.3f s",
                method,
                route,
                status,
                seconds,
                extra={"request_id": rid, "job_id": job},
            )
            request_id.reset(token)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            try:
                return str(value.decode("latin-1"))
            except UnicodeDecodeError:
                return None
    return None
