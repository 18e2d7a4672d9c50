"""Service errors (part of the one tree rooted at ``heygem.errors.HeygemError``) and the
single place that turns any error into an HTTP response.

Native routes answer ``{"error": {type, message, hint, status, details}}``; the
HeyGem-compatible ``/easy`` routes answer HeyGem's envelope ``{code, success, msg, data}``
with its codes. Messages are never empty.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from heygem import errors as core
from heygem.errors import HeygemError

log = logging.getLogger(__name__)

COMPAT_PREFIX = "/easy"
BODY_TOO_LARGE_KEY = "heygem.body_too_large"
BODY_TIMEOUT_KEY = "heygem.body_timeout"
CLIENT_NAMES_KEY = "heygem.client_names"  # server path -> the name the client used


class CompatCode:
    """HeyGem's result codes (``code`` in its envelope)."""

    OK = 10000
    BUSY = 10001
    MISSING_PARAMETER = 10002
    NOT_FOUND = 10004
    SYSTEM_ERROR = 9999


# --- admission and lookup errors ------------------------------------------------------
class MissingParameter(core.InvalidOption):
    """A required request field is absent or two mutually exclusive ones were given."""


class PathNotAllowed(core.InvalidOption):
    """A path reference escapes the media root, or path references are disabled."""


class UrlNotAllowed(core.InvalidOption):
    """A URL is not on the allow-list, or its download broke a limit."""


class UploadTooLarge(core.InputTooLarge):
    pass


class DownloadFailed(core.InputNotFound):
    """An allow-listed URL could not be fetched (unreachable, error status, too slow)."""


