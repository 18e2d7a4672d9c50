"""The pace of a task, from the numbers its lines carry.

The steady-state batch cost is the median of every batch but the first (the first pays
for model loading and GPU warm-up). The consumer's pace comes from frame ids (each
finished batch carries the producer's ``current_idx``), so lost or damaged lines do not
change it. The longest wait for a free queue slot is measured from HeyGem's mechanics: a
put waits only while the queue holds its 10 items.
"""

from __future__ import annotations

import itertools
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
        fps=_fps(dones, batch) or _fps(takes, batch),
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
    first take after that send or at the next send line, whichever comes first (both are
    bounds, so lost lines do not lengthen it). The queue's content is counted from frame
    ids (sent current_idx minus the highest frame taken). A put still waiting when the task
    or the log ends is an open wait; the queue-full error ends one after 60 s.
    Returns (longest wait, the line that ended it, still open, blocked at the end).
    """
    capacity = ctx.config.queue_size
    sends = [e for e in events if e.kind is EventKind.SEND]
    if not sends:
        return None, None, False, False
    takes = [e for e in events if e.kind is EventKind.TAKE]
    taken = [e for e in events if e.kind in (EventKind.TAKE, EventKind.BATCH_DONE)]
    use_frames = bool(batch) and all(e.index is not None for e in (*sends, *takes))

    def highest_taken(send: Event) -> int:
        key = (send.time, send.line)
        return max((e.index or 0 for e in taken if (e.time, e.line) <= key), default=0)

    def queued_after(send: Event, number: int) -> int:
        """Items in the queue right after ``send`` (the ``number``-th send)."""
        if use_frames and batch:
            return math.ceil(max(0, (send.index or 0) - highest_taken(send)) / batch)
        key = (send.time, send.line)
        return number - sum(1 for e in takes if (e.time, e.line) <= key)

    def first_take_after(send: Event) -> Event | None:
        key = (send.time, send.line)
        return next((e for e in takes if (e.time, e.line) > key), None)

    def next_in_line(previous: int, event: Event | None) -> bool:
        """Whether ``event`` is the very next item after frame ``previous``: lines in
        between were not lost (a wait measured across lost lines would be too long)."""
        if event is None:
            return False
        if not use_frames or not batch or event.index is None:
            return True
        return previous < event.index <= previous + batch

    longest, ended_by = 0.0, None
    for number, (send, following) in enumerate(itertools.pairwise(sends), start=1):
        if queued_after(send, number) < capacity:
            continue
        take = first_take_after(send)
        bounds = []
        if next_in_line(send.index or 0, following):
            bounds.append(following)
        if next_in_line(highest_taken(send), take):
            bounds.append(take)  # type: ignore[arg-type]
        if not bounds:
            continue
        end = min(bounds, key=lambda e: (e.time, e.line))
        wait = (end.time - send.time).total_seconds()
        if wait > longest:
            longest, ended_by = wait, end.record
    last = sends[-1]
    full = next((e for e in events if e.kind is EventKind.QUEUE_FULL), None)
    producer_done = any(e.kind is EventKind.PRODUCER_DONE for e in events)
    take = first_take_after(last)
    blocked = queued_after(last, len(sends)) >= capacity and not producer_done and take is None
    still_open = False
    if full is not None:
        wait = (full.time - last.time).total_seconds()
        if wait >= longest:
            longest, ended_by = wait, full.record
    elif take is not None and queued_after(last, len(sends)) >= capacity and not producer_done:
        wait = (take.time - last.time).total_seconds()
        if wait > longest:
            longest, ended_by = wait, take.record
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
