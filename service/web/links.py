"""Short-lived signed links to one job's result.

A ``<video>`` element and a download link cannot send the API key header, and the key
must never travel in a URL (it would land in histories, proxies and logs). So a client
that may read a job asks for a link with its key; the link names the job and an expiry,
signed with HMAC-SHA256 under a secret that lives only in this server process. It grants
reading that one result until it expires and nothing else; a restart voids every link
(the page asks for a new one when playback fails). Range requests work as on the
keyed route, so the video streams and seeks instead of being downloaded whole first.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass

from service.errors import Unauthorized

LINK_SECONDS = 900.0
_TOKEN = re.compile(r"^(?P<job>[0-9a-f]{32})\.(?P<expires>\d{1,12})\.(?P<sig>[0-9a-f]{64})$")


class LinkInvalid(Unauthorized):
    """A result link that was not issued by this server process, or has expired."""


@dataclass(frozen=True)
class ResultLink:
    token: str
    expires_at: float


class ResultLinks:
    def __init__(self, secret: bytes | None = None, seconds: float = LINK_SECONDS) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self.seconds = seconds

    def issue(self, job_id: str, now: float | None = None) -> ResultLink:
        expires = int((time.time() if now is None else now) + self.seconds)
        return ResultLink(f"{job_id}.{expires}.{self._sign(job_id, expires)}", float(expires))

    def job_of(self, token: str, now: float | None = None) -> str:
        """The job a valid, unexpired token names; LinkInvalid (401) otherwise."""
        match = _TOKEN.match(token)
        hint = "ask for a new link: POST /v1/generations/{id}/result-link"
        if match is None or not hmac.compare_digest(
            match["sig"], self._sign(match["job"], int(match["expires"]))
        ):
            raise LinkInvalid(
                "this result link is not valid (links end when the server restarts)", hint=hint
            )
        if int(match["expires"]) < (time.time() if now is None else now):
            raise LinkInvalid("this result link has expired", hint=hint)
        return match["job"]

    def _sign(self, job_id: str, expires: int) -> str:
        message = f"result:{job_id}:{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()
