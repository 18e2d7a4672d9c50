"""`heygem serve` start-up: every bad setting is one clear line and exit status 2; the log
level setting takes effect under `heygem serve` (the server itself: test_server.py)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from heygem.config import option_specs
from service.cli import check_settings, is_loopback, serve
from service.options import PipelineSettings
from service.settings import ServiceSettings
from tests.helpers import wait_for
from tests.service.helpers import KEYS, free_port

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "HEYGEM_SERVICE_"

# One bad value per setting. A new setting without an entry here fails the coverage test.
BAD: dict[str, str] = {
    "host": "bad host!",
    "port": "70000",
    "log_level": "loud",
    "data_dir": "<a file>",
    "media_root": "/no/such/directory",
    "publish_compat_results": "maybe",
    "reports_dir": "/no/such/directory",
    "workers": "-1",
    "heartbeat_interval": "0",
    "worker_stall_timeout": "-5",
    "worker_start_timeout": "0",
    "cancel_grace": "soon",
    "job_timeout": "0",
    "job_timeout_min": "-1",
    "job_timeout_per_audio_second": "0",
    "on_restart": "sometimes",
    "max_attempts": "0",
    "worker_max_jobs": "0",
    "worker_max_rss_mib": "0",
    "shutdown_grace": "-1",
    "max_queue": "0",
    "max_queued_per_client": "100",  # above max_queue
    "retry_after_seconds": "0",
    "max_upload_bytes": "0",
    "max_video_seconds": "0",
    "url_allowlist": "ftp://example.com/media/",
    "url_max_bytes": "0",
    "url_timeout": "0",
    "min_free_disk_bytes": "-1",
    "body_read_timeout": "0",
    "api_key": "   ",
    "api_keys": "alice:tooshort",
    "admin_clients": "nobody",
    "api_key_header": "X Bad Header",
    "allow_remote_without_key": "maybe",
    "job_ttl": "0",
    "upload_ttl": "-3",
    "cache_max_bytes": "-1",
    "cache_keep_recent": "-1",
    "retention_interval": "0",
    "pipeline": '{"batch_size": 0}',
    "allow_fault_injection": "maybe",
    "executor": "kubernetes",
    "broker_url": "amqp://guest@rabbit//",
    "celery_queue": "bad queue!",
    "broker_visibility_timeout": "0",
    "database_path": "/proc/heygem/jobs.sqlite3",
}


def _pipeline_bad(spec_kind: type, choices: tuple[str, ...]) -> str:
    if choices:
        return "bogus"
    return {bool: "maybe", int: "x", float: "x"}.get(spec_kind, "bogus:kind")


# One bad value per pipeline option (HEYGEM_SERVICE_PIPELINE__<OPTION>), from GenerateOptions.
PIPELINE_BAD: dict[str, str] = {
    spec.name: _pipeline_bad(spec.kind, spec.choices)
    for spec in option_specs()
    if spec.kind is not Path
} | {"cache_dir": "<a file>", "checkpoint": "/no/such/wav2lip.pth"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """No HEYGEM_SERVICE_* from outside; root logging restored afterwards."""
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.setenv(PREFIX + "DATA_DIR", str(tmp_path / "data"))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield monkeypatch
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def busy_port() -> Iterator[int]:
    """A loopback port that is taken, so a server that wrongly starts fails at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("heygem serve: error: "), err
    return lines[0]


def test_every_setting_has_a_bad_value_in_this_test() -> None:
    assert set(BAD) == set(ServiceSettings.model_fields)
    assert set(PIPELINE_BAD) == set(PipelineSettings.model_fields)


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_setting_is_one_line_and_exit_2(
    name: str,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    busy_port: int,
) -> None:
    value = BAD[name]
    if value == "<a file>":
        value = str(tmp_path / "a-file")
        Path(value).write_text("not a directory")
    variable = PREFIX + name.upper()
    clean_env.setenv(variable, value)
    # A port in use is the guard: were the value accepted, the server could not start.
    assert serve([] if name == "port" else ["--port", str(busy_port)]) == 2
    line = _one_error_line(capsys)
    assert variable in line, line


@pytest.mark.parametrize("name", sorted(PIPELINE_BAD))
def test_a_bad_pipeline_option_is_one_line_and_exit_2(
    name: str,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    busy_port: int,
) -> None:
    value = PIPELINE_BAD[name]
    if value == "<a file>":
        value = str(tmp_path / "a-file")
        Path(value).write_text("not a directory")
    variable = f"{PREFIX}PIPELINE__{name.upper()}"
    clean_env.setenv(variable, value)
    assert serve(["--port", str(busy_port)]) == 2
    line = _one_error_line(capsys)
    assert variable in line or name.replace("_", " ") in line, line


