"""Download compat-API media from allow-listed URLs only, within size and time limits.

Redirects are followed only to URLs that are themselves allow-listed, so an allowed host
cannot bounce the service to an internal address.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPMessage
from pathlib import Path
from typing import IO, Any

from service.errors import DownloadFailed, UploadTooLarge, UrlNotAllowed

CHUNK = 256 * 1024


def is_url(reference: str) -> bool:
    return reference.lower().startswith(("http://", "https://"))


def allowed(url: str, allowlist: tuple[str, ...]) -> bool:
    """Scheme, host and port must match a prefix exactly; its path must prefix the URL's."""
    target = urllib.parse.urlsplit(url)
    if target.username or target.password:
        return False
    for prefix in allowlist:
        rule = urllib.parse.urlsplit(prefix)
        if (target.scheme.lower(), _netloc(target)) != (rule.scheme.lower(), _netloc(rule)):
            continue
        if target.path.startswith(rule.path or "/"):
            return True
    return False


def _netloc(parts: urllib.parse.SplitResult) -> str:
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    return f"{host}:{port}"


class _AllowListRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, allowlist: tuple[str, ...]) -> None:
        self.allowlist = allowlist

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        if not allowed(newurl, self.allowlist):
            raise UrlNotAllowed(
                f"{req.full_url} redirects to {newurl}, which is not allowed",
                hint="allow-list the final location or link to it directly",
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def fetch(
    url: str, target: Path, *, allowlist: tuple[str, ...], max_bytes: int, timeout: float, what: str
) -> int:
    """Download ``url`` to ``target``; return its size. Raises UrlNotAllowed/UploadTooLarge."""
    if not allowed(url, allowlist):
        raise UrlNotAllowed(
            f"{what}: {url!r} is not on the URL allow-list",
            hint="use a path under the media root, or have the operator add "
            "the URL prefix to HEYGEM_SERVICE_URL_ALLOWLIST",
        )
    opener = urllib.request.build_opener(_AllowListRedirects(allowlist))
    deadline = time.monotonic() + timeout
    size = 0
    try:
        response: Any = opener.open(url, timeout=timeout)
        with response, target.open("wb") as out:
            declared = response.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise UploadTooLarge(
                    f"{what}: {url} is {declared} bytes, above the {max_bytes} byte limit",
                    hint="use a smaller file",
                )
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(
                        f"{what}: {url} is larger than the {max_bytes} byte limit",
                        hint="use a smaller file",
                    )
                if time.monotonic() > deadline:
                    raise DownloadFailed(
                        f"{what}: downloading {url} took longer than {timeout:g} s",
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
            f"{what}: could not download {url}: {reason}",
            hint="check that the URL is reachable from the server",
        ) from exc
    return size
