"""Compat media from URLs: allow-list only, size and time limits, no redirect escapes.

The allow-list bypasses of issue 11 (dot segments, encoded dot segments, a prefix that
matches a longer name) are attempted for real against a file server on loopback, whose
log must show that no request ever reached the private file.
"""

from __future__ import annotations

import functools
import http.server
import posixpath
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.errors import DownloadFailed, UploadTooLarge, UrlNotAllowed
from service.fetch import allowed, fetch, normalize
from service.settings import ServiceSettings


@dataclass
class FileServer:
    base: str
    requests: list[str] = field(default_factory=list)  # raw request paths, as logged

    def reached_private(self) -> list[str]:
        paths = [p.split("?")[0] for p in self.requests]
        return [p for p in paths if "private" in p or "%" in p or ".." in p]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """A plain static file server (it resolves '..' and %2e%2e itself, as most do)."""

    seen: list[str]

    def do_GET(self) -> None:
        self.seen.append(self.path)
        if self.path.startswith("/ok/bounce?to="):
            # e.g. Location: /ok/../private/secret.wav (the query keeps it as written)
            target = urllib.parse.unquote(self.path.removeprefix("/ok/bounce?to="))
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
            return
        if self.path.startswith("/ok/drip.wav"):
            # A hostile source: declares 200 bytes, sends 10 a second.
            self.send_response(200)
            self.send_header("Content-Length", "200")
            self.end_headers()
            try:
                for _ in range(20):
                    self.wfile.write(b"x" * 10)
                    self.wfile.flush()
                    time.sleep(1.0)
            except OSError:  # the client gave up: what the test wants
                pass
            return
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.2:9/elsewhere.wav")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(media_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    root = tmp_path_factory.mktemp("web")
    for public in ("ok", "ok-anything", "ok/sub"):
        (root / public).mkdir(parents=True, exist_ok=True)
    for name in ("speech.wav", "template.mp4"):
        shutil.copy(media_root / name, root / "ok" / name)
    shutil.copy(media_root / "speech.wav", root / "ok-anything" / "speech.wav")
    (root / "private").mkdir()
    shutil.copy(media_root / "speech.wav", root / "private" / "secret.wav")
    seen: list[str] = []
    handler = functools.partial(type("Handler", (_Handler,), {"seen": seen}), directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield FileServer(f"http://127.0.0.1:{httpd.server_address[1]}", seen)
    httpd.shutdown()
    httpd.server_close()


BYPASSES = (
    "/ok/../private/secret.wav",
    "/ok/%2e%2e/private/secret.wav",
    "/ok/%2E%2e/private/secret.wav",
    "/ok/.%2e/private/secret.wav",
    "/ok%2f..%2fprivate/secret.wav",
    "/ok/sub/../../private/secret.wav",
    "/ok/./../private/secret.wav",
    "/ok-anything/speech.wav",  # '/ok' must not cover '/ok-anything'
    "/../private/secret.wav",
    # read as '..' by some servers after our check (Tomcat ';', double decoding, Unicode)
    "/ok/..;/private/secret.wav",
    "/ok/..;x=1/private/secret.wav",
    "/ok/%252e%252e/private/secret.wav",
    "/ok/%E2%80%A5/private/secret.wav",
    "/ok/%EF%BC%8E%EF%BC%8E/private/secret.wav",
)


def _fetch(url: str, target: Path, rules: tuple[str, ...], max_bytes: int = 10**8) -> int:
    return fetch(url, target, allowlist=rules, max_bytes=max_bytes, timeout=10, what="audio_url")


@pytest.mark.parametrize("rule_path", ["/ok/", "/ok"])
def test_dot_segments_and_prefixes_cannot_escape_the_allow_list(
    server: FileServer, tmp_path: Path, rule_path: str
) -> None:
    rules = (server.base + rule_path,)
    server.requests.clear()
    for path in BYPASSES:
        with pytest.raises(UrlNotAllowed):
            _fetch(server.base + path, tmp_path / "x.wav", rules)
        assert not (tmp_path / "x.wav").exists()
    assert server.requests == [], "a refused URL was fetched anyway"
    # Dot segments that stay inside are fine, and the server is asked the normal form.
    size = _fetch(server.base + "/ok/sub/../speech.wav", tmp_path / "in.wav", rules)
    assert size == (tmp_path / "in.wav").stat().st_size > 0
    assert server.requests == ["/ok/speech.wav"]


def test_every_redirect_hop_is_judged_in_normal_form(server: FileServer, tmp_path: Path) -> None:
    rules = (server.base + "/ok/",)
    server.requests.clear()
    for hop in ("/ok/../private/secret.wav", "/ok/%2e%2e/private/secret.wav", "/redirect"):
        with pytest.raises(UrlNotAllowed, match="redirects"):
            _fetch(f"{server.base}/ok/bounce?to={_q(hop)}", tmp_path / "r.wav", rules)
    assert server.reached_private() == [], server.requests
    assert len(server.requests) == 3  # only the three first hops were asked for
    _fetch(f"{server.base}/ok/bounce?to={_q('/ok/sub/../speech.wav')}", tmp_path / "ok.wav", rules)
    assert server.requests[-1] == "/ok/speech.wav"


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def test_the_bypass_through_the_compat_api(
    server: FileServer, make_settings: Callable[..., ServiceSettings]
) -> None:
    settings = make_settings(url_allowlist=f"{server.base}/ok/", url_max_bytes=10**8)
    with TestClient(create_app(settings)) as client:
        server.requests.clear()
        for n, path in enumerate(BYPASSES):
            refused = client.post(
                "/easy/submit",
                json={
                    "audio_url": server.base + path,
                    "video_url": f"{server.base}/ok/template.mp4",
                    "code": f"bypass-{n}",
                },
            ).json()
            assert refused["code"] == 10002 and "allow-list" in refused["msg"], refused
        assert server.reached_private() == [], server.requests
        ok = client.post(
            "/easy/submit",
            json={
                "audio_url": f"{server.base}/ok/speech.wav",
                "video_url": f"{server.base}/ok/template.mp4",
                "code": "from-url",
            },
        ).json()
        assert ok["code"] == 10000, ok


SEGMENTS = st.sampled_from(
    ["ok", "private", "..", ".", "%2e%2e", "%2E.", ".%2e", "%2f", "ok-x", "a.wav", "", "%252e"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(SEGMENTS, min_size=1, max_size=6))
def test_what_is_allowed_is_what_a_static_server_serves_inside_the_prefix(
    parts: list[str],
) -> None:
    """Judged by the resolution a file server applies (posixpath.normpath after one
    percent-decoding), not by the code under test: what is fetched (the normal form that
    was checked) never lands outside the allowed directory."""
    url = "http://127.0.0.1:8000/" + "/".join(parts)
    checked = allowed(url, ("http://127.0.0.1:8000/ok/",))
    if checked is None:
        return
    served = posixpath.normpath(urllib.parse.unquote(urllib.parse.urlsplit(checked).path))
    assert served.startswith("/ok/"), (url, checked, served)


def test_allow_list_matching() -> None:
    rules = ("https://cdn.example.com/media/", "http://127.0.0.1:8000/")
    assert allowed("https://cdn.example.com/media/a.wav", rules)
    assert allowed("HTTPS://CDN.example.com:443/media/a.wav", rules)
    assert allowed("https://cdn.example.com./media/a.wav", rules)
    assert not allowed("https://cdn.example.com/other/a.wav", rules)
    assert not allowed("https://cdn.example.com/media", rules)  # the directory itself
    assert not allowed("https://cdn.example.com.evil.net/media/a.wav", rules)
    assert not allowed("https://user:pw@cdn.example.com/media/a.wav", rules)
    assert not allowed("http://127.0.0.1:8001/a.wav", rules)
    assert not allowed("file:///etc/passwd", rules)
    assert not allowed("http://127.0.0.1:8000/a\\..\\b.wav", rules)
    assert not allowed("http://127.0.0.1:8000/a%00.wav", rules)
    assert normalize("http://Example.com/a/./b/../c.wav?x=1").geturl() == (
        "http://example.com:80/a/c.wav?x=1"
    )


def test_fetch_limits(server: FileServer, tmp_path: Path) -> None:
    rules = (server.base + "/ok/",)
    size = _fetch(f"{server.base}/ok/speech.wav", tmp_path / "a.wav", rules)
    assert size == (tmp_path / "a.wav").stat().st_size > 0
    with pytest.raises(UploadTooLarge):
        _fetch(f"{server.base}/ok/speech.wav", tmp_path / "b.wav", rules, max_bytes=1000)
    assert not (tmp_path / "b.wav").exists()
    with pytest.raises(UrlNotAllowed, match="redirects"):
        _fetch(f"{server.base}/ok/bounce?to=%2Fredirect", tmp_path / "c.wav", rules)
    with pytest.raises(DownloadFailed, match="404"):
        _fetch(f"{server.base}/ok/missing.wav", tmp_path / "d.wav", rules)


def test_the_timeout_bounds_the_whole_download_of_a_dripping_source(
    server: FileServer, tmp_path: Path
) -> None:
    """Each read used to wait for a whole 256 KiB chunk: a source sending 10 bytes a second
    held the request for its full 20 s whatever the timeout."""
    started = time.monotonic()
    with pytest.raises(DownloadFailed, match="longer than 2 s"):
        fetch(
            f"{server.base}/ok/drip.wav",
            tmp_path / "drip.wav",
            allowlist=(server.base + "/ok/",),
            max_bytes=10**6,
            timeout=2,
            what="audio_url",
        )
    assert time.monotonic() - started < 6  # the deadline and at most one socket timeout
    assert not (tmp_path / "drip.wav").exists()


def test_a_non_ascii_file_name_is_still_fetched(server: FileServer, tmp_path: Path) -> None:
    """HeyGem's users name files in Chinese: only dot look-alikes are refused."""
    assert allowed(server.base + "/ok/%E8%AF%AD%E9%9F%B3.wav", (server.base + "/ok/",))
