"""Web page fixtures: media for the page's uploads, a real server, a real browser."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from heygem.audio.synth import synth_speech
from heygem.demo import write_wav
from service.app import create_app
from service.settings import ServiceSettings
from tests.service.cluster import RedisServer, Worker, worker_env
from tests.service.server import Server, running_server
from tests.web.browser import Browser, browser_binaries, chromium

SPEECH_SECONDS = 2.0
# A file name that would run script if a page ever put it into HTML (no '/': it is a file).
XSS_NAME = "<script>alert('name')<script><img src=x onerror=alert(1)>.wav"


@pytest.fixture(scope="session")
def web_media(
    tmp_path_factory: pytest.TempPathFactory, template_mp4: Path, faceless_mp4: Path
) -> Path:
    """What a user would pick in the page's file inputs (also the server's media root)."""
    root = tmp_path_factory.mktemp("web-media")
    write_wav(root / "speech.wav", synth_speech(SPEECH_SECONDS, seed=3))
    shutil.copy(root / "speech.wav", root / XSS_NAME)
    shutil.copy(template_mp4, root / "template.mp4")
    shutil.copy(faceless_mp4, root / "no-face.mp4")
    return root


@pytest.fixture(scope="module")
def web_server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    web_media: Path,
    shared_cache: Path,
) -> Iterator[Server]:
    """``heygem serve`` with no key (the new user's first run) and one worker: a local
    worker process, or with ``indirect`` parameter "celery" a Redis and a ``heygem worker``
    started as the README's scale-out section says."""
    browser_binaries()  # skip before starting a server nobody would browse
    executor = getattr(request, "param", "local")
    directory = tmp_path_factory.mktemp(f"web-server-{executor}")
    if executor == "local":
        with running_server(
            directory,
            media_root=web_media,
            cache=shared_cache,
            workers=1,
            allow_fault_injection="1",
        ) as server:
            yield server
        return
    redis = RedisServer(directory / "redis")
    redis.start()
    # A cooperative stop gets 5 s before the worker's process is ended (as test_celery's).
    celery = {
        "executor": "celery",
        "broker_url": redis.url,
        "celery_queue": "web",
        "cancel_grace": "5",
    }
    try:
        with running_server(
            directory,
            media_root=web_media,
            cache=shared_cache,
            workers=0,
            allow_fault_injection="1",
            **celery,
        ) as server:
            shared = celery | {
                "data_dir": str(server.data_dir),
                "media_root": str(web_media),
                "pipeline__cache_dir": str(shared_cache),
                "pipeline__batch_size": "8",
            }
            env = worker_env({f"HEYGEM_SERVICE_{k.upper()}": v for k, v in shared.items()})
            worker = Worker("web@machine-0", directory / "machine-0", env, ["--concurrency", "1"])
            worker.start()
            try:
                yield server
            finally:
                worker.stop()
    finally:
        redis.stop()


@pytest.fixture
def browser(web_server: Server) -> Iterator[Browser]:
    with chromium(web_server.base) as session:
        yield session
        errors = session.console_errors()
    assert not errors, f"errors in the browser console: {errors}"


@pytest.fixture
def make_web_settings(
    tmp_path: Path, shared_cache: Path, web_media: Path
) -> Callable[..., ServiceSettings]:
    def make(**overrides: Any) -> ServiceSettings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "media_root": web_media,
            "workers": 0,
            "publish_compat_results": False,
            "pipeline": {"cache_dir": shared_cache, "batch_size": 8},
        }
        return ServiceSettings(**values | overrides)

    return make


@pytest.fixture
def web_client(make_web_settings: Callable[..., ServiceSettings]) -> Iterator[TestClient]:
    """The app without workers and without keys (jobs stay queued)."""
    with TestClient(create_app(make_web_settings())) as client:
        yield client
