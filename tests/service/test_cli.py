"""`heygem serve` argument handling (the server itself is tested in test_server.py)."""

from __future__ import annotations

import pytest

from service.cli import is_loopback, serve


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert not is_loopback("example.com")


def test_refuses_remote_bind_without_api_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve(["--host", "0.0.0.0", "--port", "1"]) == 2
    assert "without an API key" in capsys.readouterr().err


def test_invalid_settings_are_reported(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert serve(["--port", "70000"]) == 2
    assert "port" in capsys.readouterr().err
    monkeypatch.setenv("HEYGEM_SERVICE_GENERATOR", "wav2lip")  # needs a checkpoint
    assert serve(["--port", "1"]) == 10
    assert "checkpoint" in capsys.readouterr().err
