"""Keep server paths out of what clients read.

Messages from the pipeline and from media probing name files by their server paths
(``'/srv/heygem/jobs/<id>/video.mp4' could not be decoded``). Clients get the names they
used themselves (the upload's file name, their media-root path); any other path under a
server directory becomes ``<server path>``. The unredacted text goes to the log.
"""

from __future__ import annotations

import re
import sys
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

HIDDEN = "<server path>"


class Redactor:
    def __init__(self, hidden_roots: Iterable[Path]) -> None:
        roots: set[str] = set()
        for root in hidden_roots:
            for variant in (root, root.expanduser().absolute(), _resolved(root)):
                text = str(variant).rstrip("/")
                if len(text) > 1:
                    roots.add(text)
        ordered = sorted(roots, key=len, reverse=True)
        self._roots = (
            re.compile(
                "(?:" + "|".join(re.escape(r) for r in ordered) + r")(?:/[^\s'\"]*)?"
                r"(?=[\s'\",;:)\]]|$)"
            )
            if ordered
            else None
        )

    @classmethod
    def for_service(cls, *roots: Path | None) -> Redactor:
        """Hide the given directories, the temp directory, home and the installation."""
        extra = [Path(tempfile.gettempdir()), Path.home(), Path(sys.prefix)]
        return cls([r for r in (*roots, *extra) if r is not None])

    def text(self, text: str, names: Mapping[str, str] | None = None) -> str:
        """``text`` with known paths replaced by their client names, others hidden."""
        for path, name in sorted((names or {}).items(), key=lambda kv: len(kv[0]), reverse=True):
            if path:
                text = text.replace(path, name)
        return self._roots.sub(HIDDEN, text) if self._roots is not None else text


def _resolved(path: Path) -> Path:
    try:
        return path.expanduser().resolve()
    except (OSError, RuntimeError):
        return path
