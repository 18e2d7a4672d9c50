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


# A stage that has shown its pace is stalled after PACE_FACTOR times its longest silence
# (never less than PACE_FLOOR seconds), judged once PACE_MIN_GAPS silences were seen.
PACE_FACTOR = 5.0
PACE_FLOOR = 2.0
PACE_MIN_GAPS = 4


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
    # The stage's pace: the longest silence between two of its activities once it has
    # produced an item, and how many such silences were seen. None while it has no pace
    # (before its first item, or in a step announced as long, such as the final flush).
    longest_gap: float | None = None
    gaps_seen: int = 0

    def attach(self) -> None:
        self.thread_id = threading.get_ident()
        self.started_at = self.last_beat = time.monotonic()

    def _touch(self, now: float) -> None:
        if self.items and self.longest_gap is not None:
            self.longest_gap = max(self.longest_gap, now - self.last_beat)
            self.gaps_seen += 1
        elif self.items and self.gaps_seen == 0:
            self.longest_gap = 0.0  # the first item: the pace starts now
        self.last_beat = now

    def expect_long(self, action: str) -> None:
        """The next step takes an unknown time (e.g. flushing the encoder): judge it by the
        configured timeout only, not by the pace so far."""
        self._touch(time.monotonic())
        self.longest_gap, self.gaps_seen = None, -1
        self.last_action = action

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
        self._touch(now)
        if action:
            self.last_action = action

    def beat(self, items: int = 0, action: str | None = None) -> None:
        self.items += items
        self._touch(time.monotonic())
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

    def allowed_silence(self, timeout: float) -> float:
        """How long this stage may stay silent before it counts as stalled.

        Before its first item: the timeout plus the start-up grace. Once it has shown its
        pace: a few times its longest silence so far (at least ``PACE_FLOOR``), so a stage
        that did every step in 0.3 s is not given the full timeout to hang; the configured
        timeout stays the ceiling.
        """
        if self.items == 0:
            return timeout + self.first_item_grace
        if self.longest_gap is not None and self.gaps_seen >= PACE_MIN_GAPS:
            return min(timeout, max(PACE_FLOOR, PACE_FACTOR * self.longest_gap))
        return timeout

    @property
    def elapsed(self) -> float:
        end = self.finished_at if self.finished_at is not None else time.monotonic()
        return end - self.started_at
