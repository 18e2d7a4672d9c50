"""What the web page's endpoints share: result links and the diagnostics tools."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.web.links import ResultLinks
from service.web.tools import Tools


@dataclass(frozen=True)
class WebServices:
    links: ResultLinks = field(default_factory=ResultLinks)
    tools: Tools = field(default_factory=Tools)

    def close(self) -> None:
        self.tools.close()


def get_web(request: Request) -> WebServices:
    web: WebServices = request.app.state.web
    return web


WebDep = Annotated[WebServices, Depends(get_web)]
