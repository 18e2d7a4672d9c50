"""This process's cgroup limits (v1, v2 or hybrid), read along its ancestry.

Shared by the pipeline's CPU budget and the doctor, so both see the same machine: the
cgroup of *this* process (``/proc/self/cgroup``), not the hierarchy root, and the tightest
limit of its ancestors. Also the kernel's OOM-kill counter, which is the evidence that a
SIGKILL came from the OOM killer rather than from a person.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# cgroup v1 reports "no limit" as a page-rounded LONG_MAX.
_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class CgroupLimits:
    """Effective limits of this process's cgroup (the tightest along its ancestry)."""

    version: str  # "v1", "v2", "hybrid" or "none"
    cpu_quota: float | None = None  # CPUs (quota / period); None = unlimited
    memory_limit: int | None = None  # bytes; None = unlimited
    sources: list[str] = field(default_factory=list)


def _cgroup_paths(proc: Path) -> dict[str, str]:
    """controller -> cgroup path from /proc/<pid>/cgroup; v2 is under key ''."""
    paths: dict[str, str] = {}
    for line in (proc / "cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _cgroup_mounts(proc: Path) -> list[tuple[str, str, str, set[str]]]:
    """(root, mountpoint, fstype, options) of cgroup mounts in /proc/<pid>/mountinfo."""
    mounts = []
    for line in (proc / "mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fields, post_fields = pre.split(), post.split()
        if post_fields and post_fields[0] in ("cgroup", "cgroup2"):
            options = set(post_fields[2].split(",")) if len(post_fields) > 2 else set()
            mounts.append((fields[3], fields[4], post_fields[0], options))
    return mounts


def cgroup_dir(proc: Path, controller: str) -> Path | None:
    """Directory of this process's cgroup for a v1 controller, or v2 when controller ''."""
    paths = _cgroup_paths(proc)
    if controller not in paths:
        return None
    for root, mountpoint, fstype, options in _cgroup_mounts(proc):
        if (controller == "" and fstype == "cgroup2") or (
            controller and fstype == "cgroup" and controller in options
        ):
            rel = paths[controller]
            # Without a cgroup namespace the mount root is our own path prefix.
            if root != "/" and rel.startswith(root):
                rel = rel[len(root) :]
            candidate = Path(mountpoint) / rel.lstrip("/")
            return candidate if candidate.is_dir() else Path(mountpoint)
    return None


def _ancestry(leaf: Path, top: Path) -> list[Path]:
    dirs = [leaf]
    while dirs[-1] != top and dirs[-1] != dirs[-1].parent and top in dirs[-1].parents:
        dirs.append(dirs[-1].parent)
    return dirs


def read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v1_cpu(cg: Path, top: Path) -> tuple[float | None, str | None]:
    best: tuple[float | None, str | None] = (None, None)
    for d in _ancestry(cg, top):
        quota, period = read_text(d / "cpu.cfs_quota_us"), read_text(d / "cpu.cfs_period_us")
        if quota and period and int(quota) > 0:
            cpus = int(quota) / int(period)
            if best[0] is None or cpus < best[0]:
                best = (cpus, f"cgroup v1 {d}/cpu.cfs_quota_us={quota} period={period}")
    return best


def _v2_cpu(cg: Path, top: Path) -> tuple[float | None, str | None]:
    best: tuple[float | None, str | None] = (None, None)
    for d in _ancestry(cg, top):
        text = read_text(d / "cpu.max")
        if text and not text.startswith("max"):
            quota, period = text.split()
            cpus = int(quota) / int(period)
            if best[0] is None or cpus < best[0]:
                best = (cpus, f"cgroup v2 {d}/cpu.max={text}")
    return best


def _memory(cg: Path, top: Path, filename: str, label: str) -> tuple[int | None, str | None]:
    best: tuple[int | None, str | None] = (None, None)
    for d in _ancestry(cg, top):
        text = read_text(d / filename)
        if not text or text == "max" or int(text) >= _UNLIMITED:
            continue
        if best[0] is None or int(text) < best[0]:
            best = (int(text), f"{label} {d}/{filename}={text}")
    return best


def read_cgroup_limits(proc: Path = Path("/proc/self")) -> CgroupLimits:
    """CPU quota and memory limit of a process's cgroups, v1 or v2, walking up ancestors."""
    try:
        paths = _cgroup_paths(proc)
        mounts = _cgroup_mounts(proc)
    except OSError:
        return CgroupLimits("none")
    has_v1 = any(m[2] == "cgroup" for m in mounts) and len(paths) > 1
    has_v2 = any(m[2] == "cgroup2" for m in mounts) and "" in paths
    version = "hybrid" if has_v1 and has_v2 else "v1" if has_v1 else "v2" if has_v2 else "none"
    cpu: tuple[float | None, str | None] = (None, None)
    mem: tuple[int | None, str | None] = (None, None)
    # In hybrid mode the controllers live in v1; v2 is only used where mounted with them.
    if (cg := cgroup_dir(proc, "cpu")) is not None:
        cpu = _v1_cpu(cg, _mount_of(cg, mounts))
    elif (cg := cgroup_dir(proc, "")) is not None:
        cpu = _v2_cpu(cg, _mount_of(cg, mounts))
    if (cg := cgroup_dir(proc, "memory")) is not None:
        mem = _memory(cg, _mount_of(cg, mounts), "memory.limit_in_bytes", "cgroup v1")
    elif (cg := cgroup_dir(proc, "")) is not None:
        mem = _memory(cg, _mount_of(cg, mounts), "memory.max", "cgroup v2")
    sources = [s for s in (cpu[1], mem[1]) if s]
    return CgroupLimits(version, cpu[0], mem[0], sources)


def _mount_of(cg: Path, mounts: Sequence[tuple[str, str, str, set[str]]]) -> Path:
    points = [Path(m[1]) for m in mounts if cg == Path(m[1]) or Path(m[1]) in cg.parents]
    return max(points, key=lambda p: len(p.parts)) if points else cg


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (what the scheduler lets it run on)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def usable_cpus(
    affinity: int | None = None, cpu_quota: float | None = None, *, read_quota: bool = True
) -> int:
    """CPUs this process can keep busy: the affinity mask capped by the CFS quota.

    The quota is rounded down (at least 1): a thread beyond the quota gets throttled by
    CFS in bursts, which costs more latency than the fraction of a CPU it would add.
    """
    affinity = affinity_cpus() if affinity is None else affinity
    if cpu_quota is None and read_quota:
        cpu_quota = read_cgroup_limits().cpu_quota
    if cpu_quota is None:
        return max(1, affinity)
    return max(1, min(affinity, math.floor(cpu_quota)))


def oom_kill_count(proc: Path = Path("/proc/self")) -> int | None:
    """The kernel's OOM-kill counter of this cgroup (v2 memory.events, v1 memory.oom_control).

    None when the kernel does not expose it. A rise between two readings is the evidence
    that a SIGKILL in between came from the OOM killer.
    """
    candidates: list[Path] = []
    try:
        if (cg := cgroup_dir(proc, "")) is not None:
            candidates.append(cg / "memory.events")
        if (cg := cgroup_dir(proc, "memory")) is not None:
            candidates.append(cg / "memory.oom_control")
    except (OSError, ValueError):
        return None
    for path in candidates:
        text = read_text(path)
        for line in (text or "").splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill" and value.strip().isdigit():
                return int(value)
    return None
