"""The shared media directory of a scaled-out service: what must be shared, and the checks.

With the ``celery`` executor, media travel by reference, never through the broker. The
API and every ``heygem worker`` mount one directory (e.g. NFS), each as its own
``HEYGEM_SERVICE_DATA_DIR`` (the mount point may differ per machine):

- ``jobs/<id>/``: a job's uploaded inputs (written by the API) and its result
  (written by the worker, downloaded through the API);
- ``uploads/``: files from ``POST /v1/uploads`` that jobs reference;
- ``cache/``: the template cache (unless ``HEYGEM_SERVICE_PIPELINE__CACHE_DIR`` puts it
  on a local disk of each machine);
- the media root (``HEYGEM_SERVICE_MEDIA_ROOT``), when the HeyGem-compatible API or
  ``*_path`` references are used, must be shared the same way.

Paths in a task are therefore relative to one of those roots, and each side resolves them
under its own mount. The API writes a marker file into the directory; a worker that
does not find it (an empty local directory where the mount should be) refuses to start.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from heygem.errors import HeygemError
from service.settings import ENV_PREFIX, ServiceSettings

MARKER = ".heygem-shared.json"
DATA, MEDIA, ABSOLUTE = "data", "media", "absolute"


class SharedDirectoryError(HeygemError):
    """A worker cannot use the shared directory (missing, not the API's, not writable)."""


def write_marker(data_dir: Path) -> dict[str, Any]:
    """The API's mark on the directory it shares with its workers (kept if present)."""
    path = data_dir / MARKER
    try:
        marker: dict[str, Any] = json.loads(path.read_text())
        return marker
    except (OSError, ValueError):
        pass
    marker = {
        "id": uuid.uuid4().hex,
        "created_by": f"heygem serve on {socket.gethostname()} (pid {os.getpid()})",
        "created_at": time.time(),
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(marker))
    temporary.replace(path)
    return marker


def to_ref(path: str | Path, settings: ServiceSettings) -> dict[str, str]:
    """``path`` relative to the shared root it lives under (how a task names it)."""
    resolved = Path(path).resolve()
    for root, base in ((DATA, settings.data_dir), (MEDIA, settings.media_root)):
        if base is None:
            continue
        try:
            return {"root": root, "path": str(resolved.relative_to(Path(base).resolve()))}
        except ValueError:
            continue
    return {"root": ABSOLUTE, "path": str(resolved)}


def from_ref(ref: dict[str, str], settings: ServiceSettings) -> Path:
    """A task's path reference under this machine's own mounts."""
    root, relative = ref["root"], ref["path"]
    if root == DATA:
        return settings.data_dir / relative
    if root == MEDIA:
        if settings.media_root is None:
            raise SharedDirectoryError(
                f"a job references the media root ({relative}), but this worker has none",
                hint=f"set {ENV_PREFIX}MEDIA_ROOT on the worker to the shared media root",
            )
        return settings.media_root / relative
    return Path(relative)


def check_worker_access(settings: ServiceSettings) -> dict[str, Any]:
    """What a worker checks before it starts: the API's marker is there, ``jobs/`` can be
    read and written, the media root can be read. Returns the marker; raises
    SharedDirectoryError saying what is wrong."""
    data_dir = settings.data_dir
    what = f"the shared data directory {data_dir} ({ENV_PREFIX}DATA_DIR / --data-dir)"
    if not data_dir.is_dir():
        raise SharedDirectoryError(
            f"{what} does not exist",
            hint="mount the directory the API uses (e.g. its NFS export) and point "
            "--data-dir at the mount",
        )
    try:
        marker: dict[str, Any] = json.loads((data_dir / MARKER).read_text())
    except FileNotFoundError:
        raise SharedDirectoryError(
            f"{what} has no {MARKER}: it is not the directory a heygem serve with "
            "HEYGEM_SERVICE_EXECUTOR=celery uses (an empty local directory where the shared "
            "mount should be?)",
            hint="start the API first (it writes the marker), and mount its data directory here",
        ) from None
    except (OSError, ValueError) as exc:
        raise SharedDirectoryError(f"{what}: cannot read {MARKER} ({exc})") from None
    jobs = data_dir / "jobs"
    probe = jobs / f".worker-probe-{socket.gethostname()}-{os.getpid()}"
    try:
        jobs.mkdir(exist_ok=True)
        probe.write_bytes(b"heygem")
        if probe.read_bytes() != b"heygem":
            raise OSError("what was written reads back differently")
    except OSError as exc:
        raise SharedDirectoryError(
            f"{what}: cannot write and read back a file in {jobs} ({exc})",
            hint="results are written there: give this worker's user write access "
            "(NFS: check the export's root_squash/uid mapping)",
        ) from None
    finally:
        probe.unlink(missing_ok=True)
    media = settings.media_root
    if media is not None and not os.access(media, os.R_OK | os.X_OK):
        raise SharedDirectoryError(
            f"the media root {media} ({ENV_PREFIX}MEDIA_ROOT) is not a readable directory here",
            hint="mount the media root the API uses, or unset the variable on the worker",
        )
    return marker
