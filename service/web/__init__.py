"""The operators' web page, served by the service itself at ``/``.

Generate (uploads with progress, or a cached avatar), watch a job (state, phase, frames,
cancel; a timeline of where the time went once it finished), play and download the
result with its lip-sync score, list jobs, and diagnose (doctor, live processes, dh.log
analysis with a sends-vs-takes chart, the latest matrix and benchmark reports). Same app,
same job system, same API: the page calls the native API like any client.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

__all__ = ["install_web"]


def install_web(app: FastAPI) -> None:
    """Add the page, its static files and the JSON endpoints it needs to ``app``."""
    from service.routes import avatars, diagnose, options, results
    from service.web.page import STATIC_PREFIX, PageHeaders, router, static_files
    from service.web.state import WebServices

    for module in (avatars, diagnose, options, results):
        app.include_router(module.router)
    app.include_router(router)
    app.mount(STATIC_PREFIX, static_files(), name="static")
    app.add_middleware(PageHeaders)

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with inner(app) as state:
            web = app.state.web = WebServices()  # per start: the app may be started again
            try:
                yield state
            finally:
                web.close()  # diagnostics children die with the server

    app.router.lifespan_context = lifespan
