"""The guard that keeps every doctor probe from raising, and small shared helpers.

A probe returns a ``diagnostics.findings.Finding``.
"""

from __future__ import annotations

import functools
import logging
import re
import traceback
from collections.abc import Callable
from typing import ParamSpec

from diagnostics.findings import Finding, Severity

log = logging.getLogger(__name__)

P = ParamSpec("P")


def never_raises(
    probe_id: str, title: str
) -> Callable[[Callable[P, Finding]], Callable[P, Finding]]:
    """Turn any exception escaping a probe into a 'warn' result carrying the traceback.

    KeyboardInterrupt still propagates: the user asked to stop, that is not a finding.
    """

    def decorate(fn: Callable[P, Finding]) -> Callable[P, Finding]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Finding:
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                log.debug("probe %s crashed", probe_id, exc_info=True)
                tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
                return Finding(
                    probe_id,
                    Severity.WARN,
                    title,
                    [f"probe could not run: {type(exc).__name__}: {exc}", *_tail(tb)],
                    "The check itself failed, so this part of the environment is unverified; "
                    "the evidence shows where.",
                )

        return wrapper

    return decorate


def _tail(tb_lines: list[str], n: int = 3) -> list[str]:
    lines = [ln.rstrip() for chunk in tb_lines for ln in chunk.splitlines() if ln.strip()]
    return lines[-n:]


_RELEASE = re.compile(r"^\s*v?(\d+(?:\.\d+)*)")


def release_tuple(version: str) -> tuple[int, ...]:
    """Numeric release part of a version string: '1.18.0+cu118' -> (1, 18, 0).

    Pre-release tags are ignored on purpose: numpy 2.0.0rc1 already has the numpy-2 ABI,
    so for binary-compatibility rules it must compare as 2.0.0 (packaging would say < 2).
    """
    m = _RELEASE.match(version)
    if not m:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(p) for p in m.group(1).split("."))


def version_lt(version: str, bound: str) -> bool:
    a, b = release_tuple(version), release_tuple(bound)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) < b + (0,) * (width - len(b))


def fmt_bytes(n: float) -> str:
    """Binary units, because Docker's --shm-size and tmpfs sizes are binary (64m = 64 MiB)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            number = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{number} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
