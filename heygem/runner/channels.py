"""Bounded queues between stages that never block forever.

Every put/get waits in short slices and checks the job's cancel event, so a failed or
stalled job unwinds every stage promptly; the monitors record who waits on whom, which
is what lets the watchdog name the stuck stage instead of "queue full".
"""

from __future__ import annotations

import queue
import threading
from typing import Generic, TypeVar

from heygem.runner.monitor import StageMonitor, StageState

T = TypeVar("T")
_POLL = 0.05


class EndOfStream:
    """Marker put once by a producer after its last item."""


END = EndOfStream()


class JobCancelled(Exception):
    """Raised inside a stage when the job is being torn down; never escapes the runner."""


class Channel(Generic[T]):
    def __init__(
        self,
        name: str,
        maxsize: int,
        producer: StageMonitor,
        consumer: StageMonitor,
        cancel: threading.Event,
    ) -> None:
        self.name, self.maxsize = name, maxsize
        self.producer, self.consumer = producer, consumer
        self._queue: queue.Queue[T | EndOfStream] = queue.Queue(maxsize)
        self._cancel = cancel
        self.put_count = 0
        self.get_count = 0

    def depth(self) -> int:
        return self._queue.qsize()

    def put(self, item: T | EndOfStream) -> None:
        self.producer.set_state(StageState.WAITING_OUTPUT, f"put to {self.name}", self.name)
        while True:
            if self._cancel.is_set():
                raise JobCancelled
            try:
                self._queue.put(item, timeout=_POLL)
                break
            except queue.Full:
                continue
        self.put_count += 1
        self.producer.set_state(StageState.WORKING, f"producing the next item after {self.name}")

    def get(self) -> T | EndOfStream:
        self.consumer.set_state(StageState.WAITING_INPUT, f"get from {self.name}", self.name)
        while True:
            if self._cancel.is_set():
                raise JobCancelled
            try:
                item = self._queue.get(timeout=_POLL)
                break
            except queue.Empty:
                continue
        self.get_count += 1
        self.consumer.set_state(StageState.WORKING, f"processing an item from {self.name}")
        return item

    def describe(self) -> str:
        return (
            f"{self.name}: {self.depth()}/{self.maxsize} queued, "
            f"{self.put_count} put by {self.producer.name}, "
            f"{self.get_count} taken by {self.consumer.name}"
        )
