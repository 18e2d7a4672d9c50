"""Refuse oversized request bodies before they are read (ASGI middleware)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BODY_TOO_LARGE_KEY, UploadTooLarge, handle_error


class BodySizeLimit:
    """413 at once when Content-Length is too big; for chunked bodies, stop reading at the
    limit (the framework then fails the parse and the error handler reports 413)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

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

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    scope[BODY_TOO_LARGE_KEY] = True
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
