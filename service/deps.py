"""The objects a request needs, as ``Annotated`` dependencies: the services and the caller."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from service.errors import Forbidden, ServiceUnavailable, Unauthorized
from service.lifecycle import Executor, JobLifecycle
from service.metrics import Metrics
from service.redact import Redactor
from service.settings import ServiceSettings
from service.store import JobStore

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Services:
    settings: ServiceSettings
    store: JobStore
    lifecycle: JobLifecycle
    executor: Executor
    metrics: Metrics
    redactor: Redactor


@dataclass(frozen=True)
class Caller:
    """Who sent the request: a configured client, or anyone when auth is off."""

    name: str
    admin: bool = False

    @property
    def scope(self) -> str | None:
        """Whose jobs this caller may see (None: everyone's)."""
        return None if self.admin else self.name


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def identify(services: Services, given: str | None) -> Caller | None:
    """The client whose key this is, comparing in constant time against every key."""
    settings = services.settings
    if not settings.auth_enabled:
        return Caller(ANONYMOUS)
    if not given:
        return None
    digest = _digest(given)
    found: Caller | None = None
    for client in settings.clients:  # no early exit: the time does not depend on which
        if hmac.compare_digest(digest, _digest(client.key.get_secret_value())):
            found = Caller(client.name, client.admin)
    return found


def require_client(request: Request, services: ServicesDep) -> Caller:
    """The caller, or 401 when a key is configured and this request has no valid one."""
    header = services.settings.api_key_header
    caller = identify(services, request.headers.get(header))
    if caller is None:
        raise Unauthorized(
            f"missing or wrong API key in the {header} header",
            hint=f"send the key the operator gave you in the {header} header",
        )
    request.state.client = caller.name
    return caller


def optional_client(request: Request, services: ServicesDep) -> Caller | None:
    """For open endpoints (probes): who it is if a valid key came along, else None."""
    caller = identify(services, request.headers.get(services.settings.api_key_header))
    return caller if caller is not None and services.settings.auth_enabled else None


ClientDep = Annotated[Caller, Depends(require_client)]
OptionalClientDep = Annotated[Caller | None, Depends(optional_client)]


def require_admin(services: ServicesDep, caller: ClientDep) -> Caller:
    """The caller, if it may see the server's internals (versions, paths, processes).

    With keys configured that takes an admin key. Without keys the server only listens on
    loopback, so whoever reaches it is on this machine: its operator. Bound elsewhere
    without a key (HEYGEM_SERVICE_ALLOW_REMOTE_WITHOUT_KEY) anyone could ask, so nobody may.
    """
    from service.cli import is_loopback

    settings = services.settings
    if caller.admin or (not settings.auth_enabled and is_loopback(settings.host)):
        return caller
    raise Forbidden(
        "this shows the server's internals, which need an admin key"
        if settings.auth_enabled
        else "this server runs without API keys on a non-loopback address, so it shows its "
        "internals to nobody",
        hint="ask the operator for an admin key (HEYGEM_SERVICE_ADMIN_CLIENTS)"
        if settings.auth_enabled
        else "set HEYGEM_SERVICE_API_KEY to get an admin key",
    )


AdminDep = Annotated[Caller, Depends(require_admin)]


def admitting(services: Services) -> None:
    """Refuse new work while the service drains for shutdown (503 + Retry-After)."""
    if services.lifecycle.draining.is_set():
        services.metrics.rejected_submission("ShuttingDown")
        wait = max(services.settings.retry_after_seconds, int(services.settings.shutdown_grace))
        raise ServiceUnavailable(
            "the service is shutting down and accepts no new work",
            retry_after=wait,
            hint=f"retry after {wait} s, when it is back",
        )
