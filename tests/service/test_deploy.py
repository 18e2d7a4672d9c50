"""The docker compose example (deploy/) is parsed and checked for what a scaled-out
deployment needs: Redis with AOF and a health check, the API on the celery executor, GPU
workers with a big /dev/shm and a GPU each, one shared volume, health checks everywhere,
and settings and flags that the real parsers accept (Docker itself cannot run here)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import ServiceSettings, unknown_env_vars
from service.worker_cli import build_parser, parse_device

COMPOSE = Path(__file__).resolve().parents[2] / "deploy" / "docker-compose.yml"
GiB = 1024**3
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([bkmg]?)b?$", re.IGNORECASE)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _bytes(size: str | int) -> int:
    match = _SIZE.match(str(size).strip())
    assert match, f"not a compose size: {size!r}"
    unit = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": GiB}[match.group(2).lower()]
    return int(float(match.group(1)) * unit)


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    assert isinstance(env, dict), "environment as a mapping"
    return {k: str(v) for k, v in env.items()}


def _substituted(env: dict[str, str]) -> dict[str, str]:
    """Compose's ${VAR:?message} with a value, as `docker compose` would after checking."""
    return {k: re.sub(r"\$\{[^}]+\}", "x" * 32, v) for k, v in env.items()}


def _shared_mount(service: dict[str, Any], data_dir: str) -> str:
    mounts = [v for v in service.get("volumes", []) if str(v).endswith(":" + data_dir)]
    assert len(mounts) == 1, service.get("volumes")
    return str(mounts[0]).split(":", 1)[0]


def _workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if service.get("command", [])[:2] == ["heygem", "worker"]
    }


def test_redis_persists_and_reports_health(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(str(v).endswith(":/data") for v in redis["volumes"])  # AOF on a volume
    assert redis["volumes"][0].split(":")[0] in compose["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_the_api_runs_the_celery_executor(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    env = _env(api)
    assert api["command"][:2] == ["heygem", "serve"]
    assert env["HEYGEM_SERVICE_EXECUTOR"] == "celery"
    assert env["HEYGEM_SERVICE_BROKER_URL"].startswith("redis://redis:")
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    assert unknown_env_vars(env) == []
    settings = ServiceSettings(**_as_settings(_substituted(env)))
    assert settings.auth_enabled  # it listens beyond loopback: a key is required
    assert not str(settings.database).startswith(str(settings.data_dir))  # not on NFS
    _shared_mount(api, env["HEYGEM_SERVICE_DATA_DIR"])


def test_gpu_workers_share_the_volume_and_get_shm_and_a_gpu_each(compose: dict[str, Any]) -> None:
    api_env = _env(compose["services"]["api"])
    data_dir = api_env["HEYGEM_SERVICE_DATA_DIR"]
    api_volume = _shared_mount(compose["services"]["api"], data_dir)
    workers = _workers(compose)
    assert len(workers) >= 2, "the example shows N workers"
    gpus, names = [], []
    for name, worker in workers.items():
        env = _env(worker)
        assert unknown_env_vars(env) == []
        for key in (
            "HEYGEM_SERVICE_BROKER_URL",
            "HEYGEM_SERVICE_DATA_DIR",
            "HEYGEM_SERVICE_EXECUTOR",
        ):
            assert env[key] == api_env[key], (name, key)
        assert _shared_mount(worker, data_dir) == api_volume, name
        assert _bytes(worker["shm_size"]) >= 2 * GiB, name
        args = build_parser().parse_args(worker["command"][2:])  # the real flags
        device, index = parse_device(args.device)
        assert device == "cuda" and index is not None, name
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and "gpu" in devices[0]["capabilities"], name
        assert devices[0]["driver"] == "nvidia"
        # The reserved GPU is the one the worker uses (CUDA_VISIBLE_DEVICES=index).
        assert devices[0]["device_ids"] == [index], name
        gpus.append(index)
        names.append(args.name)
        health = " ".join(worker["healthcheck"]["test"])
        assert "inspect ping" in health and f"-d {args.name}" in health, name
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
        assert worker["depends_on"]["api"]["condition"] == "service_healthy"
    assert len(set(gpus)) == len(gpus) and len(set(names)) == len(names)


def test_every_service_restarts_and_is_health_checked(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        assert service.get("restart") == "unless-stopped", name
        assert service.get("healthcheck", {}).get("test"), name


def _as_settings(env: dict[str, str]) -> dict[str, Any]:
    """HEYGEM_SERVICE_* variables as ServiceSettings keyword arguments (no os.environ)."""
    prefix = "HEYGEM_SERVICE_"
    assert not any(k.startswith(prefix) for k in os.environ), "clean environment expected"
    return {k.removeprefix(prefix).lower(): v for k, v in env.items()} | {"host": "0.0.0.0"}