def test_secrets_are_not_echoed(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv(PREFIX + "API_KEYS", "alice:my-secret")
    assert serve(["--port", "1"]) == 2
    line = _one_error_line(capsys)
    assert "my-secret" not in line and "at least 16" in line


def test_url_allow_list_as_json_or_comma_separated(clean_env: pytest.MonkeyPatch) -> None:
    wanted = ("http://127.0.0.1:9000/ok/", "https://cdn.example.com/media/")
    clean_env.setenv(PREFIX + "URL_ALLOWLIST", " , ".join(wanted))
    assert ServiceSettings().url_allowlist == wanted
    clean_env.setenv(PREFIX + "URL_ALLOWLIST", '["http://127.0.0.1:9000/ok/"]')
    assert ServiceSettings().url_allowlist == wanted[:1]
    clean_env.setenv(PREFIX + "URL_ALLOWLIST", "http://127.0.0.1:9000/ok/")
    assert ServiceSettings().url_allowlist == wanted[:1]


def test_api_keys_as_json_or_comma_separated(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv(PREFIX + "API_KEYS", f"alice:{KEYS['alice']}, bob:{KEYS['bob']}")
    clean_env.setenv(PREFIX + "ADMIN_CLIENTS", "bob")
    clients = ServiceSettings().clients
    assert [(c.name, c.admin) for c in clients] == [("alice", False), ("bob", True)]
    assert clients[0].key.get_secret_value() == KEYS["alice"]
    clean_env.setenv(PREFIX + "API_KEYS", f'{{"alice": "{KEYS["alice"]}"}}')
    clean_env.delenv(PREFIX + "ADMIN_CLIENTS")
    assert [c.name for c in ServiceSettings().clients] == ["alice"]


@pytest.mark.parametrize("key", ["", "   ", "\t", "short-key"])
def test_empty_or_weak_key_cannot_open_a_remote_bind(
    key: str, clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Item 2: HEYGEM_SERVICE_API_KEY= used to turn auth off and pass the bind check."""
    clean_env.setenv(PREFIX + "API_KEY", key)
    assert serve(["--host", "0.0.0.0", "--port", "1"]) == 2
    line = _one_error_line(capsys)
    assert PREFIX + "API_KEY" in line


def test_refuses_remote_bind_without_api_key(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert serve(["--host", "0.0.0.0", "--port", "1"]) == 2
    assert "without an API key" in _one_error_line(capsys)


def test_unknown_settings_are_reported(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv(PREFIX + "WROKERS", "2")
    assert serve(["--port", "1"]) == 2
    assert "HEYGEM_SERVICE_WROKERS" in _one_error_line(capsys)


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert not is_loopback("example.com")


@pytest.mark.parametrize(
    ("level", "present", "absent"),
    [("debug", "DEBUG service.access", "-"), ("warning", "-", "INFO ")],
)
def test_log_level_takes_effect_under_heygem_serve(
    level: str, present: str, absent: str, tmp_path: Path
) -> None:
    """`heygem serve` (through the heygem CLI's entry point) honours the log level."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)} | {
        PREFIX + "LOG_LEVEL": level,
        PREFIX + "WORKERS": "0",
    }
    out = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "heygem.cli", "serve", "--port", str(port),
         "--data-dir", str(tmp_path / "data")],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:

            def up() -> bool:
                assert server.poll() is None, (tmp_path / "server.log").read_text()
                try:
                    return client.get("/healthz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_for(up, timeout=60, interval=0.1)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        out.close()
    text = (tmp_path / "server.log").read_text()
    if present != "-":
        assert present in text and "req=" in text, text
    if absent != "-":
        assert absent not in text, text


@pytest.mark.parametrize(
    ("variable", "value"),
    [("PIPELINE", "{not json"), ("API_KEYS", '{"alice": '), ("URL_ALLOWLIST", "[oops")],
)
def test_broken_json_is_one_line_too(
    variable: str,
    value: str,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    busy_port: int,
) -> None:
    clean_env.setenv(PREFIX + variable, value)
    assert serve(["--port", str(busy_port)]) == 2
    line = _one_error_line(capsys)
    assert PREFIX + variable in line or "JSON" in line, line


def test_processes_checking_one_shared_directory_at_once_all_pass(
    tmp_path: Path, clean_env: pytest.MonkeyPatch
) -> None:
    """Workers on several machines start together on one shared data directory: each
    start-up check writes a probe of its own (a shared probe name let one delete another's
    under it, and that worker exited with "not a writable directory")."""
    shared = tmp_path / "shared"
    settings = ServiceSettings(data_dir=shared, pipeline={"cache_dir": shared / "cache"})
    with ThreadPoolExecutor(8) as pool:
        problems = list(pool.map(lambda _: check_settings(settings), range(400)))
    assert problems == [None] * 400
    assert not [p.name for p in shared.rglob(".heygem-write-test*")]
