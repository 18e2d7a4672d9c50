"""The pace of a task, from the numbers its lines carry.

The steady-state batch cost is the median of every batch but the first (the first pays
for model loading and GPU warm-up). The consumer's pace comes from frame ids (each
finished batch carries the producer's ``current_idx``), so lost or damaged lines do not
change it. The longest wait for a free queue slot is measured from HeyGem's mechanics: a
put waits only while the queue holds its 10 items.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from diagnostics.logs.context import Context
from diagnostics.logs.events import Event, EventKind
from diagnostics.logs.reading import Record
from diagnostics.logs.tasks import Ending, Task

__all__ = ["Pace", "by_time", "pace"]


@dataclass(frozen=True)
class Pace:
    """How fast a task's producer and consumer went, from the numbers the lines carry."""

    batch_size: int | None
    sends: int
    takes: int
    batches_done: int
    max_index: int | None  # the producer's highest current_idx
    total_frames: int | None  # the producer's `len`
    warmup_cost_s: float | None  # the first batch (model and GPU warm-up)
    steady_cost_s: float | None  # median cost of the other batches
    fps: float | None  # frames per second the consumer finished, from frame ids
    video_fps: float
    video_fps_stated: bool
    longest_wait_s: float | None  # the longest a put waited for a free queue slot
    wait_fraction: float | None  # longest_wait_s as a fraction of HeyGem's put timeout
    wait_ended_by: Record | None  # the line that ended that wait (a send, the queue-full error)
    wait_still_open: bool  # the producer was still waiting when the task/log ended
    queue_full_now: bool  # the queue held queue_size items after the last send

    @property
    def real_time_factor(self) -> float | None:
        return self.video_fps / self.fps if self.fps else None

    @property
    def steady_frame_cost_s(self) -> float | None:
        if self.steady_cost_s is None or not self.batch_size:
            return None
        return self.steady_cost_s / self.batch_size


def by_time(events: Iterable[Event]) -> list[Event]:
    return sorted(events, key=lambda e: (e.time, e.line))


def pace(task: Task, ctx: Context) -> Pace:
    cfg = ctx.config
    events = by_time(task.events)
    sends = [e for e in events if e.kind is EventKind.SEND]
    takes = [e for e in events if e.kind is EventKind.TAKE]
    dones = [e for e in events if e.kind is EventKind.BATCH_DONE]
    start = next((e for e in events if e.kind is EventKind.PRODUCER_START), None)
    batch = (
        (start.size if start else None)
        or _mode(e.size for e in sends)
        or _mode(e.size for e in dones)
    )
    costs = _batch_costs(dones, takes)
    video = next((e for e in events if e.kind is EventKind.VIDEO_INFO and e.seconds), None)
    wait, ended_by, still_open, full_now = _longest_wait(task, events, batch, ctx)
    if not ctx.timed:  # an untimed log orders its lines; it times nothing
        wait, ended_by, still_open = None, None, False
    indexes = [e.index for e in sends if e.index is not None]
    return Pace(
        batch_size=batch,
        sends=len(sends),
        takes=len(takes),
        batches_done=len(dones),
        max_index=max(indexes) if indexes else None,
        total_frames=next((e.total for e in events if e.total), None),
        warmup_cost_s=costs[0] if costs else None,
        steady_cost_s=statistics.median(costs[1:]) if len(costs) >= 2 else None,
        fps=(_fps(dones, batch) or _fps(takes, batch)) if ctx.timed else None,
        video_fps=video.seconds if video and video.seconds else cfg.video_fps,
        video_fps_stated=video is not None,
        longest_wait_s=wait,
        wait_fraction=wait / cfg.put_timeout_s if wait is not None else None,
        wait_ended_by=ended_by,
        wait_still_open=still_open,
        queue_full_now=full_now,
    )


def _mode(values: Iterable[int | None]) -> int | None:
    present = [v for v in values if v]
    return statistics.mode(present) if present else None


def _batch_costs(dones: Sequence[Event], takes: Sequence[Event]) -> list[float]:
    """Each finished batch's cost: as HeyGem logged it, else take -> done."""
    taken = {e.index: e.time for e in takes if e.index is not None}
    costs = []
    for done in dones:
        if done.seconds is not None:
            costs.append(done.seconds)
        elif done.index in taken and done.time >= taken[done.index]:
            costs.append((done.time - taken[done.index]).total_seconds())
    return costs


def _fps(events: Sequence[Event], batch: int | None) -> float | None:
    """Frames per second between the first and last of these lines, from their frame ids
    (so lost or damaged lines in between do not change it); counted batches without ids."""
    if len(events) < 2:
        return None
    with_ids = [e for e in events if e.index is not None and e.index >= 0]
    if len(with_ids) >= 2:
        first = min(with_ids, key=lambda e: (e.time, e.line))
        last = max(with_ids, key=lambda e: (e.time, e.line))
        span = (last.time - first.time).total_seconds()
        frames = (last.index or 0) - (first.index or 0)
        return frames / span if span > 0 and frames > 0 else None
    span = (events[-1].time - events[0].time).total_seconds()
    return (len(events) - 1) * batch / span if batch and span > 0 else None


