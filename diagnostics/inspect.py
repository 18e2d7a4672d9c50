"""Live process inspection (`heygem-diagnose ps --pid N`).

Walks a process and all its descendants with psutil and reports, per process: state
(zombies shown as ``<defunct>``), threads, CPU, RSS, shared memory it holds under
/dev/shm, and its GPU use via NVML. Findings name what is wrong: zombies and the parent
that does not reap them, orphaned workers re-parented away from their pipeline, and
processes stuck in uninterruptible sleep (D state).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psutil

from diagnostics.findings import Finding, Report, Severity
from diagnostics.probes.base import fmt_bytes
from diagnostics.probes.gpu import GpuProcess, nvml_snapshot
from diagnostics.workers import read_status
from heygem.cgroups import cgroup_dir
from heygem.errors import InputNotFound, InvalidOption

log = logging.getLogger(__name__)

T = TypeVar("T")

# Command-line fragments of worker processes multiprocessing starts (spawn children, the
# forkserver, the resource tracker); used to recognise orphaned workers. "heygem" is not
# one: a top-level heygem process legitimately has PID 1 or a shell as its parent.
WORKER_MARKERS = (
    "multiprocessing.spawn",
    "multiprocessing.forkserver",
    "multiprocessing.resource_tracker",
    "--multiprocessing-fork",
)
SHM_DIR = "/dev/shm"


@dataclass(frozen=True)
class ShmUse:
    """A /dev/shm object a process holds open (fd) or has mapped (mmap)."""

    path: str
    via: str  # "fd" or "mmap"
    deleted: bool  # torch's file_descriptor strategy unlinks right after creating
    mapped_bytes: int | None = None


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    ppid: int
    name: str
    cmdline: list[str]
    status: str  # psutil status; "zombie" is displayed as <defunct>
    threads: int | None
    cpu_percent: float | None
    rss_bytes: int | None
    shm: list[ShmUse] = field(default_factory=list)
    gpu: list[GpuProcess] = field(default_factory=list)
    wchan: str | None = None  # kernel function a D-state process waits in

    @property
    def is_zombie(self) -> bool:
        return self.status == psutil.STATUS_ZOMBIE

    @property
    def display_status(self) -> str:
        return "<defunct>" if self.is_zombie else self.status

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "display_status": self.display_status}


@dataclass(frozen=True)
class ProcessTreeReport:
    root_pid: int
    processes: list[ProcessInfo]
    findings: list[Finding]
    orphans: list[ProcessInfo] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.findings

    def get(self, pid: int) -> ProcessInfo | None:
        return next((p for p in [*self.processes, *self.orphans] if p.pid == pid), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root_pid": self.root_pid,
            "healthy": self.healthy,
            "processes": [p.to_dict() for p in self.processes],
            "orphans": [p.to_dict() for p in self.orphans],
            "findings": [f.to_dict() for f in self.findings],
            "notes": list(self.notes),
        }


# --- per-process facts ----------------------------------------------------------------
def _safe(fn: Callable[[], T], default: T) -> T:
    """psutil raises for zombies, vanished processes and permissions: that is a blank."""
    try:
        return fn()
    except (psutil.Error, OSError, ValueError):
        return default


def shm_fds(pid: int) -> list[ShmUse]:
    """Open fds pointing into /dev/shm, unlinked ones included.

    psutil's open_files() drops '(deleted)' paths, which is exactly how torch's
    DataLoader shares tensors, so /proc/PID/fd is read directly.
    """
    uses: dict[str, ShmUse] = {}
    fd_dir = Path(f"/proc/{pid}/fd")
    no_fds: list[str] = []
    for fd in _safe(lambda: os.listdir(fd_dir), no_fds):
        target = _safe(partial(os.readlink, fd_dir / fd), "")
        if target.startswith(SHM_DIR + "/"):
            path, deleted = _strip_deleted(target)
            uses.setdefault(path, ShmUse(path, "fd", deleted))
    return list(uses.values())


def shm_maps(pid: int) -> list[ShmUse]:
    """/dev/shm files mapped into the address space, with the bytes mapped per file."""
    sizes: dict[str, int] = {}
    deleted: dict[str, bool] = {}
    text = _safe(lambda: Path(f"/proc/{pid}/maps").read_text(), "")
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or not parts[5].startswith(SHM_DIR + "/"):
            continue
        path, gone = _strip_deleted(parts[5])
        start, end = (int(x, 16) for x in parts[0].split("-"))
        sizes[path] = sizes.get(path, 0) + end - start
        deleted[path] = gone
    return [ShmUse(p, "mmap", deleted[p], n) for p, n in sizes.items()]


def _strip_deleted(target: str) -> tuple[str, bool]:
    suffix = " (deleted)"
    return (target[: -len(suffix)], True) if target.endswith(suffix) else (target, False)


def frozen_by(pid: int) -> str | None:
    """The cgroup freezer holding ``pid`` (docker pause, a frozen job), if any."""
    proc = Path(f"/proc/{pid}")
    v1 = _safe(partial(cgroup_dir, proc, "freezer"), None)
    if v1 is not None and _safe((v1 / "freezer.state").read_text, "").strip() == "FROZEN":
        return f"{v1} (freezer.state=FROZEN)"
    v2 = _safe(partial(cgroup_dir, proc, ""), None)
    if v2 is not None and _safe((v2 / "cgroup.freeze").read_text, "").strip() == "1":
        return f"{v2} (cgroup.freeze=1)"
    return None


def _wchan(pid: int) -> str | None:
    value = _safe(lambda: Path(f"/proc/{pid}/wchan").read_text().strip(), "")
    return value if value and value != "0" else None


def _describe(
    proc: psutil.Process, cpu: float | None, gpu_by_pid: dict[int, list[GpuProcess]]
) -> ProcessInfo:
    status = _safe(proc.status, "unknown")
    rss = _safe(lambda: proc.memory_info().rss, None)
    return ProcessInfo(
        pid=proc.pid,
        ppid=_safe(proc.ppid, 0),
        name=_safe(proc.name, "?"),
        cmdline=_safe(proc.cmdline, []),
        status=status,
        threads=_safe(proc.num_threads, None),
        cpu_percent=cpu,
        rss_bytes=rss,
        shm=shm_fds(proc.pid) + shm_maps(proc.pid),
        gpu=gpu_by_pid.get(proc.pid, []),
        wchan=_wchan(proc.pid) if status == psutil.STATUS_DISK_SLEEP else None,
    )


def _sample_cpu(procs: list[psutil.Process], interval: float) -> dict[int, float | None]:
    """CPU % of each process over one shared interval (the first psutil call is a baseline)."""
    for p in procs:
        _safe(partial(p.cpu_percent, None), None)
    if interval > 0:
        time.sleep(interval)  # a measurement window, not waiting for a condition
    return {p.pid: _safe(partial(p.cpu_percent, None), None) for p in procs}


# --- orphans and findings -------------------------------------------------------------
def looks_like_ours(cmdline: Iterable[str]) -> bool:
    text = " ".join(cmdline)
    return any(marker in text for marker in WORKER_MARKERS)


# Processes that adopt orphans (PID 1 or a child subreaper); a worker whose parent is one
# of these has lost the process that started it.
REAPER_NAMES = frozenset(
    {
        "init",
        "systemd",
        "tini",
        "docker-init",
        "dumb-init",
        "catatonit",
        "containerd-shim",
        "containerd-shim-runc-v2",
        "s6-svscan",
    }
)


def _name_of(pid: int) -> str:
    return str(psutil.Process(pid).name())


def find_orphans(exclude: Collection[int] = ()) -> list[psutil.Process]:
    """multiprocessing workers whose parent is gone: re-parented to PID 1 or to a known
    init/subreaper. Plain fork() children carry their parent's command line and cannot be
    told apart this way."""
    skip = {*exclude, 1, os.getpid()}
    orphans = []
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        info = proc.info
        if info["pid"] in skip or not looks_like_ours(info["cmdline"] or []):
            continue
        ppid = info["ppid"]
        parent_name = _safe(partial(_name_of, ppid), "") if ppid else ""
        if ppid in (0, 1) or parent_name in REAPER_NAMES:
            orphans.append(proc)
    return orphans


def _parent_text(ppid: int) -> str:
    parent = _safe(lambda: psutil.Process(ppid), None)
    if parent is None:
        return f"parent {ppid} (gone)"
    return f"parent {ppid} ({_safe(parent.name, '?')}, {_safe(parent.status, '?')})"


def _zombie_finding(p: ProcessInfo) -> Finding:
    age = _safe(lambda: time.time() - psutil.Process(p.pid).create_time(), None)
    since = f", created {age:.0f}s ago" if age is not None else ""
    message = (
        f"pid {p.pid} ({p.name}) is <defunct>{since}: it exited but its "
        f"{_parent_text(p.ppid)} has not wait()ed for it"
    )
    if p.ppid == 1:
        fix = (
            "PID 1 here does not reap orphans: run the container with --init (tini) or "
            "make PID 1 a real init."
        )
    else:
        fix = (
            f"Only the parent ({p.ppid}) can reap it: the parent must join()/wait() its "
            "children (Process.join(), Popen.wait(), or handle SIGCHLD). If the parent is "
            "stuck, stopping it hands the zombie to PID 1, which reaps it if it is an init."
        )
    return _problem("zombie", p.pid, message, fix)


def _d_state_finding(p: ProcessInfo) -> Finding:
    where = f"pid {p.pid} ({p.name}) is in uninterruptible sleep (D)"
    freezer = frozen_by(p.pid)
    if freezer:
        return _problem(
            "d-state",
            p.pid,
            f"{where}: frozen by the cgroup freezer {freezer}",
            "Thaw it: docker unpause, or write THAWED to freezer.state "
            "(cgroup v1) / 0 to cgroup.freeze (v2).",
        )
    return _problem(
        "d-state",
        p.pid,
        f"{where} in {p.wchan or 'an unknown kernel function'}: blocked in the kernel "
        "(disk/NFS I/O, GPU driver) and immune to signals until it returns",
        "Look at the device or mount it waits on (wchan above, dmesg); a stuck GPU driver "
        "call usually needs the GPU reset.",
    )


def _problem(kind: str, pid: int, message: str, fix: str) -> Finding:
    return Finding(kind, Severity.FAIL, message, fix=fix, subject=f"pid {pid}")


def _stopped_finding(p: ProcessInfo) -> Finding:
    return _problem(
        "stopped",
        p.pid,
        f"pid {p.pid} ({p.name}) is stopped (state T: SIGSTOP, SIGTSTP or a debugger): it "
        "does no work, and whatever waits on it stalls",
        f"Resume it (kill -CONT {p.pid}) or find who stopped it (a debugger, Ctrl-Z, a "
        "container pause).",
    )


def _findings(processes: list[ProcessInfo], orphans: list[ProcessInfo]) -> list[Finding]:
    found = []
    for p in [*processes, *orphans]:
        if p.is_zombie:
            found.append(_zombie_finding(p))
        elif p.status == psutil.STATUS_DISK_SLEEP:
            found.append(_d_state_finding(p))
        elif p.status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
            found.append(_stopped_finding(p))
    for p in orphans:
        if not p.is_zombie:
            found.append(
                _problem(
                    "orphan",
                    p.pid,
                    f"pid {p.pid} ({' '.join(p.cmdline)[:120]!r}) was re-parented to {p.ppid}: "
                    "its parent died without stopping it",
                    f"Kill it (kill {p.pid}); make the parent stop its workers on every exit "
                    "path (daemon=True, or terminate()+join() in a finally).",
                )
            )
    return found


# --- public API -----------------------------------------------------------------------
def inspect_process_tree(
    pid: int, *, cpu_interval: float = 0.2, look_for_orphans: bool = True
) -> ProcessTreeReport:
    """Inspect ``pid`` and all its descendants; optionally scan for orphaned workers."""
    if not isinstance(pid, int) or pid <= 0:
        raise InvalidOption(f"pid must be a positive integer, got {pid!r}")
    if cpu_interval < 0:
        raise InvalidOption(f"cpu_interval must be >= 0, got {cpu_interval}")
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess as exc:
        raise InputNotFound(
            f"no process with pid {pid}",
            hint="check the pid (heygem-diagnose ps without --pid lists heygem processes)",
        ) from exc
    no_children: list[psutil.Process] = []
    procs = [root, *_safe(lambda: root.children(recursive=True), no_children)]
    tree_pids = {p.pid for p in procs}
    orphan_procs = find_orphans(exclude=tree_pids) if look_for_orphans else []
    cpu = _sample_cpu(procs + orphan_procs, cpu_interval)
    snap = nvml_snapshot()
    gpu_by_pid: dict[int, list[GpuProcess]] = {}
    for g in snap.processes:
        gpu_by_pid.setdefault(g.pid, []).append(g)
    notes = [] if snap.available else [f"GPU use not shown: {snap.reason}"]
    if snap.available:
        notes.append("NVML reports host PIDs; inside a container they may not match these")
    processes = [_describe(p, cpu.get(p.pid), gpu_by_pid) for p in procs]
    orphans = [_describe(p, cpu.get(p.pid), gpu_by_pid) for p in orphan_procs]
    return ProcessTreeReport(pid, processes, _findings(processes, orphans), orphans, notes)


def _program_words(argv: Sequence[str]) -> list[str]:
    """What a command line runs: the program, or for Python the script or ``-m`` module.

    Arguments are not the program: ``tail -f heygem.log`` or ``watch heygem-diagnose ps``
    must not count as a heygem process.
    """
    if not argv:
        return []
    words = [Path(argv[0]).name.lower()]
    if words[0].startswith("python"):
        rest = list(argv[1:])
        for i, arg in enumerate(rest):
            if arg == "-m" and i + 1 < len(rest):
                words.append(rest[i + 1].lower())
                break
            if not arg.startswith("-"):
                words.append(Path(arg).name.lower())
                break
    return words


def find_heygem_processes(pattern: str = "heygem") -> list[int]:
    """PIDs of processes whose program (see ``_program_words``) contains ``pattern``
    (case-insensitive), tree roots only (a match whose parent also matches is left to the
    parent's tree), never this process itself."""
    needle = pattern.lower()
    matches: dict[int, int] = {}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        words = _program_words(proc.info["cmdline"] or [])
        if any(needle in w for w in words) and proc.info["pid"] != os.getpid():
            matches[proc.info["pid"]] = proc.info["ppid"]
    return sorted(pid for pid, ppid in matches.items() if ppid not in matches)


@dataclass(frozen=True)
class ReapedChild:
    pid: int
    exit_code: int  # negative: killed by that signal (as multiprocessing reports it)


def reap_zombie_children(only: Collection[int] | None = None) -> list[ReapedChild]:
    """Reap this process's own zombie children and return how they ended.

    Only a parent can reap: waitpid() works on one's own children alone, so there is no
    way to reap another process's zombies from outside (stop the parent instead, and PID 1
    reaps them). Restrict with ``only`` when the children belong to code that tracks them
    itself: a multiprocessing.Process reaped behind its back can no longer report its
    exit code.
    """
    reaped = []
    no_children: list[psutil.Process] = []
    for child in _safe(lambda: psutil.Process().children(), no_children):
        if (only is not None and child.pid not in only) or _safe(
            child.status, ""
        ) != psutil.STATUS_ZOMBIE:
            continue
        try:
            pid, status = os.waitpid(child.pid, os.WNOHANG)
        except ChildProcessError:
            continue  # reaped meanwhile by its owner
        if pid:
            reaped.append(ReapedChild(pid, os.waitstatus_to_exitcode(status)))
    log.debug("reaped %s", reaped)
    return reaped


def tree_lines(report: ProcessTreeReport) -> list[str]:
    """One line per process, indented by depth, then orphans and notes."""
    depth = {report.root_pid: 0}
    lines = [f"process tree of pid {report.root_pid}: {len(report.processes)} process(es)"]
    for p in report.processes:
        level = depth.setdefault(p.pid, depth.get(p.ppid, -1) + 1)
        lines.append("  " + "  " * level + _line(p))
    if report.orphans:
        lines.append("orphaned workers:")
        lines += ["    " + _line(p) for p in report.orphans]
    lines += [f"note: {n}" for n in report.notes]
    return lines


def process_report(reports: list[ProcessTreeReport], pattern: str | None = None) -> Report:
    """The trees inspected as one diagnosis (``heygem-diagnose ps``).

    A tree whose root is a ``heygem worker`` (Celery) also shows what the worker says about
    itself: its pool processes and their jobs, and the problems its start-up checks found.
    """
    body: list[str] = []
    findings: list[Finding] = []
    workers = []
    for r in reports:
        body += tree_lines(r)
        findings += r.findings
        worker = read_status(r.root_pid)
        if worker is not None:
            body += worker.lines()
            findings += worker.start_findings()
            workers.append(worker.to_dict())
    if not reports:
        body = [f"no {pattern or 'heygem'} processes found"]
    details = {
        "pids": [r.root_pid for r in reports],
        "reports": [r.to_dict() for r in reports],
        "celery_workers": workers,
    }
    return Report("ps", "heygem process inspection", tuple(findings), details, tuple(body))


def _line(p: ProcessInfo) -> str:
    cpu = "?" if p.cpu_percent is None else f"{p.cpu_percent:.0f}%"
    rss = "?" if p.rss_bytes is None else fmt_bytes(p.rss_bytes)
    shm_bytes = sum(s.mapped_bytes or 0 for s in p.shm)
    shm = f" shm {len({s.path for s in p.shm})} ({fmt_bytes(shm_bytes)} mapped)" if p.shm else ""
    gpu = "".join(f" gpu{g.device_index} {fmt_bytes(g.used_memory or 0)}" for g in p.gpu)
    cmd = " ".join(p.cmdline).replace("\n", " ")[:100] or p.name
    return (
        f"{p.pid} [{p.display_status}] threads {p.threads if p.threads is not None else '?'}"
        f" cpu {cpu} rss {rss}{shm}{gpu}  {cmd}"
    )
