"""Download compat-API media from allow-listed URLs only, within size and time limits.

A URL is judged in its normal form: scheme and host lower-cased, the default port made
explicit, the path percent-decoded and its dot segments resolved (RFC 3986 5.2.4), then
compared with an allow-list entry segment by segment (``/ok`` covers ``/ok/a.wav``, not
``/ok-other/a.wav``, and ``/ok/../private`` is ``/private``). What is fetched is that
normal form re-encoded, so the server reads the same path that was checked. Redirects are
judged the same way on every hop, so an allowed host cannot bounce the service elsewhere.
"""

from __future__ import annotations

import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Any

from service.errors import DownloadFailed, UploadTooLarge, UrlNotAllowed

CHUNK = 256 * 1024
_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class NormalUrl:
    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]  # decoded path segments, dot segments resolved
    trailing_slash: bool
    query: str

    def geturl(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        path = "/" + "/".join(urllib.parse.quote(s, safe="!$&'()*+,;=:@~") for s in self.segments)
        if self.trailing_slash and self.segments:
            path += "/"
        return urllib.parse.urlunsplit((self.scheme, f"{host}:{self.port}", path, self.query, ""))

    def covers(self, other: NormalUrl) -> bool:
        """This allow-list entry admits ``other``: same origin, a path-segment prefix."""
        if (self.scheme, self.host, self.port) != (other.scheme, other.host, other.port):
            return False
        rule = self.segments
        return other.segments[: len(rule)] == rule and (
            len(other.segments) > len(rule) or not self.trailing_slash or not rule
        )


def is_url(reference: str) -> bool:
    return reference.lower().startswith(("http://", "https://"))


def normalize(url: str) -> NormalUrl:
    """The normal form of an http(s) URL; ValueError says why there is none."""
    if any(ord(c) < 0x21 or c == "\\" for c in url):
        raise ValueError("contains spaces, control characters or backslashes")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _PORTS:
        raise ValueError("is not an http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("carries a user name or password")
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        raise ValueError("has no host")
    port = parts.port or _PORTS[scheme]  # raises ValueError for a bad port
    decoded = urllib.parse.unquote(parts.path, errors="strict")
    if "\x00" in decoded or "\\" in decoded:
        raise ValueError("has an encoded NUL or backslash in its path")
    # What some servers still read as '..' after us: Tomcat-style ';params' ("..;/"), a
    # second round of percent-decoding ("%252e"), look-alikes that Unicode normalisation
    # turns into '.', '/' or '%' (fullwidth '．', '‥'). Media paths need none of them;
    # other non-ASCII (a Chinese file name) is fine.
    folded = unicodedata.normalize("NFKC", decoded)
    if ";" in decoded or "%" in decoded or any(folded.count(c) != decoded.count(c) for c in "./%;"):
        raise ValueError("has ';', a '%' after decoding, or a dot look-alike in its path")
    segments: list[str] = []
    raw = decoded.split("/")[1:] if decoded.startswith("/") else decoded.split("/")
    for segment in raw:
        if segment == "..":
            if not segments:
                raise ValueError("climbs above the root with '..'")
            segments.pop()
        elif segment not in (".", ""):
            segments.append(segment)
    trailing = decoded.endswith("/") or (raw[-1:] in (["."], [".."]))
    return NormalUrl(scheme, host, port, tuple(segments), trailing, parts.query)


def parse_rule(prefix: str) -> NormalUrl:
    """An allow-list entry (ValueError names the problem: settings report it in one line)."""
    try:
        rule = normalize(prefix)
    except ValueError as exc:
        raise ValueError(f"url_allowlist entry {prefix!r} {exc}") from None
    if rule.query:
        raise ValueError(f"url_allowlist entry {prefix!r} must not have a query string")
    return rule


def allowed(url: str, allowlist: tuple[str, ...]) -> str | None:
    """The normal form to fetch if ``url`` is on the allow-list, else None."""
    try:
        target = normalize(url)
    except ValueError:
        return None
    for prefix in allowlist:
        if parse_rule(prefix).covers(target):
            return target.geturl()
    return None


class _AllowListRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, allowlist: tuple[str, ...], what: str) -> None:
        self.allowlist = allowlist
        self.what = what

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        checked = allowed(newurl, self.allowlist)
        if checked is None:
            raise UrlNotAllowed(
                f"{self.what}: the URL redirects to {newurl[:300]!r}, which is not on the "
                "URL allow-list",
                hint="allow-list the final location or link to it directly",
            )
        return super().redirect_request(req, fp, code, msg, headers, checked)


def fetch(
    url: str, target: Path, *, allowlist: tuple[str, ...], max_bytes: int, timeout: float, what: str
) -> int:
    """Download ``url`` to ``target``; return its size. Raises UrlNotAllowed/UploadTooLarge."""
    checked = allowed(url, allowlist)
    if checked is None:
        raise UrlNotAllowed(
            f"{what}: {url[:300]!r} is not on the URL allow-list",
            hint="use a path under the media root, or have the operator add "
            "the URL prefix to HEYGEM_SERVICE_URL_ALLOWLIST",
        )
    opener = urllib.request.build_opener(_AllowListRedirects(allowlist, what))
    deadline = time.monotonic() + timeout
    size = 0
    try:
        response: Any = opener.open(checked, timeout=timeout)
        with response, target.open("wb") as out:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise UploadTooLarge(
                    f"{what} is {declared} bytes, above the {max_bytes} byte limit",
                    hint="use a smaller file",
                )
            # read1 returns what has arrived (read() waited for a whole chunk: a source
            # dripping a few bytes a second held a request thread for minutes past the
            # deadline). A silent source still costs at most one socket timeout more.
            while chunk := response.read1(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(
                        f"{what} is larger than the {max_bytes} byte limit",
                        hint="use a smaller file",
                    )
                if time.monotonic() > deadline:
                    raise DownloadFailed(
                        f"{what}: the download took longer than {timeout:g} s",
                        hint="use a faster source",
                    )
                out.write(chunk)
    except (UrlNotAllowed, UploadTooLarge, DownloadFailed):
        target.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        target.unlink(missing_ok=True)
        reason = getattr(exc, "reason", None) or exc
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}"
        raise DownloadFailed(
            f"{what}: could not download it: {reason}",
            hint="check that the URL is reachable from the server",
        ) from exc
    return size