class QueueFull(HeygemError):
    def __init__(self, message: str, *, retry_after: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class JobNotFound(HeygemError):
    pass


class UploadNotFound(core.InputNotFound):
    pass


class JobConflict(HeygemError):
    """The job is in a state that does not allow the request (e.g. cancel a finished job)."""


class ResultNotReady(JobConflict):
    pass


class RangeNotSatisfiable(HeygemError):
    def __init__(self, message: str, *, size: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.size = size


class Unauthorized(HeygemError):
    pass


class Forbidden(HeygemError):
    """A valid key that may not do this (e.g. server internals need an admin key)."""


class ServiceUnavailable(HeygemError):
    """The service is shutting down (or otherwise not taking work): retry later."""

    def __init__(self, message: str, *, retry_after: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class RequestTimeout(HeygemError):
    """The client stopped sending its request body."""


# --- why a job failed outside the pipeline --------------------------------------------
class WorkerCrashed(core.StageCrashed):
    """The worker process running the job died (its exit is decoded in the message)."""


class WorkerStalled(core.PipelineStalled):
    """The worker process stopped answering heartbeats and was killed."""


class ServiceRestarted(core.PipelineError):
    """The service stopped while the job was running."""

    default_cause = core.FailureCause.SERVICE_RESTARTED


class JobTimedOut(core.PipelineError):
    default_cause = core.FailureCause.TIMED_OUT


# Most specific first: the first isinstance match wins.
_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (QueueFull, 429),
    (Unauthorized, 401),
    (Forbidden, 403),
    (JobNotFound, 404),
    (UploadNotFound, 404),
    (JobConflict, 409),
    (RangeNotSatisfiable, 416),
    (core.InputTooLarge, 413),
    (PathNotAllowed, 403),
    (UrlNotAllowed, 403),
    (core.InvalidOption, 400),
    (core.InputNotFound, 422),
    (core.OutputNotWritable, 500),  # our own job directory: a server problem
    (core.CheckpointError, 500),
    (core.InputError, 422),
    (ServiceUnavailable, 503),
    (RequestTimeout, 408),
)

_COMPAT_CODE: tuple[tuple[type[BaseException], int], ...] = (
    (QueueFull, CompatCode.BUSY),
    (ServiceUnavailable, CompatCode.BUSY),
    (JobNotFound, CompatCode.NOT_FOUND),
    (JobConflict, CompatCode.MISSING_PARAMETER),  # a task code used twice
    (core.OutputNotWritable, CompatCode.SYSTEM_ERROR),
    (core.CheckpointError, CompatCode.SYSTEM_ERROR),
    (core.InputError, CompatCode.MISSING_PARAMETER),
)


def http_status(exc: BaseException) -> int:
    return next((status for cls, status in _STATUS if isinstance(exc, cls)), 500)


def compat_code(exc: BaseException) -> int:
    return next(
        (code for cls, code in _COMPAT_CODE if isinstance(exc, cls)), CompatCode.SYSTEM_ERROR
    )


def compat_body(code: int, msg: str, data: Any = None) -> dict[str, Any]:
    return {"code": code, "success": code == CompatCode.OK, "msg": msg, "data": data}


class RequestInvalid(core.InvalidOption):
    """The request did not match the schema (FastAPI validation)."""


class HttpError(HeygemError):
    """A plain HTTP error raised by the framework (unknown route, wrong method...)."""


def _as_heygem(request: Request, exc: Exception) -> tuple[HeygemError, int, Any]:
    """Normalise anything raised while serving into (our error, HTTP status, details)."""
    if isinstance(exc, HeygemError):
        return exc, http_status(exc), None
    if isinstance(exc, RequestValidationError):
        problems = [_describe_problem(e) for e in exc.errors()]
        error = RequestInvalid(
            "request is invalid: " + "; ".join(problems), hint="see the API schema at /docs"
        )
        details = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return error, 422, details
    if isinstance(exc, StarletteHTTPException):
        if request.scope.get(BODY_TIMEOUT_KEY):
            timeout = RequestTimeout(
                "the request body stopped arriving, or arrived too slowly",
                hint="send the whole body without pausing (at least 16 KiB/s)",
            )
            return timeout, 408, None
        if exc.status_code == 400 and request.scope.get(BODY_TOO_LARGE_KEY):
            too_large = UploadTooLarge(
                "the request body is larger than the upload limit", hint="send smaller files"
            )
            return too_large, 413, None
        detail = (
            exc.detail
            if isinstance(exc.detail, str) and exc.detail
            else (f"HTTP {exc.status_code}")
        )
        return HttpError(f"{detail} ({request.method} {request.url.path})"), exc.status_code, None
    log.error("unhandled error serving %s %s", request.method, request.url.path, exc_info=exc)
    internal = HeygemError(
        f"internal error: {type(exc).__name__}",
        hint="this is a bug in the service; the server log has the details",
    )
    return internal, 500, None


def _describe_problem(error: Any) -> str:
    loc = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
    return f"{loc or 'body'}: {error.get('msg', 'invalid')}"


def _redact(request: Request, text: str | None) -> str | None:
    redactor = getattr(request.app.state, "redactor", None)
    if text is None or redactor is None:
        return text
    names = request.scope.get(CLIENT_NAMES_KEY) or {}
    redacted: str = redactor.text(text, names)
    return redacted


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """The one exception handler: every error the app raises ends up here.

    Messages reach the client without server paths (the log keeps the full text)."""
    error, status, details = _as_heygem(request, exc)
    message = _redact(request, error.message) or error.message
    hint = _redact(request, error.hint)
    if message != error.message:
        log.info("%s answered as %d: %s", type(error).__name__, status, error.message)
    headers: dict[str, str] = {}
    if isinstance(error, QueueFull | ServiceUnavailable):
        headers["Retry-After"] = str(error.retry_after)
    if isinstance(error, RangeNotSatisfiable):
        headers["Content-Range"] = f"bytes */{error.size}"
    if isinstance(exc, StarletteHTTPException) and exc.headers:
        headers.update(exc.headers)
    if isinstance(error, RequestTimeout):
        headers["Connection"] = "close"
    if request.url.path.startswith(COMPAT_PREFIX):
        code = (
            CompatCode.MISSING_PARAMETER
            if isinstance(error, RequestInvalid)
            else (compat_code(error))
        )
        # HeyGem clients read `code`, not the HTTP status; auth failures stay visible as 401.
        compat_status = status if status in (401, 408) else 200
        msg = message + (f" ({hint})" if hint else "")
        return JSONResponse(compat_body(code, msg), status_code=compat_status, headers=headers)
    body = {
        "error": {
            "type": type(error).__name__,
            "message": message,
            "hint": hint,
            "status": status,
            "cause": error.cause.value,
            "details": details,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


def install_error_handler(app: FastAPI) -> None:
    for cls in (HeygemError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(cls, handle_error)
