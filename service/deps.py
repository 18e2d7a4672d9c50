"""The objects a request needs, as ``Annotated`` dependencies."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.errors import Unauthorized
from service.metrics import Metrics
from service.pool import WorkerPool
from service.settings import ServiceSettings
from service.store import JobStore


@dataclass(frozen=True)
class Services:
    settings: ServiceSettings
    store: JobStore
    pool: WorkerPool
    metrics: Metrics


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def require_api_key(request: Request, services: ServicesDep) -> None:
    """Checks the API key header when a key is configured (constant-time compare)."""
    key = services.settings.api_key
    if key is None:
        return
    given = request.headers.get(services.settings.api_key_header, "")
    if not hmac.compare_digest(given.encode(), key.get_secret_value().encode()):
        raise Unauthorized(
            f"missing or wrong API key in the {services.settings.api_key_header} header",
            hint=f"send the key configured as HEYGEM_SERVICE_API_KEY in "
            f"{services.settings.api_key_header}",
        )


Authorized = Depends(require_api_key)
