"""Machine and container limits: /dev/shm, cgroup CPU/memory, container, LD_LIBRARY_PATH."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path

from diagnostics.findings import Finding, Severity
from diagnostics.probes.base import fmt_bytes, never_raises
from heygem.cgroups import affinity_cpus, read_cgroup_limits, read_text, usable_cpus
from heygem.errors import InvalidOption

log = logging.getLogger(__name__)

# Extra room on top of the batches in flight: collate allocates the batch tensor in shared
# memory before the previous one is freed, tmpfs rounds to pages, and other processes
# (the multiprocessing queues themselves, ORT, a second job) share the same /dev/shm.
SHM_SAFETY_FACTOR = 2.0

# Thread-pool variables read once, at import, by OpenMP/MKL/OpenBLAS/NumExpr.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMEXPR_MAX_THREADS",
)


# --- /dev/shm ------------------------------------------------------------------------
def dataloader_shm_need_bytes(
    batch_size: int, sample_bytes: int, num_workers: int, prefetch_factor: int = 2
) -> int:
    """Shared memory a torch DataLoader with worker processes holds at peak.

    Each worker collates its batches straight into shared memory and keeps up to
    ``prefetch_factor`` of them in flight; the main process still holds the batch it is
    consuming. That is ``num_workers * prefetch_factor + 1`` batches, times
    ``SHM_SAFETY_FACTOR`` (2) for allocation overlap and other users of /dev/shm.
    ``num_workers=0`` loads in-process and needs none.
    """
    if batch_size < 1 or sample_bytes < 0 or num_workers < 0 or prefetch_factor < 1:
        raise InvalidOption(
            f"invalid DataLoader shape: batch_size={batch_size}, sample_bytes={sample_bytes}, "
            f"num_workers={num_workers}, prefetch_factor={prefetch_factor}",
            hint="batch_size and prefetch_factor >= 1, sample_bytes and num_workers >= 0",
        )
    if num_workers == 0:
        return 0
    batches = num_workers * prefetch_factor + 1
    return math.ceil(batches * batch_size * sample_bytes * SHM_SAFETY_FACTOR)


@never_raises("shm", "/dev/shm size vs. DataLoader need")
def probe_shm(need_bytes: int, need_detail: str, path: str = "/dev/shm") -> Finding:
    title = "/dev/shm size vs. DataLoader need"
    evidence = [f"DataLoader needs ~{fmt_bytes(need_bytes)}: {need_detail}"]
    if need_bytes == 0:
        return Finding(
            "shm",
            Severity.INFO,
            title,
            evidence + ["num_workers=0: batches never go through shared memory"],
        )
    if not os.path.isdir(path):
        return Finding(
            "shm",
            Severity.FAIL,
            title,
            evidence + [f"{path} does not exist"],
            f"Mount a tmpfs at {path} (docker --shm-size=2g).",
        )
    st = os.statvfs(path)
    size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    evidence.insert(
        0, f"{path}: size {fmt_bytes(size)}, free {fmt_bytes(free)} ({_mount_type(path)})"
    )
    if free >= need_bytes:
        return Finding("shm", Severity.OK, title, evidence)
    return Finding(
        "shm",
        Severity.FAIL,
        title,
        evidence
        + [
            f"free {fmt_bytes(free)} < need {fmt_bytes(need_bytes)}: DataLoader workers "
            "die with SIGBUS (exit -7, 'Bus error') and the consumer waits forever"
        ],
        "Give the container more shared memory: docker run --shm-size=2g (compose: "
        "shm_size: '2gb'; Kubernetes: an emptyDir with medium: Memory at /dev/shm), or lower "
        "num_workers / batch size.",
    )


def _mount_type(path: str) -> str:
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            pre, _, post = line.partition(" - ")
            if pre.split()[4] == path:
                return f"{post.split()[0]} mount"
    except OSError:
        pass
    return "no separate mount"


@never_raises("cpus", "CPUs usable vs. CPUs libraries will assume")
def probe_cpus(environ: Mapping[str, str] | None = None) -> Finding:
    title = "CPUs usable vs. CPUs libraries will assume"
    env = os.environ if environ is None else environ
    limits = read_cgroup_limits()
    total = os.cpu_count() or 1
    affinity = affinity_cpus()
    usable = usable_cpus(affinity, limits.cpu_quota, read_quota=False)
    quota = "none" if limits.cpu_quota is None else f"{limits.cpu_quota:g} CPUs"
    evidence = [
        f"os.cpu_count()={total}, sched_getaffinity={affinity}, cgroup quota={quota} "
        f"({limits.version}) -> usable {usable}",
        *limits.sources,
    ]
    evidence += thread_budget_lines(usable)
    unset = [v for v in THREAD_ENV_VARS if not env.get(v)]
    evidence.append(
        "thread vars set: "
        + (", ".join(f"{v}={env[v]}" for v in THREAD_ENV_VARS if env.get(v)) or "none")
    )
    if usable >= total or not unset:
        return Finding("cpus", Severity.OK, title, evidence)
    return Finding(
        "cpus",
        Severity.WARN,
        title,
        evidence
        + [
            f"{', '.join(unset)} unset: NumExpr/OpenBLAS size pools from the "
            f"{total} CPUs they see, not the {usable} usable (oversubscription)"
        ],
        "Export "
        + " ".join(f"{v}={usable}" for v in THREAD_ENV_VARS)
        + " before Python starts (Dockerfile ENV or docker run -e).",
    )


def thread_budget_lines(cpus: int) -> list[str]:
    """The split the pipeline makes of ``cpus`` for each generator (heygem.resources)."""
    from heygem.config import GENERATORS
    from heygem.resources import ThreadBudget

    return [
        "thread budget: " + ThreadBudget.for_machine(cpus, generator=name).describe()
        for name in GENERATORS
    ]


@never_raises("cgroup-memory", "Memory limit vs. estimated need")
def probe_memory(need_bytes: int, need_detail: str) -> Finding:
    title = "Memory limit vs. estimated need"
    limits = read_cgroup_limits()
    import psutil

    vm = psutil.virtual_memory()
    evidence = [
        f"need ~{fmt_bytes(need_bytes)}: {need_detail}",
        f"host RAM {fmt_bytes(vm.total)}, available {fmt_bytes(vm.available)}",
        f"cgroup ({limits.version}) memory limit: "
        + ("none" if limits.memory_limit is None else fmt_bytes(limits.memory_limit)),
        *limits.sources,
    ]
    fix = (
        f"Raise the container memory limit to at least {fmt_bytes(need_bytes * 1.25)} "
        "(docker run --memory / compose mem_limit), or lower num_workers. /dev/shm pages "
        "are charged to the same limit, so --shm-size does not add memory."
    )
    limit = limits.memory_limit
    if limit is not None and limit < need_bytes:
        return Finding(
            "cgroup-memory",
            Severity.FAIL,
            title,
            evidence + ["the OOM killer will SIGKILL (-9) a process"],
            fix,
        )
    if limit is not None and limit < need_bytes * 1.25:
        return Finding(
            "cgroup-memory",
            Severity.WARN,
            title,
            evidence + ["the limit leaves less than 25% headroom"],
            fix,
        )
    if vm.available < need_bytes:
        return Finding(
            "cgroup-memory",
            Severity.WARN,
            title,
            evidence + ["the host has less memory available than needed now"],
            "Free memory on the host or lower num_workers.",
        )
    return Finding("cgroup-memory", Severity.OK, title, evidence)


# --- container, LD_LIBRARY_PATH --------------------------------------------------------
_CONTAINER_WORDS = ("docker", "kubepods", "containerd", "libpod", "lxc", "crio")


def container_markers(
    root: Path = Path("/"), environ: Mapping[str, str] | None = None
) -> list[str]:
    """Evidence that we run inside a container; empty when none is found."""
    env = os.environ if environ is None else environ
    found = [
        f"{root / m} exists" for m in (".dockerenv", "run/.containerenv") if (root / m).exists()
    ]
    cgroup = read_text(root / "proc/1/cgroup") or ""
    words = sorted({w for w in _CONTAINER_WORDS if w in cgroup})
    if words:
        found.append(f"/proc/1/cgroup mentions {', '.join(words)}")
    if env.get("container"):
        found.append(f"container={env['container']} in the environment")
    if env.get("KUBERNETES_SERVICE_HOST"):
        found.append("KUBERNETES_SERVICE_HOST is set")
    return found


@never_raises("container", "Container detection")
def probe_container() -> Finding:
    markers = container_markers()
    if not markers:
        return Finding(
            "container",
            Severity.INFO,
            "Container detection",
            ["no container markers found: bare metal or VM"],
        )
    return Finding(
        "container", Severity.INFO, "Container detection", ["running in a container", *markers]
    )


def startup_environ(pid: int | str = "self") -> dict[str, str]:
    """The environment a process was started with (/proc/PID/environ, not later changes)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


