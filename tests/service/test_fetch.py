"""Compat media from URLs: allow-list only, size and time limits, no redirect escapes."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.errors import DownloadFailed, UploadTooLarge, UrlNotAllowed
from service.fetch import allowed, fetch
from service.settings import ServiceSettings


class _Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.2:9/elsewhere.wav")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(media_root: Path) -> Iterator[str]:
    handler = functools.partial(_Handler, directory=str(media_root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_allow_list_matching() -> None:
    rules = ("https://cdn.example.com/media/", "http://127.0.0.1:8000/")
    assert allowed("https://cdn.example.com/media/a.wav", rules)
    assert allowed("HTTPS://CDN.example.com:443/media/a.wav", rules)
    assert not allowed("https://cdn.example.com/other/a.wav", rules)
    assert not allowed("https://cdn.example.com.evil.net/media/a.wav", rules)
    assert not allowed("https://user:pw@cdn.example.com/media/a.wav", rules)
    assert not allowed("http://127.0.0.1:8001/a.wav", rules)
    assert not allowed("file:///etc/passwd", rules)


def test_fetch_limits(server: str, tmp_path: Path) -> None:
    rules = (server + "/",)
    size = fetch(
        f"{server}/speech.wav",
        tmp_path / "a.wav",
        allowlist=rules,
        max_bytes=10**8,
        timeout=10,
        what="audio_url",
    )
    assert size == (tmp_path / "a.wav").stat().st_size > 0
    with pytest.raises(UploadTooLarge):
        fetch(
            f"{server}/speech.wav",
            tmp_path / "b.wav",
            allowlist=rules,
            max_bytes=1000,
            timeout=10,
            what="audio_url",
        )
    assert not (tmp_path / "b.wav").exists()
    with pytest.raises(UrlNotAllowed, match="redirects"):
        fetch(
            f"{server}/redirect",
            tmp_path / "c.wav",
            allowlist=rules,
            max_bytes=10**8,
            timeout=10,
            what="audio_url",
        )
    with pytest.raises(DownloadFailed, match="404"):
        fetch(
            f"{server}/missing.wav",
            tmp_path / "d.wav",
            allowlist=rules,
            max_bytes=10**8,
            timeout=10,
            what="audio_url",
        )


def test_compat_submit_from_allow_listed_url(
    server: str, make_settings: Callable[..., ServiceSettings]
) -> None:
    settings = make_settings(url_allowlist=(server + "/",), url_max_bytes=10**8)
    with TestClient(create_app(settings)) as client:
        ok = client.post(
            "/easy/submit",
            json={
                "audio_url": f"{server}/speech.wav",
                "video_url": f"{server}/template.mp4",
                "code": "from-url",
            },
        ).json()
        assert ok["code"] == 10000, ok
        refused = client.post(
            "/easy/submit",
            json={
                "audio_url": "https://example.com/a.wav",
                "video_url": "template.mp4",
                "code": "elsewhere",
            },
        ).json()
        assert refused["code"] == 10002 and "allow-list" in refused["msg"]
