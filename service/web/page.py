"""The page itself: ``/`` (one Jinja2 template) and its static files, with the headers
that keep it safe.

The page is a shell: every piece of data is fetched by its scripts from the native API
with the API key header, and put into the page as text (``textContent``), never as HTML.
The Content-Security-Policy backs that up: scripts, styles and everything else come from
this server only (no inline script or style, nothing from the internet at run time), and
the page cannot be framed. No build step: the files under ``static/`` are what runs.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heygem import __version__
from service.deps import ServicesDep

HERE = Path(__file__).parent
STATIC_PREFIX = "/static"
CSP = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",  # avatar thumbnails arrive as data: URLs
        "media-src 'self'",
        "connect-src 'self'",
        "form-action 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # result links never leak through a Referer
    "Cache-Control": "no-cache",  # revalidate (ETag): a new version is picked up at once
}

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=HERE / "templates")  # autoescapes .html


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
def index(request: Request, services: ServicesDep) -> HTMLResponse:
    settings = services.settings
    return templates.TemplateResponse(
        request,
        "index.html",
        {
            "version": __version__,
            "auth": settings.auth_enabled,
            "key_header": settings.api_key_header,
        },
    )


def static_files() -> StaticFiles:
    return StaticFiles(directory=HERE / "static")


class PageHeaders:
    """Adds ``PAGE_HEADERS`` to the page and its static files (the JSON API keeps its own:
    /docs loads Swagger UI's scripts, which this policy would block)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path != "/" and not path.startswith(STATIC_PREFIX + "/"):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in PAGE_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)
