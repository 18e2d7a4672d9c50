"""Explain how a child process ended, in the terms an operator can act on."""

from __future__ import annotations

import signal

_SIGNAL_MEANING = {
    signal.SIGBUS: (
        "shared memory exhausted: the DataLoader workers ran out of /dev/shm",
        "give the container more shared memory (docker run --shm-size=2g) or use --num-workers 0",
    ),
    signal.SIGKILL: (
        "killed with SIGKILL, most likely by the kernel's OOM killer",
        "check `dmesg` for 'Out of memory', lower --batch-size/--num-workers "
        "or raise the memory limit",
    ),
    signal.SIGSEGV: (
        "crashed with a segmentation fault inside native code",
        "run `heygem-diagnose env`: mismatched onnxruntime/torch/numpy builds are the usual cause",
    ),
    signal.SIGABRT: (
        "aborted (SIGABRT), usually a failed assertion in native code",
        "run `heygem-diagnose env` and check the log for the assertion",
    ),
    signal.SIGTERM: ("terminated (SIGTERM) by someone else", "check what stopped it"),
}


def describe_exit(exitcode: int | None) -> tuple[str, str | None]:
    """(what happened, what to do) for a ``multiprocessing`` exit code."""
    if exitcode is None:
        return "still running", None
    if exitcode == 0:
        return "exited normally (code 0) while it still had work", "check the worker's log"
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
        except ValueError:
            return f"killed by unknown signal {-exitcode}", None
        meaning, fix = _SIGNAL_MEANING.get(sig, (f"killed by {sig.name}", None))
        return f"exit {exitcode} ({sig.name}): {meaning}", fix
    return f"exited with code {exitcode} (an uncaught error in the child)", (
        "the child's traceback is in the log above"
    )