_CUDA_GLOBS = ("libcudart.so*", "libcudnn.so*", "libcublas.so*", "libcublasLt.so*")


def _entries(value: str | None) -> list[str]:
    return value.split(":") if value else []  # an empty value is ignored by ld.so


@never_raises("ld-library-path", "LD_LIBRARY_PATH")
def probe_ld_library_path() -> Finding:
    title = "LD_LIBRARY_PATH"
    current = os.environ.get("LD_LIBRARY_PATH")
    at_start = startup_environ().get("LD_LIBRARY_PATH")
    evidence: list[str] = []
    problems: list[str] = []
    # opencv-python's loader prepends its own dirs to os.environ at `import cv2` (leaving a
    # trailing ':' when the variable was unset). That is not the user's doing: report it,
    # and judge the rest.
    entries = _entries(current)
    by_cv2 = [e for e in entries if "/cv2/" in e]
    entries = [e for e in entries if "/cv2/" not in e]
    if by_cv2:
        if not at_start and entries == [""]:
            entries = _entries(at_start)
        evidence.append(
            f"added by opencv at import: {', '.join(by_cv2)} (this process's "
            "loader ignores it; children inherit it)"
        )
    if entries != _entries(at_start):
        problems.append(
            f"changed after this process started (was {at_start!r}, now {current!r}): the "
            "dynamic loader read it at startup, so dlopen here ignores the change; only "
            "children started from now on see it"
        )
    for entry in entries:
        if entry == "":
            problems.append(
                "an empty entry (leading/trailing/double ':') means the current directory"
            )
        elif not os.path.isdir(entry):
            problems.append(f"{entry}: does not exist")
        else:
            libs = sorted({p.name for g in _CUDA_GLOBS for p in Path(entry).glob(g)})
            evidence.append(entry + (f": {', '.join(libs[:8])}" if libs else ""))
    if problems:
        return Finding(
            "ld-library-path",
            Severity.WARN,
            title,
            evidence + problems,
            "Set LD_LIBRARY_PATH before Python starts (Dockerfile ENV, docker run -e, or a "
            "wrapper script), with existing directories only and no empty entries.",
        )
    if not entries:
        return Finding(
            "ld-library-path",
            Severity.INFO,
            title,
            ["LD_LIBRARY_PATH is unset at startup", *evidence],
        )
    return Finding("ld-library-path", Severity.OK, title, evidence)
