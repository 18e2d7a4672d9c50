"""Service settings: one frozen pydantic-settings object (env prefix ``HEYGEM_SERVICE_``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from heygem.config import FaultInjection, GenerateOptions, X264Preset, default_cache_dir

MiB = 1024 * 1024


def default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "heygem-service"


class ServiceSettings(BaseSettings):
    """Everything the service needs; passed explicitly, never read from a global."""

    model_config = SettingsConfigDict(env_prefix="HEYGEM_SERVICE_", frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(default=8383, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Storage: the SQLite job store, uploads and results live under data_dir.
    data_dir: Path = Field(default_factory=default_data_dir)
    # Compat (/easy) paths and native *_path references are confined to this directory;
    # None refuses path references altogether.
    media_root: Path | None = None
    # Compat results are also published as <media_root>/<code>-r.mp4 (HeyGem's layout).
    publish_compat_results: bool = True

    # Workers: separate processes, each holding a warm pipeline. 0 accepts and stores jobs
    # without running them (maintenance, API tests).
    workers: int = Field(default=1, ge=0, le=64)
    heartbeat_interval: float = Field(default=1.0, gt=0)
    # A worker silent this long is killed (its job fails); a cancelled job still running
    # after cancel_grace has its worker killed.
    worker_stall_timeout: float = Field(default=60.0, gt=0)
    worker_start_timeout: float = Field(default=300.0, gt=0)
    cancel_grace: float = Field(default=10.0, gt=0)
    job_timeout: float | None = Field(default=None, gt=0)
    on_restart: Literal["fail", "retry"] = "fail"  # jobs found running at start-up
    max_attempts: int = Field(default=2, ge=1)

    # Admission.
    max_queue: int = Field(default=16, ge=1)
    retry_after_seconds: int = Field(default=10, ge=1)  # used until job durations are known
    max_upload_bytes: int = Field(default=512 * MiB, ge=1)
    max_audio_seconds: float = Field(default=600.0, gt=0)
    max_video_seconds: float = Field(default=600.0, gt=0)
    url_allowlist: tuple[str, ...] = ()  # URL prefixes the compat API may fetch from
    url_max_bytes: int = Field(default=512 * MiB, ge=1)
    url_timeout: float = Field(default=30.0, gt=0)  # whole download, not per read
    min_free_disk_bytes: int = Field(default=256 * MiB, ge=0)

    # Auth: off when no key is set; the CLI refuses that on a non-loopback host unless
    # allow_remote_without_key says so.
    api_key: SecretStr | None = None
    api_key_header: str = "X-API-Key"
    allow_remote_without_key: bool = False

    # The warm pipeline every worker holds (jobs may override the cheap options).
    generator: Literal["rewrite", "wav2lip"] = "rewrite"
    checkpoint: Path | None = None
    backend: Literal["onnxruntime", "torch"] = "onnxruntime"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(default=16, ge=1, le=512)
    num_workers: int = Field(default=0, ge=0, le=64)  # DataLoader workers inside each worker
    preset: X264Preset = "veryfast"
    crf: int = Field(default=23, ge=0, le=51)
    stall_timeout: float = Field(default=10.0, ge=0.5)
    max_width: int = Field(default=3840, ge=64)
    max_height: int = Field(default=2160, ge=64)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    # Lets a job carry a FaultInjection spec (tests, rehearsing alerts). Never in production.
    allow_fault_injection: bool = False

    @field_validator("url_allowlist")
    @classmethod
    def _prefixes_have_scheme(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in value:
            if not prefix.startswith(("http://", "https://")):
                raise ValueError(f"url_allowlist entry {prefix!r} must start with http(s)://")
        return value

    @property
    def database(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    def base_options(self, fault: FaultInjection | None = None) -> GenerateOptions:
        """The GenerateOptions every worker warms up with (raises InvalidOption if wrong)."""
        return GenerateOptions(
            generator=self.generator,
            checkpoint=self.checkpoint,
            backend=self.backend,
            device=self.device,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            preset=self.preset,
            crf=self.crf,
            stall_timeout=self.stall_timeout,
            max_width=self.max_width,
            max_height=self.max_height,
            max_audio_seconds=self.max_audio_seconds,
            cache_dir=self.cache_dir,
            fault=fault,
        ).validated()
