"""Service fixtures: settings on temporary directories, clients, a media root, polling."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from heygem.audio.synth import synth_speech
from heygem.demo import write_wav
from service.app import create_app
from service.settings import ServiceSettings
from tests.service.cluster import RedisServer
from tests.service.helpers import SPEECH_SECONDS


@pytest.fixture(scope="session")
def media_root(tmp_path_factory: pytest.TempPathFactory, template_mp4: Path) -> Path:
    """A media root (HeyGem clients' shared volume) with 2 s of speech and the template.

    The speech is shorter than the shared 5 s fixture: jobs here test the service, not
    the pipeline, and the suite runs many of them.
    """
    root = tmp_path_factory.mktemp("media-root")
    write_wav(root / "speech.wav", synth_speech(SPEECH_SECONDS, seed=3))
    shutil.copy(template_mp4, root / "template.mp4")
    (root / "sub").mkdir()
    shutil.copy(root / "speech.wav", root / "sub" / "speech.wav")
    return root


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis for the session's celery-executor tests (each test uses its own queue)."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def executor() -> str:
    """The executor the app under test uses; modules that run on both parametrize it."""
    return "local"


def executor_settings(executor: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """Settings for ``executor``: for celery, the session's Redis and a queue of its own."""
    if executor == "local":
        return {}
    redis: RedisServer = request.getfixturevalue("redis_server")
    return {
        "executor": "celery",
        "broker_url": redis.url,
        "celery_queue": f"test-{uuid.uuid4().hex[:12]}",
    }


@pytest.fixture
def make_settings(
    tmp_path: Path,
    shared_cache: Path,
    media_root: Path,
    executor: str,
    request: pytest.FixtureRequest,
) -> Callable[..., ServiceSettings]:
    def make(**overrides: Any) -> ServiceSettings:
        """Test settings; ``pipeline`` overrides merge into the test pipeline's options."""
        pipeline = {"cache_dir": shared_cache, "batch_size": 8} | overrides.pop("pipeline", {})
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "media_root": media_root,
            "workers": 0,
            "allow_fault_injection": True,
            "publish_compat_results": False,
            "pipeline": pipeline,
            **executor_settings(executor, request),
        }
        values.update(overrides)
        return ServiceSettings(**values)

    return make


@pytest.fixture
def client(make_settings: Callable[..., ServiceSettings]) -> Iterator[TestClient]:
    """An app without workers: jobs are admitted and stay queued."""
    with TestClient(create_app(make_settings())) as test_client:
        yield test_client
