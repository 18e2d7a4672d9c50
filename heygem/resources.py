"""One place that decides how many threads each consumer gets.

torch intra-op threads, ORT intra-op threads, x264 threads and DataLoader workers
together must not oversubscribe the CPUs this process may actually use: the affinity
mask and the cgroup CPU quota, not ``os.cpu_count()`` (HeyGem's NumExpr saw 72 cores in a
container limited to a few).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max`` or v1 CFS), None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    count = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    limit = cgroup_cpu_limit()
    if limit is not None:
        count = min(count, max(1, math.ceil(limit)))
    return max(1, count)


@dataclass(frozen=True)
class ThreadBudget:
    cpus: int
    torch_threads: int
    ort_threads: int
    x264_threads: int
    decode_threads: int

    @classmethod
    def for_machine(cls, cpus: int | None = None) -> ThreadBudget:
        cpus = usable_cpus() if cpus is None else cpus
        # Decode and encode dominate a talking-head job; the model only sees mouth crops,
        # so one or two compute threads are plenty and leave the codecs their cores.
        compute = max(1, min(2, cpus // 2))
        return cls(
            cpus=cpus,
            torch_threads=compute,
            ort_threads=compute,
            x264_threads=cpus,
            decode_threads=max(1, min(4, cpus)),
        )