def _longest_wait(
    task: Task, events: Sequence[Event], batch: int | None, ctx: Context
) -> tuple[float | None, Record | None, bool, bool]:
    """The longest time a put waited for a free slot in HeyGem's queue.

    HeyGem logs a send after its put returned. When the queue holds ``queue_size`` items
    after a send, the next put waits until the consumer takes one: the wait ends at the
    first take after that send or at the next send line, whichever comes first, and only
    when that line is the very next item (frame ids show no line was lost in between, so
    lost lines never lengthen a wait). The queue's content is counted from frame ids (sent
    current_idx minus the highest frame taken). A put still waiting when the task or the
    log ends is an open wait; HeyGem's queue-full error ends one after 60 s.
    Returns (longest wait, the line that ended it, still open, blocked at the end).
    One pass over the lines, in time order.
    """
    sends = [e for e in events if e.kind is EventKind.SEND]
    if not sends:
        return None, None, False, False
    capacity = ctx.config.queue_size
    use_frames = bool(batch) and all(
        e.index is not None for e in events if e.kind in (EventKind.SEND, EventKind.TAKE)
    )
    tracker = _Queue(capacity, batch if use_frames else None)
    longest, ended_by = 0.0, None
    waiting: _Wait | None = None  # a put that found the queue full after this send
    last_wait: _Wait | None = None
    for event in events:  # already in time order
        if event.kind is EventKind.TAKE:
            for pending in (waiting, last_wait):
                if pending is not None and pending.take is None:
                    pending.take = event
            if waiting is not None and tracker.next_taken(waiting.highest, event):
                longest, ended_by = _longer(longest, ended_by, waiting.send, event)
                waiting = None
            tracker.took(event)
        elif event.kind is EventKind.BATCH_DONE:
            tracker.done(event)
        elif event.kind is EventKind.SEND:
            if waiting is not None and tracker.next_sent(waiting.send, event):
                longest, ended_by = _longer(longest, ended_by, waiting.send, event)
            waiting = None
            tracker.sent(event)
            last_wait = _Wait(event, tracker.highest, tracker.full())
            # After the last send, the producer may be done: the end of the log decides.
            waiting = last_wait if last_wait.full and event is not sends[-1] else None
    assert last_wait is not None
    last = last_wait.send
    full = next((e for e in events if e.kind is EventKind.QUEUE_FULL), None)
    producer_done = any(e.kind is EventKind.PRODUCER_DONE for e in events)
    take = last_wait.take
    blocked = last_wait.full and not producer_done and take is None
    still_open = False
    if full is not None:
        wait = (full.time - last.time).total_seconds()
        if wait >= longest:
            longest, ended_by = wait, full.record
    elif take is not None and last_wait.full and not producer_done:
        longest, ended_by = _longer(longest, ended_by, last, take)
    elif blocked:
        if task.ending is Ending.INTERRUPTED and task.restart is not None:
            until = task.restart.time
        elif task.ending is Ending.ENDED and task.end is not None:
            until = task.end.time
        else:
            until = ctx.timeline.end_time
        wait = (until - last.time).total_seconds()
        if wait >= longest:
            longest, ended_by, still_open = wait, None, True
    return longest, ended_by, still_open, blocked


@dataclass
class _Wait:
    send: Event
    highest: int  # the highest frame taken when the send was logged
    full: bool  # the queue held queue_size items after it
    take: Event | None = None  # the first take after it


class _Queue:
    """What HeyGem's queue holds, counted from frame ids (or lines, without them)."""

    def __init__(self, capacity: int, batch: int | None) -> None:
        self.capacity, self.batch = capacity, batch
        self.highest = self.last_sent = 0
        self.sends = self.takes = 0

    def sent(self, event: Event) -> None:
        self.sends += 1
        self.last_sent = max(self.last_sent, event.index or 0)

    def took(self, event: Event) -> None:
        self.takes += 1
        self.highest = max(self.highest, event.index or 0)

    def done(self, event: Event) -> None:
        self.highest = max(self.highest, event.index or 0)

    def full(self) -> bool:
        if self.batch:
            return math.ceil(max(0, self.last_sent - self.highest) / self.batch) >= self.capacity
        return self.sends - self.takes >= self.capacity

    def next_taken(self, highest: int, event: Event) -> bool:
        """Whether a take is of the very next item (no take line was lost before it)."""
        return self._follows(highest, event)

    def next_sent(self, previous: Event, event: Event) -> bool:
        return self._follows(previous.index or 0, event)

    def _follows(self, previous: int, event: Event) -> bool:
        if not self.batch or event.index is None:
            return True
        return previous < event.index <= previous + self.batch


def _longer(
    longest: float, ended_by: Record | None, start: Event, end: Event
) -> tuple[float, Record | None]:
    wait = (end.time - start.time).total_seconds()
    return (wait, end.record) if wait > longest else (longest, ended_by)
