"""Service settings: one frozen pydantic-settings object (env prefix ``HEYGEM_SERVICE_``).

The warm pipeline's options are the nested ``pipeline`` field, generated from
``GenerateOptions`` (``HEYGEM_SERVICE_PIPELINE__BATCH_SIZE=8``). Lists (URL allow-list,
API keys, admin clients) are accepted as JSON or as comma-separated text. A bad value is
reported as one line naming the variable (``settings_error_line``).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from heygem.config import FaultInjection, GenerateOptions
from service.options import PipelineOptionsModel, PipelineSettings

MiB = 1024 * 1024
GiB = 1024 * MiB
DAY = 24 * 3600.0
ENV_PREFIX = "HEYGEM_SERVICE_"
NESTED = "__"
MIN_KEY_LENGTH = 16  # shorter keys can be guessed; `openssl rand -hex 24` makes a good one
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_HEADER = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


def default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "heygem-service"


class ApiClient(BaseModel):
    """One client: its name (in logs, metrics and job ownership) and its key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    key: SecretStr
    admin: bool = False  # sees every job and the server's internals (/readyz details)

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"client name {value!r} must be 1-64 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("key")
    @classmethod
    def _strong_key(cls, value: SecretStr) -> SecretStr:
        check_key(value.get_secret_value())
        return value


def check_key(key: str) -> None:
    """An API key must be long and without whitespace (an empty key would turn auth off)."""
    if not key.strip():
        raise ValueError("an API key is empty or whitespace; set a real key or unset the variable")
    if any(c.isspace() for c in key):
        raise ValueError("an API key contains whitespace (a copy-paste accident?)")
    if len(key) < MIN_KEY_LENGTH:
        raise ValueError(
            f"an API key is {len(key)} characters long; use at least {MIN_KEY_LENGTH} "
            "(e.g. `openssl rand -hex 24`)"
        )


