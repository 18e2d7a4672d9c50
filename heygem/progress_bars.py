"""Terminal progress bars for the steps of a job (``heygem generate``/``demo``).

A bar appears once its step has run for a second (short steps stay silent) and goes
away when the step ends. Steps before streaming run concurrently, so several bars can
show at once; steps without countable units (an ONNX export) show their elapsed time,
kept ticking by a small timer thread.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

from heygem.progress import StepProgress

SHOW_AFTER = 1.0  # seconds a step runs before its bar appears
_TICK = 0.25


class StepBars:
    def __init__(self, *, disabled: bool = False, show_after: float = SHOW_AFTER) -> None:
        self.disabled = disabled
        self.show_after = show_after
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}
        self._latest: dict[str, StepProgress] = {}
        self._bars: dict[str, Any] = {}  # tqdm bars by step
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> StepBars:
        if not self.disabled:
            self._ticker = threading.Thread(target=self._tick, name="heygem-bars", daemon=True)
            self._ticker.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()

    def __call__(self, progress: StepProgress) -> None:
        if self.disabled:
            return
        with self._lock:
            self._started.setdefault(progress.step, time.monotonic())
            self._latest[progress.step] = progress
            self._show(progress.step)

    def _tick(self) -> None:
        while not self._stop.wait(_TICK):
            with self._lock:
                for step in list(self._latest):
                    self._show(step)

    def _show(self, step: str) -> None:
        """Create, advance or close the bar of ``step`` (lock held)."""
        progress = self._latest[step]
        bar = self._bars.get(step)
        if progress.finished:
            if bar is not None:
                bar.close()
                del self._bars[step]
            del self._latest[step]
            return
        if bar is None:
            if time.monotonic() - self._started[step] < self.show_after:
                return
            bar = self._bars[step] = _new_bar(progress)
        if progress.total is not None:
            if bar.total != progress.total:
                bar.total = progress.total
            bar.update(progress.done - bar.n)
        else:
            bar.refresh()


def _new_bar(progress: StepProgress) -> Any:
    from tqdm import tqdm

    if progress.total is None:  # no units: the step's title and how long it has run
        return tqdm(desc=progress.title, bar_format="{desc}: {elapsed}", leave=False)
    # Starts at the count already done: the bar shows up a second into its step, and
    # counting from 0 would show that second's frames as done in no time (a rate of
    # thousands of frames a second and an ETA of zero, until the average caught up).
    return tqdm(
        total=progress.total,
        initial=progress.done,
        desc=progress.title,
        unit="frame",
        leave=False,
    )
