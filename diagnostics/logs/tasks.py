"""The task model: which lines belong to which task, and how each task ended.

A line that names a task (``[<code>]...``, ``任务:<code>``, ``<code> ->``, a JSON ``job_id``)
belongs to it. The producer's and consumer's lines name no task; they carry frame ids
instead, and HeyGem's queue is first in, first out, so they are matched the way the queue
matched them: a send continues the task whose ``current_idx`` it extends, a take of frame
``k`` belongs to the task that sent ``k`` earliest and has not had it taken, a finished
batch to the task whose take of ``k`` is pending. Tasks of different containers (a
``docker compose logs`` prefix) are kept apart by stream, so interleaved tasks keep their
own lines. Chatter that names nothing (an ERROR line, a warning) goes to the task most
recently active in its stream, if one is open.

A task ends at its ``耗时`` line (HeyGem logs it whatever happened), or for heygem's JSON
log at ``job_finished``/``job_failed``. A start-up banner while a task is open ends it as
interrupted by a service restart. A task still open at the end of the log stays open.
A line about a task after its end (the init_wh answer arriving after the task gave up,
the ``task_result`` printed after ``work()`` returned) is kept as a late event of it.
A task id seen again with a new start line is a new run of it (``1002#2``): HeyGem's
own ``run.py`` uses the same code for every run.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from diagnostics.logs.events import Event, EventKind
from diagnostics.logs.reading import Record

__all__ = ["Ending", "Task", "Timeline", "build_timeline"]


class Ending(StrEnum):
    ENDED = "ended"  # the task's end line: it finished or failed
    INTERRUPTED = "interrupted"  # a start-up banner while it was open
    OPEN = "open"  # still open when the log ends


@dataclass(frozen=True)
class Task:
    task_id: str | None  # None: no line named it (the log starts with its untagged lines)
    run: int  # 1 for the first task with this id in the log, 2 for the next...
    stream: str
    events: tuple[Event, ...]  # in file order
    late: tuple[Event, ...]  # lines about it after it ended
    ending: Ending
    end: Event | None  # the line that ended it
    restart: Record | None  # the banner that interrupted it

    @property
    def label(self) -> str:
        if self.task_id is None:
            return f"unnamed task at line {self.events[0].line}"
        return self.task_id if self.run == 1 else f"{self.task_id}#{self.run}"

    @property
    def first(self) -> Record:
        return min((e.record for e in self.events), key=lambda r: (r.time, r.line))

    @property
    def last(self) -> Record:
        return max((e.record for e in self.events), key=lambda r: (r.time, r.line))

    def of(self, *kinds: EventKind) -> list[Event]:
        return [e for e in self.events if e.kind in kinds]

    def first_of(self, *kinds: EventKind) -> Event | None:
        return next((e for e in self.events if e.kind in kinds), None)


@dataclass(frozen=True)
class Timeline:
    tasks: tuple[Task, ...]
    service: tuple[Event, ...]  # events of no task: banners, child starts, provider errors
    start_time: datetime
    end_time: datetime  # the last time any line of the log states
    records: int


@dataclass
class _Builder:
    task_id: str | None
    run: int
    stream: str
    events: list[Event] = field(default_factory=list)
    late: list[Event] = field(default_factory=list)
    ending: Ending = Ending.OPEN
    end: Event | None = None
    restart: Record | None = None
    active: int = 0  # when it last got a line (a counter), for "most recently active"
    started: bool = False
    producer_started: bool = False
    # What the queue holds, to attribute untagged producer/consumer lines.
    last_sent: int | None = None
    sent: int = 0
    producer_done: bool = False
    pending: deque[tuple[int, int]] = field(default_factory=deque)  # (frame, when sent)
    taken: deque[int] = field(default_factory=deque)

    @property
    def producing(self) -> bool:
        return not self.producer_done and (self.sent > 0 or self.producer_started)

    def add(self, event: Event, clock: int) -> None:
        self.events.append(event)
        self.active = clock
        kind = event.kind
        if kind is EventKind.TASK_START:
            self.started = True
        elif kind is EventKind.PRODUCER_START:
            self.producer_started = True
        elif kind is EventKind.SEND:
            self.sent += 1
            frame = event.index if event.index is not None else self.sent * (event.size or 1)
            self.last_sent = frame
            self.pending.append((frame, clock))
        elif kind is EventKind.PRODUCER_DONE:
            self.producer_done = True
        elif kind is EventKind.TAKE and event.index is not None:
            while self.pending and self.pending[0][0] <= event.index:
                self.pending.popleft()  # FIFO: a take of k means everything up to k left
            self.taken.append(event.index)
        elif kind is EventKind.BATCH_DONE and event.index is not None:
            while self.taken and self.taken[0] <= event.index:
                self.taken.popleft()
            while self.pending and self.pending[0][0] <= event.index:
                self.pending.popleft()  # its take line was lost

    def freeze(self) -> Task:
        return Task(
            task_id=self.task_id,
            run=self.run,
            stream=self.stream,
            events=tuple(self.events),
            late=tuple(self.late),
            ending=self.ending,
            end=self.end,
            restart=self.restart,
        )


class _Model:
    def __init__(self) -> None:
        self.tasks: list[_Builder] = []
        self.open: dict[str, list[_Builder]] = {}
        self.closed: dict[str, list[_Builder]] = {}
        # Closed tasks by id: every tagged line asks for its task's ended runs, and a day's
        # log holds thousands of tasks (a scan per line made long logs quadratic).
        self.closed_by_id: dict[str, list[_Builder]] = {}
        self.service: list[Event] = []
        self.runs: Counter[str] = Counter()
        self.clock = 0

    # -- bookkeeping ----------------------------------------------------------------------
    def new_task(self, task_id: str | None, stream: str) -> _Builder:
        if task_id is not None:
            self.runs[task_id] += 1
        task = _Builder(task_id, self.runs[task_id] if task_id else 1, stream)
        self.tasks.append(task)
        self.open.setdefault(stream, []).append(task)
        return task

    def close(self, task: _Builder, ending: Ending) -> None:
        task.ending = ending
        if task in self.open.get(task.stream, []):
            self.open[task.stream].remove(task)
        self.closed.setdefault(task.stream, []).append(task)
        if task.task_id is not None:
            self.closed_by_id.setdefault(task.task_id, []).append(task)

    def open_in(self, stream: str) -> list[_Builder]:
        return self.open.get(stream, [])

    @staticmethod
    def latest(tasks: Iterable[_Builder]) -> _Builder | None:
        return max(tasks, key=lambda t: t.active, default=None)

    # -- events ---------------------------------------------------------------------------
    def feed(self, event: Event) -> None:
        self.clock += 1
        kind = event.kind
        stream = event.record.stream
        if kind is EventKind.HTTP:
            return  # the service is alive; not task work
        if kind is EventKind.SERVICE_START:
            for task in list(self.open_in(stream)):
                task.restart = event.record
                self.close(task, Ending.INTERRUPTED)
            self.service.append(event)
            return
        if kind in (EventKind.PROCESS_START, EventKind.PROVIDER_FAILURE):
            self.service.append(event)
            return
        owner = self.named(event, stream) if event.task_id else self.unnamed(event, stream)
        if owner is None:
            return
        owner.add(event, self.clock)
        if kind is EventKind.TASK_END or (
            event.record.data is not None and kind in (EventKind.RESULT, EventKind.TASK_FAILED)
        ):
            owner.end = event
            self.close(owner, Ending.ENDED)

    def named(self, event: Event, stream: str) -> _Builder | None:
        task_id = event.task_id
        assert task_id is not None
        candidates = [t for t in self.open_in(stream) if t.task_id == task_id] or [
            t for tasks in self.open.values() for t in tasks if t.task_id == task_id
        ]
        current = self.latest(candidates)
        if event.kind is EventKind.TASK_START:
            if current is not None and not current.started:
                return current
            return self.new_task(task_id, stream)
        if current is not None:
            return current
        unnamed = self.latest(t for t in self.open_in(stream) if t.task_id is None)
        if unnamed is not None:  # the log began with its untagged lines
            self.runs[task_id] += 1
            unnamed.task_id, unnamed.run = task_id, self.runs[task_id]
            return unnamed
        ended = self.latest(self.closed_by_id.get(task_id, []))
        if ended is not None:  # after its end line: the init_wh answer, a result, an error
            ended.late.append(event)
            return None
        if event.kind in (EventKind.NOTE, EventKind.WARNING):
            return None  # chatter (or a cut line) naming an unknown id starts no task
        return self.new_task(task_id, stream)

    def unnamed(self, event: Event, stream: str) -> _Builder | None:
        """The task an untagged line belongs to, by its frame ids where it has them."""
        kind = event.kind
        tasks = self.open_in(stream)
        if kind is EventKind.SEND:
            return self.for_send(event, tasks) or self.new_task(None, stream)
        if kind is EventKind.TAKE:
            return self.for_take(event, tasks) or self.new_task(None, stream)
        if kind in (EventKind.BATCH_DONE, EventKind.CHAOFEN):
            return self.for_done(event, tasks) or self.new_task(None, stream)
        if kind is EventKind.END_MARKER:
            finished = [t for t in tasks if t.producer_done and not t.pending]
            return self.latest(finished) or self.latest(tasks)
        if kind is EventKind.PRODUCER_DONE:
            return self.latest(t for t in tasks if t.producing) or self.latest(tasks)
        if kind is EventKind.TASK_RESULT:
            # Printed after work() returned: it is about the task that just ended.
            ended = self.latest(self.closed.get(stream, []))
            current = self.latest(tasks)
            if ended is not None and (current is None or ended.active > current.active):
                ended.late.append(event)
                return None
            return current
        owner = self.latest(tasks)
        if owner is None:
            self.service.append(event)
        return owner

    def for_send(self, event: Event, tasks: Sequence[_Builder]) -> _Builder | None:
        if event.index is not None and event.size:
            size, index = event.size, event.index
            following = [
                t
                for t in tasks
                if (t.last_sent is not None and t.last_sent + size == index)
                or (t.last_sent is None and index <= size)
            ]
            if following:
                return self.latest(following)
        return self.latest(t for t in tasks if t.producing) or self.latest(tasks)

    def for_take(self, event: Event, tasks: Sequence[_Builder]) -> _Builder | None:
        frame = event.index
        if frame is not None:
            sent_first: list[tuple[int, _Builder]] = [
                (when, t) for t in tasks for sent, when in t.pending if sent == frame
            ]
            if sent_first:
                return min(sent_first, key=lambda pair: pair[0])[1]
            ahead = [t for t in tasks if t.last_sent is not None and t.last_sent >= frame]
            if ahead:
                return self.latest(ahead)
        return self.latest(t for t in tasks if t.sent) or self.latest(tasks)

    def for_done(self, event: Event, tasks: Sequence[_Builder]) -> _Builder | None:
        frame = event.index
        if frame is not None:
            taking = [t for t in tasks if frame in t.taken]
            if taking:
                return self.latest(taking)
            sent = [t for t in tasks if any(f == frame for f, _ in t.pending)]
            if sent:
                return self.latest(sent)
        return self.latest(t for t in tasks if t.taken) or self.latest(tasks)


def build_timeline(records: Sequence[Record], events: Iterable[Event]) -> Timeline:
    """Attribute every event to its task (or to the service) and end each task."""
    model = _Model()
    for event in events:
        model.feed(event)
    times = [r.time for r in records]
    return Timeline(
        tasks=tuple(t.freeze() for t in model.tasks if t.events),
        service=tuple(model.service),
        start_time=min(times),
        end_time=max(times),
        records=len(records),
    )