def split_list(value: Any) -> Any:
    """JSON (list or object) or comma-separated text; other values pass through."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith(("[", "{")):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"looks like JSON but is not valid JSON ({exc.msg})") from None
    return [part.strip() for part in text.split(",") if part.strip()]


class ServiceSettings(BaseSettings):
    """Everything the service needs; passed explicitly, never read from a global."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=NESTED, frozen=True, extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8383, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Storage: the SQLite job store, uploads, results and the template cache live here.
    data_dir: Path = Field(default_factory=default_data_dir)
    # Compat (/easy) paths and native *_path references are confined to this directory;
    # None refuses path references altogether.
    media_root: Path | None = None
    # Compat results are also published as <media_root>/<code>-r.mp4 (HeyGem's layout).
    publish_compat_results: bool = True
    # Where `nox -s matrix_report` and `nox -s bench` wrote (a checkout of this project): the
    # web page's Diagnose tab shows the latest reports found there. None: the working directory.
    reports_dir: Path | None = None

    # Workers: separate processes, each holding a warm pipeline. 0 accepts and stores jobs
    # without running them (maintenance, API tests).
    workers: int = Field(default=1, ge=0, le=64)
    heartbeat_interval: float = Field(default=1.0, gt=0, le=60)
    # A worker process silent this long is killed (its job fails). The pipeline's own
    # watchdog names a stalled stage within pipeline.stall_timeout; this is the last
    # resort for a process that cannot even run that watchdog (stopped, GIL held).
    # None: pipeline.stall_timeout + 2 heartbeats + 5 s.
    worker_stall_timeout: float | None = Field(default=None, gt=0)
    worker_start_timeout: float = Field(default=300.0, gt=0)
    cancel_grace: float = Field(default=10.0, gt=0)
    # Job time limit: fixed if set, else job_timeout_min + job_timeout_per_audio_second
    # times the audio length.
    job_timeout: float | None = Field(default=None, gt=0)
    job_timeout_min: float = Field(default=120.0, gt=0)
    job_timeout_per_audio_second: float = Field(default=10.0, gt=0)
    on_restart: Literal["fail", "retry"] = "fail"  # jobs found running at start-up
    max_attempts: int = Field(default=2, ge=1)
    # Recycle a worker process after this many jobs or above this resident memory.
    worker_max_jobs: int | None = Field(default=200, ge=1)
    worker_max_rss_mib: int | None = Field(default=1536, ge=1)
    # SIGTERM: stop admitting, let running jobs finish this long, then cancel them.
    shutdown_grace: float = Field(default=30.0, ge=0)

    # Admission.
    max_queue: int = Field(default=16, ge=1)
    # Queued jobs one client may have; None: max_queue with one client, half of it with more.
    max_queued_per_client: int | None = Field(default=None, ge=1)
    retry_after_seconds: int = Field(default=10, ge=1)  # used until job durations are known
    max_upload_bytes: int = Field(default=512 * MiB, ge=1)
    max_video_seconds: float = Field(default=600.0, gt=0)
    url_allowlist: Annotated[tuple[str, ...], NoDecode] = ()  # URL prefixes compat may fetch
    url_max_bytes: int = Field(default=512 * MiB, ge=1)
    url_timeout: float = Field(default=30.0, gt=0)  # whole download, not per read
    min_free_disk_bytes: int = Field(default=256 * MiB, ge=0)
    # A client that stops sending its request body for this long gets 408.
    body_read_timeout: float = Field(default=20.0, gt=0)

    # Auth: off when no key is set; the CLI refuses that on a non-loopback host unless
    # allow_remote_without_key says so. api_key is one admin client named "default";
    # api_keys names several ("alice:KEY,bob:KEY" or JSON {"alice": "KEY"}).
    api_key: SecretStr | None = None
    api_keys: Annotated[tuple[ApiClient, ...], NoDecode] = ()
    admin_clients: Annotated[tuple[str, ...], NoDecode] = ()
    api_key_header: str = "X-API-Key"
    allow_remote_without_key: bool = False

    # Retention: finished jobs (row and files) and unused uploads are removed after their
    # TTL; the template cache is trimmed, least recently used first, to its size cap.
    job_ttl: float = Field(default=7 * DAY, gt=0)
    upload_ttl: float = Field(default=1 * DAY, gt=0)
    cache_max_bytes: int = Field(default=2 * GiB, ge=0)
    cache_keep_recent: float = Field(default=900.0, ge=0)  # a running job may read these
    retention_interval: float = Field(default=300.0, gt=0)

    # The warm pipeline every worker holds (jobs may override the per-job options).
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    # Lets a job carry a FaultInjection spec (tests, rehearsing alerts). Never in production.
    allow_fault_injection: bool = False

    # Scale-out (README "Scale out"): `local` runs the worker processes inside `heygem serve`;
    # `celery` sends jobs through a Redis broker to `heygem worker` processes on any machine
    # that mounts the shared data directory. The same Redis stores their results.
    executor: Literal["local", "celery"] = "local"
    broker_url: SecretStr | None = None  # redis://[:password@]host:port/db
    celery_queue: str = Field(default="heygem", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    # Redis hands an unacknowledged job to another worker after this long (its worker died
    # with it). None: the longest job time limit plus cancel grace and a margin, so a slow
    # job is never run twice.
    broker_visibility_timeout: float | None = Field(default=None, gt=0)
    # The SQLite job store; None: <data_dir>/jobs.sqlite3. Keep it on a local disk when the
    # data directory is a network mount (SQLite's locking is not safe over NFS).
    database_path: Path | None = None

    # -- validation ------------------------------------------------------------------------
    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            if not _HOSTNAME.match(value):
                raise ValueError(f"{value!r} is not an IP address or host name") from None
        return value

    @field_validator("reports_dir")
    @classmethod
    def _existing_dir(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value

    @field_validator("api_key_header")
    @classmethod
    def _header(cls, value: str) -> str:
        if not _HEADER.match(value):
            raise ValueError(f"{value!r} is not a plain header name (letters, digits, '-')")
        return value

    @field_validator("url_allowlist", "admin_clients", mode="before")
    @classmethod
    def _list(cls, value: Any) -> Any:
        return split_list(value)

    @field_validator("url_allowlist")
    @classmethod
    def _prefixes_are_urls(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        from service.fetch import parse_rule

        for prefix in value:
            parse_rule(prefix)  # raises ValueError naming what is wrong
        return value

    @field_validator("broker_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_broker_url(value.get_secret_value())
        return value

    @field_validator("api_key")
    @classmethod
    def _strong_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_key(value.get_secret_value())
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _clients(cls, value: Any) -> Any:
        value = split_list(value)
        if isinstance(value, Mapping):
            return [{"name": name, "key": key} for name, key in value.items()]
        if isinstance(value, list):
            return [_client_entry(item) for item in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServiceSettings:
        clients = self.clients
        names = [c.name for c in clients]
        if len(set(names)) != len(names):
            raise ValueError(f"{ENV_PREFIX}API_KEYS: client names must be unique")
        keys = [c.key.get_secret_value() for c in clients]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{ENV_PREFIX}API_KEYS: two clients share a key; give each its own")
        unknown = sorted(set(self.admin_clients) - set(names))
        if unknown:
            raise ValueError(
                f"{ENV_PREFIX}ADMIN_CLIENTS names clients that have no key: {', '.join(unknown)}"
            )
        if self.executor == "celery" and self.broker_url is None:
            raise ValueError(
                f"{ENV_PREFIX}EXECUTOR=celery needs {ENV_PREFIX}BROKER_URL (redis://host:6379/0)"
            )
        if self.max_queued_per_client is not None and self.max_queued_per_client > self.max_queue:
            raise ValueError(
                f"{ENV_PREFIX}MAX_QUEUED_PER_CLIENT ({self.max_queued_per_client}) is above "
                f"{ENV_PREFIX}MAX_QUEUE ({self.max_queue})"
            )
        return self

    # -- derived values --------------------------------------------------------------------
    @property
    def database(self) -> Path:
        return self.database_path or self.data_dir / "jobs.sqlite3"

    @property
    def options(self) -> GenerateOptions:
        """The warm pipeline's options, typed (the cache under data_dir unless set)."""
        return self.base_options()

    @property
    def cache_dir(self) -> Path:
        return self.options.cache_dir

    @property
    def clients(self) -> tuple[ApiClient, ...]:
        admins = set(self.admin_clients)
        named = tuple(
            c.model_copy(update={"admin": c.admin or c.name in admins}) for c in self.api_keys
        )
        if self.api_key is None:
            return named
        return (ApiClient(name="default", key=self.api_key, admin=True), *named)

    @property
    def auth_enabled(self) -> bool:
        return bool(self.clients)

    @property
    def queued_cap_per_client(self) -> int:
        if self.max_queued_per_client is not None:
            return self.max_queued_per_client
        return self.max_queue if len(self.clients) <= 1 else max(1, self.max_queue // 2)

    @property
    def effective_worker_stall_timeout(self) -> float:
        if self.worker_stall_timeout is not None:
            return self.worker_stall_timeout
        return self.options.stall_timeout + 2 * self.heartbeat_interval + 5.0

    def base_options(self, fault: FaultInjection | None = None) -> GenerateOptions:
        """The GenerateOptions every worker warms up with (raises InvalidOption if wrong)."""
        pipeline: PipelineOptionsModel = self.pipeline
        options = pipeline.to_options(self.data_dir)
        return options.with_changes(fault=fault) if fault is not None else options

    def job_timeout_for(self, audio_seconds: float) -> float:
        if self.job_timeout is not None:
            return self.job_timeout
        return round(self.job_timeout_min + self.job_timeout_per_audio_second * audio_seconds, 1)


def check_broker_url(url: str) -> None:
    """The broker is Redis: redis://, rediss:// (TLS) or a unix socket."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        shown = url.split("://", 1)[0] + "://..." if "://" in url else "the value"
        raise ValueError(f"{shown} is not a Redis URL (redis://[:password@]host:6379/0)")


def _client_entry(item: Any) -> Any:
    """``name:key`` (comma-separated form) or an object as it is."""
    if isinstance(item, str):
        name, sep, key = item.partition(":")
        if not sep:
            raise ValueError(f"api_keys entry {name[:3]}... must be NAME:KEY")
        return {"name": name.strip(), "key": key.strip()}
    return item


# --- reporting bad settings -------------------------------------------------------------
def env_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable a validation error location refers to."""
    names = [str(part) for part in loc if isinstance(part, str)]
    if not names:
        return ENV_PREFIX + "*"
    nested = names[:2] if names[0] == "pipeline" else names[:1]
    return ENV_PREFIX + NESTED.join(n.upper() for n in nested)


def settings_error_line(exc: ValidationError) -> str:
    """One line for a settings ValidationError: each bad variable and what is wrong."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = tuple(error.get("loc", ()))
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{env_name(loc)}: {message}" if loc else message)
    return "invalid service settings: " + "; ".join(dict.fromkeys(parts))


def unknown_env_vars(environ: Mapping[str, str]) -> list[str]:
    """HEYGEM_SERVICE_* variables that name no setting (typos would be silently ignored)."""
    known = {ENV_PREFIX + name.upper() for name in ServiceSettings.model_fields}
    pipeline_fields: Mapping[str, Any] = PipelineSettings.model_fields
    nested = {ENV_PREFIX + "PIPELINE" + NESTED + n.upper() for n in pipeline_fields}
    return sorted(
        name
        for name in environ
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known | nested
    )
