"""Per-stage heartbeats and progress counters, readable from the watchdog thread."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum


class StageState(StrEnum):
    STARTING = "starting"
    WORKING = "working"
    WAITING_INPUT = "waiting for input"
    WAITING_OUTPUT = "waiting for space downstream"
    DONE = "done"
    FAILED = "failed"


@dataclass
class StageMonitor:
    """Written by one stage thread, read by the watchdog; single assignments are atomic."""

    name: str
    state: StageState = StageState.STARTING
    items: int = 0
    last_beat: float = field(default_factory=time.monotonic)
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    thread_id: int | None = None
    last_action: str = "not started"
    waiting_on: str | None = None  # channel name while blocked on it
    waited_seconds: float = 0.0
    _wait_started: float | None = None
    # Extra allowance before the first item (e.g. DataLoader workers starting up).
    first_item_grace: float = 0.0

    def attach(self) -> None:
        self.thread_id = threading.get_ident()
        self.started_at = self.last_beat = time.monotonic()

    def set_state(
        self, state: StageState, action: str | None = None, waiting_on: str | None = None
    ) -> None:
        now = time.monotonic()
        if state in (StageState.WAITING_INPUT, StageState.WAITING_OUTPUT):
            self._wait_started = now
        elif self._wait_started is not None:
            self.waited_seconds += now - self._wait_started
            self._wait_started = None
        self.state = state
        self.waiting_on = waiting_on
        self.last_beat = now
        if action:
            self.last_action = action

    def beat(self, items: int = 0, action: str | None = None) -> None:
        self.items += items
        self.last_beat = time.monotonic()
        if action:
            self.last_action = action

    def finish(self, failed: bool = False) -> None:
        self.state = StageState.FAILED if failed else StageState.DONE
        self.finished_at = time.monotonic()

    @property
    def silent_for(self) -> float:
        return time.monotonic() - self.last_beat

    @property
    def busy_seconds_total(self) -> float:
        """Time spent working, not waiting on a neighbour."""
        return max(0.0, self.elapsed - self.waited_seconds)

    @property
    def deadline(self) -> float:
        return self.first_item_grace if self.items == 0 else 0.0

    @property
    def elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return end - self.started_at
