"""Fault injection: rehearse each HeyGem failure on purpose (``HEYGEM_FAULT=stage:kind[:s]``).

Thread stages (decode, generate, compose) support ``slow`` (sleep per item), ``hang``
(stop at the second item), ``crash`` (raise at the second item) and ``never_start``.
The load stage runs inside DataLoader workers when ``--num-workers`` > 0 and adds
``kill`` (SIGKILL, like the OOM killer) and ``sigbus`` (what an exhausted /dev/shm does).
"""

from __future__ import annotations

import os
import signal
import time

from heygem.config import FaultInjection

FAULT_AT_ITEM = 2


def inject(fault: FaultInjection | None, stage: str, item: int, *, in_worker: bool = False) -> None:
    """Called by a stage before handling item ``item`` (0-based)."""
    if fault is None or fault.stage != stage:
        return
    if fault.kind == "slow":
        time.sleep(fault.seconds or 0.5)
    elif item != FAULT_AT_ITEM:
        return
    elif fault.kind == "hang":
        time.sleep(fault.seconds or 3600)  # uninterruptible, like a stuck native call
    elif fault.kind == "crash":
        raise RuntimeError(f"injected fault: stage {stage} failed on item {item}")
    elif fault.kind in ("kill", "sigbus") and in_worker:
        os.kill(os.getpid(), signal.SIGBUS if fault.kind == "sigbus" else signal.SIGKILL)
