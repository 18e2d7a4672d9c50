"""What the job's child processes are doing, read from the processes themselves.

A DataLoader worker stopped with SIGSTOP (or by a debugger, or Ctrl-Z) neither dies nor
answers: its stage just waits. Reading each child's state lets the watchdog say so within
a second instead of waiting out the stall timeout.
"""

from __future__ import annotations

import time


def is_stopped(pid: int | None) -> bool:
    if pid is None:
        return False
    import psutil  # ~9 ms of every job's start-up: only jobs with child processes get here

    try:
        return psutil.Process(pid).status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False


class StoppedClock:
    """Remembers since when each watched process has been in state T."""

    def __init__(self) -> None:
        self._since: dict[int, float] = {}

    def stopped_for(self, pid: int | None) -> float:
        """Seconds ``pid`` has been seen stopped (0 when running, gone or unknown)."""
        if pid is None or not is_stopped(pid):
            self._since.pop(pid or 0, None)
            return 0.0
        now = time.monotonic()
        return now - self._since.setdefault(pid, now)
