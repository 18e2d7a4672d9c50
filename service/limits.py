"""Request bodies: refuse oversized ones before they are read, and stop waiting for a
client that stalls mid-body (ASGI middleware).

Both limits end the body early (an ``http.disconnect`` to the app) and mark the scope; the
framework then fails the parse and the error handler answers 413 or 408.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BODY_TIMEOUT_KEY, BODY_TOO_LARGE_KEY, UploadTooLarge, handle_error

# A body still arriving after ``read_timeout`` seconds must have come at least this fast on
# average: a client dripping a byte a second never stalls, yet holds a request open for good
# (slowloris). 16 KiB/s still lets a phone upload the largest allowed file.
MIN_BODY_BYTES_PER_SECOND = 16 * 1024


class BodyLimits:
    """413 at once when Content-Length is too big; for chunked bodies, stop reading at the
    limit. 408 when no part of the body arrives for ``read_timeout`` seconds, or when after
    that long it arrives slower than ``MIN_BODY_BYTES_PER_SECOND`` on average."""

    def __init__(self, app: ASGIApp, max_bytes: int, read_timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            error = UploadTooLarge(
                f"the request body is {declared} bytes, above the {self.max_bytes} byte limit",
                hint="send smaller files (server limit: HEYGEM_SERVICE_MAX_UPLOAD_BYTES)",
            )
            response = await handle_error(Request(scope), error)
            await response(scope, receive, send)
            return
        seen = 0
        complete = False
        started = time.monotonic()

        async def limited() -> Message:
            nonlocal seen, complete
            if complete:  # after the body: only the disconnect watch, no deadline
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except TimeoutError:
                scope[BODY_TIMEOUT_KEY] = True
                complete = True
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                elapsed = time.monotonic() - started
                if (
                    not complete
                    and elapsed > self.read_timeout
                    and (seen < MIN_BODY_BYTES_PER_SECOND * elapsed)
                ):
                    scope[BODY_TIMEOUT_KEY] = True
                    complete = True
                    return {"type": "http.disconnect"}
                if seen > self.max_bytes:
                    scope[BODY_TOO_LARGE_KEY] = True
                    complete = True
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, limited, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
