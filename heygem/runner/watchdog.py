"""Turn a silent stage or a dead child into a typed error that names the culprit.

A stage blocked on a full queue is not the problem, its consumer is; a stage starved
of input points at its producer. Following those edges from the first silent stage
finds the stage that is really stuck, and the error carries what an operator needs:
queue depths, what each side last did, the stuck thread's Python stack, child exits.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from heygem.errors import FailureCause, PipelineError, PipelineStalled, StageCrashed
from heygem.runner.channels import Channel
from heygem.runner.exits import OomWatch, describe_exit
from heygem.runner.monitor import PACE_FACTOR, StageMonitor, StageState


@dataclass(frozen=True)
class ChildProcess:
    """A child the job started (a DataLoader worker), as the watchdog sees it."""

    stage: str
    pid: int | None
    exitcode: int | None
    stopped_for: float = 0.0  # seconds seen in state T (SIGSTOP, a debugger)


# A child seen stopped this long fails the job (a moment in T can be a debugger's step).
STOPPED_GRACE = 0.5


class Watchdog:
    def __init__(
        self,
        monitors: Sequence[StageMonitor],
        channels: Sequence[Channel[Any]],
        stall_timeout: float,
        children: Callable[[], list[ChildProcess]] = list,
        oom: OomWatch | None = None,
    ) -> None:
        self._monitors = {m.name: m for m in monitors}
        self._channels: dict[str, Channel[Any]] = {c.name: c for c in channels}
        self._timeout = stall_timeout
        self._children = children
        self._oom = oom or OomWatch()

    def check(self) -> PipelineError | None:
        return self._dead_child() or self._stall()

    def input_depth(self, stage: str | None) -> int | None:
        """Items queued for ``stage`` (the backlog a stuck consumer left behind)."""
        depths = [c.depth() for c in self._channels.values() if c.consumer.name == stage]
        return max(depths) if depths else None

    def _dead_child(self) -> PipelineError | None:
        children = self._children()
        for child in children:
            if child.exitcode is None and child.stopped_for >= STOPPED_GRACE:
                return PipelineStalled(
                    f"stage '{child.stage}': worker process {child.pid} is stopped (state T, "
                    f"for {child.stopped_for:.1f} s): SIGSTOP, SIGTSTP or a debugger; the stage "
                    "waits on it",
                    stage=child.stage,
                    hint=f"find who stopped pid {child.pid} (a debugger, Ctrl-Z, a container "
                    "pause); `heygem-diagnose ps` shows process states",
                    cause=FailureCause.PROCESS_STOPPED,
                )
        for child in children:
            if child.exitcode is not None and child.exitcode != 0:
                exit_ = describe_exit(child.exitcode, oom_killed=self._oom.killed_since())
                return StageCrashed(
                    f"stage '{child.stage}': worker process {child.pid} died: {exit_.what}",
                    stage=child.stage,
                    hint=exit_.fix,
                    cause=exit_.cause,
                )
        return None

    def _stall(self) -> PipelineStalled | None:
        for monitor in self._monitors.values():
            if monitor.state in (StageState.DONE, StageState.FAILED):
                continue
            if monitor.silent_for > monitor.allowed_silence(self._timeout):
                culprit = self._blame(monitor)
                # A neighbour still inside its start-up allowance is slow, not stuck.
                if culprit.silent_for > culprit.allowed_silence(self._timeout):
                    return self._report(culprit, monitor)
        return None

    def _blame(self, monitor: StageMonitor) -> StageMonitor:
        seen: set[str] = set()
        while monitor.name not in seen and monitor.waiting_on in self._channels:
            seen.add(monitor.name)
            channel = self._channels[monitor.waiting_on]
            if monitor.state == StageState.WAITING_OUTPUT:
                monitor = channel.consumer
            elif monitor.state == StageState.WAITING_INPUT:
                monitor = channel.producer
            else:
                break
        return monitor

    def _report(self, culprit: StageMonitor, noticed: StageMonitor) -> PipelineStalled:
        silent = culprit.silent_for
        allowed = culprit.allowed_silence(self._timeout)
        rule = (
            f"{allowed:.1f} s allowed: {PACE_FACTOR:g}x its longest pause so far"
            if allowed < self._timeout and culprit.items
            else f"stall timeout {self._timeout:g} s"
        )
        lines = [
            f"stage '{culprit.name}' made no progress for {silent:.1f} s ({rule}) "
            f"(state: {culprit.state.value}; last action: {culprit.last_action}; "
            f"{culprit.items} items done)"
        ]
        summary = ""
        cause = FailureCause.NO_PROGRESS
        feeding = [c for c in self._channels.values() if c.consumer is culprit]
        for channel in feeding:
            if (
                culprit.items == 0
                and channel.get_count == 0
                and channel.depth() >= (channel.maxsize)
            ):
                cause = FailureCause.CONSUMER_NEVER_STARTED
                summary = (
                    f"consumer never started or died: '{channel.producer.name}' filled "
                    f"'{channel.name}' to its maxsize {channel.maxsize} and "
                    f"'{culprit.name}' never took an item"
                )
        if noticed is not culprit:
            lines.append(f"noticed at stage '{noticed.name}' ({noticed.state.value})")
        lines.append("queues: " + "; ".join(c.describe() for c in self._channels.values()))
        for child in self._children():
            lines.append(f"child {child.pid} ({child.stage}): {describe_exit(child.exitcode).what}")
        stack = _thread_stack(culprit.thread_id)
        if stack:
            lines.append("stack of the stuck stage:\n" + stack)
        message = (summary + "\n" if summary else "") + "\n".join(lines)
        return PipelineStalled(
            message,
            stage=culprit.name,
            cause=cause,
            hint=(
                "run `heygem-diagnose env` (shared memory, CUDA libraries) and try "
                "--num-workers 0 to take DataLoader workers out of the picture"
            ),
        )


def _thread_stack(thread_id: int | None, limit: int = 12) -> str:
    """The Python stack of a live thread (faulthandler's view, but as text we can keep)."""
    if thread_id is None:
        return ""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return ""
    return "".join(traceback.format_stack(frame, limit=limit)).rstrip()
