"""Multiprocessing hazards: thread env vars reaching children, start method, fork+CUDA."""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from typing import Any

from diagnostics.findings import Finding, Severity
from diagnostics.probes.base import never_raises
from diagnostics.probes.system import THREAD_ENV_VARS, startup_environ

log = logging.getLogger(__name__)

ChildView = Mapping[str, str | None] | str  # the child's values, or why it gave none


def _report_env(conn: Connection, names: Sequence[str]) -> None:
    """Runs in the child: send back what this process sees."""
    conn.send({name: os.environ.get(name) for name in names})
    conn.close()


def read_child_env(method: str, names: Sequence[str], timeout: float) -> ChildView:
    """Start one real child with ``method`` and return the env values it sees.

    Returns an error string instead of raising (child failed to start, timed out).
    """
    ctx: Any = multiprocessing.get_context(method)  # typeshed types str methods loosely
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=_report_env, args=(send, tuple(names)), daemon=True, name=f"heygem-doctor-{method}"
    )
    try:
        proc.start()
        send.close()
        if not recv.poll(timeout):
            return f"{method} child sent nothing within {timeout:g}s (exit code {proc.exitcode})"
        values: dict[str, str | None] = recv.recv()
        return values
    except (OSError, EOFError, ValueError, AssertionError) as exc:
        return f"{method} child failed: {type(exc).__name__}: {exc}"
    finally:
        recv.close()
        _stop(proc)


def _stop(proc: multiprocessing.process.BaseProcess) -> None:
    if proc.pid is None:
        return
    proc.join(timeout=5)
    if proc.is_alive():
        proc.terminate()
        proc.join(timeout=2)
    if proc.is_alive():
        proc.kill()
        proc.join()


def forkserver_pid() -> int | None:
    """PID of this process's forkserver if one is already running (private attribute)."""
    from multiprocessing import forkserver

    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None


def compare_env_propagation(
    parent: Mapping[str, str | None], children: Mapping[str, ChildView]
) -> Finding:
    """Compare the parent's values with what each start method's child saw."""
    title = "Thread env vars reach spawn/forkserver children"
    evidence = []
    for name, value in parent.items():
        seen = ", ".join(
            f"{m}={v.get(name) if not isinstance(v, str) else '?'}" for m, v in children.items()
        )
        evidence.append(f"{name}: parent={value} {seen}")
    errors = [v for v in children.values() if isinstance(v, str)]
    mismatched = sorted(
        {
            method
            for method, view in children.items()
            if not isinstance(view, str)
            for name, value in parent.items()
            if view.get(name) != value
        }
    )
    if errors:
        return Finding(
            "thread-env",
            Severity.FAIL,
            title,
            evidence + errors,
            "A child process could not be started in time: the pipeline's workers would hang "
            "the same way. Check the evidence (import errors in the child, /dev/shm, limits).",
        )
    if not mismatched:
        return Finding("thread-env", Severity.OK, title, evidence)
    fixes = []
    if "forkserver" in mismatched:
        fixes.append(
            "forkserver children inherit the forkserver's environment from when it "
            "was started, not the parent's current one: set thread vars before the "
            "first forkserver use, best before Python starts (Dockerfile ENV / "
            "docker run -e)"
        )
    if set(mismatched) - {"forkserver"}:
        fixes.append(
            "a spawn child gets the C-level environment: something changed it "
            "without os.environ (native setenv) or the reverse; set the variables "
            "before Python starts"
        )
    return Finding(
        "thread-env",
        Severity.FAIL,
        title,
        evidence + [f"children that disagree with the parent: {', '.join(mismatched)}"],
        "; ".join(fixes) + ".",
    )


@never_raises("thread-env", "Thread env vars reach spawn/forkserver children")
def probe_thread_env(timeout: float = 20.0) -> Finding:
    methods = [m for m in ("spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]
    parent = {name: os.environ.get(name) for name in THREAD_ENV_VARS}
    fs_before = forkserver_pid()
    method_before = multiprocessing.get_start_method(allow_none=True)
    children: dict[str, ChildView] = {
        m: read_child_env(m, THREAD_ENV_VARS, timeout) for m in methods
    }
    if method_before is None:
        # Spawning records get_start_method() in the child's preparation data, which fixes
        # the default for the whole process; undo that side effect of the check.
        multiprocessing.set_start_method(None, force=True)
    result = compare_env_propagation(parent, children)
    notes = []
    if "forkserver" in methods:
        notes.append(
            f"forkserver was already running (pid {fs_before}); its environment dates "
            "from its start"
            if fs_before
            else "started this process's forkserver for the check (later forkserver "
            "children inherit today's environment)"
        )
    at_start = startup_environ()
    late = [n for n, v in parent.items() if v != at_start.get(n)]
    if late:
        notes.append(
            f"set after this process started: {', '.join(late)}: thread pools "
            "already created here (numpy/torch/ORT imported earlier) ignored them"
        )
    return Finding(result.id, result.severity, result.title, [*result.evidence, *notes], result.fix)


@never_raises("start-method", "multiprocessing start method and fork hazards")
def probe_start_method() -> Finding:
    title = "multiprocessing start method and fork hazards"
    chosen = multiprocessing.get_start_method(allow_none=True)
    # Documented: the first entry is the platform default (asking get_start_method()
    # without allow_none would fix the method for the whole process).
    effective = chosen or multiprocessing.get_all_start_methods()[0]
    evidence = [f"start method: {effective} ({'set explicitly' if chosen else 'default'})"]
    torch = sys.modules.get("torch")
    cuda_init = bool(torch is not None and torch.cuda.is_initialized())
    evidence.append(
        "CUDA initialised in this process: "
        + ("yes" if cuda_init else "no" if torch else "no (torch not imported)")
    )
    threads = _thread_count()
    evidence.append(f"OS threads in this process: {threads}")
    if effective != "fork":
        return Finding("start-method", Severity.OK, title, evidence)
    if cuda_init:
        return Finding(
            "start-method",
            Severity.FAIL,
            title,
            evidence
            + [
                "fork after CUDA init: children fail with 'Cannot re-initialize CUDA "
                "in forked subprocess' or hang"
            ],
            "Use multiprocessing.set_start_method('spawn') early in main, or "
            "DataLoader(multiprocessing_context='spawn').",
        )
    return Finding(
        "start-method",
        Severity.INFO,
        title,
        evidence
        + [
            "fork copies this process including locks held by other threads "
            "(thread pools, logging); the pipeline itself starts children with spawn"
        ],
    )


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        import threading

        return threading.active_count()
