"""Files written under a temporary name beside their target and renamed into place, so
that nobody (a concurrent job, the next run after a crash) reads half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from heygem.errors import OutputNotWritable


def partial_beside(target: Path, *, what: str, hint: str) -> Path:
    """A new empty file in ``target``'s folder (the same file system, so ``os.replace``
    onto ``target`` is atomic). ``what`` names the content in the error."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        os.close(fd)
    except OSError as exc:
        raise OutputNotWritable(
            f"cannot write {what} to {str(target.parent)!r}: {exc}", hint=hint
        ) from exc
    return Path(name)
