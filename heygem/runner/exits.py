"""Explain how a child process ended, in the terms an operator can act on.

Only what is known is said: a SIGKILL is blamed on the OOM killer only when the kernel's
OOM-kill counter of our cgroup rose while the child ran (``OomWatch``); otherwise it is
"killed with SIGKILL", which is also what ``kill -9`` by a person looks like.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from heygem.cgroups import oom_kill_count
from heygem.errors import FailureCause


@dataclass(frozen=True)
class ExitDescription:
    cause: FailureCause
    what: str  # "exit -7 (SIGBUS): shared memory exhausted ..."
    fix: str | None


class OomWatch:
    """Remembers the cgroup's OOM-kill counter; later says whether the kernel killed since."""

    def __init__(self) -> None:
        self._start = oom_kill_count()

    def killed_since(self) -> bool | None:
        """True: the kernel OOM-killed a process since; None: the counter is not readable."""
        now = oom_kill_count()
        if self._start is None or now is None:
            return None
        return now > self._start


Meaning = tuple[FailureCause, str, str | None]  # cause, what happened, what to do

_SIGNALS: dict[signal.Signals, Meaning] = {
    signal.SIGBUS: (
        FailureCause.SHM_EXHAUSTED,
        "shared memory exhausted: the DataLoader workers ran out of /dev/shm",
        "give the container more shared memory (docker run --shm-size=2g) or use --num-workers 0",
    ),
    signal.SIGSEGV: (
        FailureCause.SEGFAULT,
        "crashed with a segmentation fault inside native code",
        "run `heygem-diagnose env`: mismatched onnxruntime/torch/numpy builds are the usual cause",
    ),
    signal.SIGABRT: (
        FailureCause.ABORTED,
        "aborted (SIGABRT), usually a failed assertion in native code",
        "run `heygem-diagnose env` and check the log for the assertion",
    ),
    signal.SIGTERM: (
        FailureCause.TERMINATED,
        "terminated (SIGTERM) by someone else",
        "check what stopped it (a supervisor, a shutdown, a person)",
    ),
}

_OOM: Meaning = (
    FailureCause.OOM_KILLED,
    "killed by the kernel's OOM killer (the cgroup's oom_kill counter rose)",
    "lower --batch-size/--num-workers or raise the memory limit; `dmesg` shows the OOM report",
)
_KILLED: Meaning = (
    FailureCause.KILLED,
    "killed with SIGKILL (the kernel recorded no OOM kill: a person or a supervisor sent it)",
    "check who sent SIGKILL (kill -9, a container runtime, a job scheduler)",
)
_KILLED_UNKNOWN: Meaning = (
    FailureCause.KILLED,
    "killed with SIGKILL (by a person, a supervisor or the OOM killer: this kernel does "
    "not expose an OOM counter to tell)",
    "check `dmesg` for 'Out of memory'; if it is there, lower --batch-size/--num-workers",
)


def describe_exit(exitcode: int | None, *, oom_killed: bool | None = None) -> ExitDescription:
    """What a ``multiprocessing`` exit code means (negative: killed by that signal)."""
    if exitcode is None:
        return ExitDescription(FailureCause.NO_PROGRESS, "still running", None)
    if exitcode == 0:
        return ExitDescription(
            FailureCause.EXITED,
            "exited normally (code 0) while it still had work",
            "check the worker's log",
        )
    if exitcode > 0:
        return ExitDescription(
            FailureCause.EXITED,
            f"exited with code {exitcode} (an uncaught error in the child)",
            "the child's traceback is in the log above",
        )
    try:
        sig = signal.Signals(-exitcode)
    except ValueError:
        return ExitDescription(FailureCause.KILLED, f"killed by unknown signal {-exitcode}", None)
    meaning: Meaning
    if sig is signal.SIGKILL:
        meaning = _OOM if oom_killed else _KILLED if oom_killed is False else _KILLED_UNKNOWN
    else:
        meaning = _SIGNALS.get(sig, (FailureCause.KILLED, f"killed by {sig.name}", None))
    cause, what, fix = meaning
    return ExitDescription(cause, f"exit {exitcode} ({sig.name}): {what}", fix)
