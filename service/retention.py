"""Bounded storage: finished jobs and unused uploads expire, the template cache has a cap.

A sweeper thread runs every ``retention_interval`` seconds (and once at start-up):

- finished jobs older than ``job_ttl`` lose their row and their directory (uploads sent with
  the job, the result); a client can also ``DELETE`` a finished job at once;
- uploads not used for ``upload_ttl`` and not read by a queued or running job are removed;
- the template cache (face tracks and mouth crops of every template ever seen) is trimmed,
  least recently used entry first, to ``cache_max_bytes``; entries used in the last
  ``cache_keep_recent`` seconds stay (a running job may be reading them).

It also measures the bytes each area uses, for ``/metrics``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from heygem.errors import HeygemError
from service.lifecycle import JobLifecycle
from service.metrics import Metrics
from service.store import JobStore

log = logging.getLogger(__name__)

TEMPLATES = "templates"  # the pipeline's template cache under its cache_dir


@dataclass(frozen=True)
class RetentionPolicy:
    data_dir: Path
    cache_dir: Path
    job_ttl: float
    upload_ttl: float
    cache_max_bytes: int
    cache_keep_recent: float
    interval: float


@dataclass(frozen=True)
class SweepReport:
    jobs: int = 0
    uploads: int = 0
    cache_entries: int = 0


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 if it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += (Path(root) / name).lstat().st_size
            except OSError:
                continue
    return total


def trim_cache(cache_dir: Path, max_bytes: int, *, keep_newer_than: float) -> list[Path]:
    """Remove template cache entries, least recently used first, until they fit.

    An entry's last use is its directory's modification time (the pipeline touches it on
    every cache hit). Entries used after ``keep_newer_than`` (a time stamp) stay.
    """
    root = cache_dir / TEMPLATES
    try:
        entries = [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        return []
    sized = []
    for entry in entries:
        try:
            sized.append((entry.stat().st_mtime, tree_bytes(entry), entry))
        except OSError:
            continue
    total = sum(size for _, size, _ in sized)
    removed = []
    for used, size, entry in sorted(sized):
        if total <= max_bytes:
            break
        if used > keep_newer_than:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        total -= size
        removed.append(entry)
    return removed


class Retention:
    def __init__(
        self, policy: RetentionPolicy, lifecycle: JobLifecycle, store: JobStore, metrics: Metrics
    ) -> None:
        self.policy = policy
        self._lifecycle = lifecycle
        self._store = store
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._usage: dict[str, int] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="heygem-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)

    def usage(self) -> dict[str, int]:
        """Bytes per storage area, as of the last sweep."""
        with self._lock:
            return dict(self._usage)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:
                log.exception("retention sweep failed")
            self._stop.wait(self.policy.interval)

    def sweep(self, now: float | None = None) -> SweepReport:
        now = time.time() if now is None else now
        policy = self.policy
        jobs = self._store.finished_before(now - policy.job_ttl)
        for job in jobs:
            try:
                self._lifecycle.delete(job.id, None)
            except HeygemError:  # deleted meanwhile by its client
                continue
        uploads = self._store.uploads_unused_since(now - policy.upload_ttl)
        for upload in uploads:
            self._store.delete_upload(upload["id"])
            shutil.rmtree(Path(upload["path"]).parent, ignore_errors=True)
        evicted = trim_cache(
            policy.cache_dir,
            policy.cache_max_bytes,
            keep_newer_than=now - policy.cache_keep_recent,
        )
        report = SweepReport(len(jobs), len(uploads), len(evicted))
        self._metrics.removed("job", report.jobs)
        self._metrics.removed("upload", report.uploads)
        self._metrics.removed("cache_entry", report.cache_entries)
        if any((report.jobs, report.uploads, report.cache_entries)):
            log.info(
                "retention removed %d jobs, %d uploads, %d template cache entries",
                report.jobs,
                report.uploads,
                report.cache_entries,
            )
        self._measure()
        return report

    def _measure(self) -> None:
        policy = self.policy
        usage = {
            "jobs": tree_bytes(policy.data_dir / "jobs"),
            "uploads": tree_bytes(policy.data_dir / "uploads"),
            "cache": tree_bytes(policy.cache_dir),
            "database": sum(
                p.stat().st_size
                for p in policy.data_dir.glob(f"{self._store.path.name}*")
                if p.is_file()
            ),
        }
        with self._lock:
            self._usage = usage
