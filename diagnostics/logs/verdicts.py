"""One verdict per HeyGem task: how it ended, and why.

Only evidence makes a FAIL: a queue-full error (or a put that has waited longer than its
60 s timeout while the log went on), a failure line or ``task_result``, a restart while
the task was open, a task silent for longer than any wait HeyGem allows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from diagnostics.findings import Finding, Severity
from diagnostics.logs.advice import (
    FIX_CONSUMER_DEAD,
    FIX_HUNG,
    FIX_STOPPED,
    cpu_fix,
    cuda_needs,
)
from diagnostics.logs.causes import failure_finding
from diagnostics.logs.context import Context, evidence
from diagnostics.logs.events import FAILURES, SUCCESSES, Event, EventKind, tracebacks
from diagnostics.logs.pace import Pace, by_time
from diagnostics.logs.reading import Line, Record
from diagnostics.logs.tasks import Ending, Task

__all__ = ["STALLS", "still_open", "verdict"]

STALLS = frozenset(
    {"consumer-never-started", "consumer-stopped", "consumer-too-slow", "queue-full"}
)


def verdict(task: Task, facts: Pace, ctx: Context) -> Finding:
    cfg = ctx.config
    full = task.first_of(EventKind.QUEUE_FULL)
    if task.ending is Ending.INTERRUPTED:
        return _interrupted(task, facts, ctx)
    blocked = (
        facts.wait_still_open
        and facts.longest_wait_s is not None
        and facts.longest_wait_s >= cfg.put_timeout_s
    )
    if full is not None or blocked:
        return _stalled(task, facts, ctx, full)
    failures = [e for e in (*task.events, *task.late) if e.kind in FAILURES]
    result = next((e for e in (*task.events, *task.late) if e.kind is EventKind.TASK_RESULT), None)
    if failures or (result is not None and result.stage == "error"):
        return failure_finding(task, facts, ctx, failures, result)
    # No end line but the frames were all processed (the log ends during the mux, or the
    # end line was lost): finished, not running.
    if task.ending is Ending.ENDED:
        return _finished(task, facts, ctx)
    if any(e.kind in SUCCESSES for e in task.events):
        return _mux_hung(task, facts, ctx) or _finished(task, facts, ctx)
    return still_open(task, facts, ctx)


def _mux_hung(task: Task, facts: Pace, ctx: Context) -> Finding | None:
    """All frames written, no end line, and the log went on far longer than the final mux
    takes: HeyGem's last ffmpeg (audio + video, a re-encode) never came back. The mux is
    faster than making the frames, so the limit is the time the task took to get there
    (and at least the put timeout, so a short task's excerpt is not judged by seconds).
    HeyGem runs one task at a time: a later task in the same stream means this one ended."""
    if not ctx.timed:
        return None
    if any(
        other.stream == task.stream and other.first.line > task.last.line
        for other in ctx.timeline.tasks
    ):
        return None  # the service went on to another task: this one's end line was lost
    silent = (ctx.timeline.end_time - task.last.time).total_seconds()
    working = (task.last.time - task.first.time).total_seconds()
    if silent < max(ctx.config.put_timeout_s, working):
        return None
    return Finding(
        "task-hung",
        Severity.FAIL,
        f"task {task.label} hung in its final mux: all its frames were written "
        f"{ctx.at(task.last)}, then no line about it for the {silent:.0f} s the log went on "
        f"(making the frames took {working:.0f} s; the mux takes less)",
        evidence([task.first, task.last], ctx.config.max_evidence),
        fix="HeyGem's final ffmpeg (merging the audio into the video) never returned: look "
        "for a stuck or `<defunct>` ffmpeg child (`heygem-diagnose ps --pid <service pid>`), "
        "a full disk under /code/data/temp (`df -h`), and ffmpeg's own messages around the "
        "task's last line. " + FIX_HUNG,
        subject=task.label,
    )


def _finished(task: Task, facts: Pace, ctx: Context) -> Finding:
    duration = (task.last.time - task.first.time).total_seconds() if ctx.timed else None
    stated = task.end.seconds if task.end is not None else None
    took = stated if stated is not None else duration
    successes = [e for e in task.events if e.kind in SUCCESSES]
    spent = f" in {took:.1f} s" if took is not None else ""
    title = f"task {task.label} finished normally{spent}"
    if task.ending is not Ending.ENDED:
        title = (
            f"task {task.label} finished normally: all its frames were written{spent} (the "
            "log ends before its end line, during the final mux)"
        )
    return Finding(
        "task-finished",
        Severity.OK,
        title,
        evidence([task.first, *(e.record for e in successes[-1:]), task.last], 4),
        subject=task.label,
    )


def _interrupted(task: Task, facts: Pace, ctx: Context) -> Finding:
    assert task.restart is not None
    last = task.last
    gap = (task.restart.time - last.time).total_seconds()
    title = f"task {task.label} was interrupted by a service restart {ctx.at(task.restart)}"
    if facts.max_index is not None:
        of = f" of {facts.total_frames}" if facts.total_frames else ""
        title += f" (the producer had reached current_idx {facts.max_index}{of})"
    return Finding(
        "task-interrupted",
        Severity.FAIL,
        title,
        evidence([task.first, last, task.restart], ctx.config.max_evidence)
        + ((f"the task's last line came {gap:.0f} s before the restart",) if ctx.timed else ()),
        fix="Submit the task again once the service is up. Find out why it restarted: "
        "`docker ps -a` / `docker inspect <container>` (exit code, OOMKilled, restart count) "
        "and `dmesg | grep -i -E 'killed process|out of memory'`; a restart policy hides "
        "crashes.",
        subject=task.label,
    )


def _stalled(task: Task, facts: Pace, ctx: Context, full: Event | None) -> Finding:
    """The producer's put waited the full 60 s: the consumer never took, stopped, or one of
    its batches took longer than the timeout."""
    cfg = ctx.config
    consumer = by_time(task.of(EventKind.TAKE, EventKind.BATCH_DONE, EventKind.CHAOFEN))
    sends = by_time(task.of(EventKind.SEND))
    first_send = sends[0].record if sends else None
    last_send = sends[-1].record if sends else None
    end = full.record if full else None
    if full is not None:
        waited = (
            f"{(full.time - last_send.time).total_seconds():.0f} s after the last put HeyGem "
            "reported the queue full (its put timeout is "
            f"{cfg.put_timeout_s:g} s)"
            if last_send is not None and ctx.timed
            else "the next put timed out: HeyGem reported the queue full (its put timeout is "
            f"{cfg.put_timeout_s:g} s)"
        )
    else:
        waited = (
            f"the next put has waited {facts.longest_wait_s or 0:.0f} s for a free slot "
            f"(HeyGem gives up after {cfg.put_timeout_s:g} s) with the log still going"
        )
    what = _sent(facts, sends)
    hints, hint_lines = _consumer_hints(task, ctx, first_send or task.first, not consumer)
    if not consumer and not sends:  # an excerpt: the error without the lines before it
        return Finding(
            "queue-full",
            Severity.FAIL,
            f"task {task.label}: HeyGem reported its video-drive queue full: the consumer took "
            f"nothing during the producer's {cfg.put_timeout_s:g} s put timeout (this log has "
            "none of the task's sends or takes to tell whether the consumer ever started)",
            evidence([task.first, end], cfg.max_evidence),
            fix=FIX_CONSUMER_DEAD,
            subject=task.label,
        )
    if not consumer:
        title = (
            f"the consumer never took an item of task {task.label}: {what}, "
            + (
                f"exactly the queue's {cfg.queue_size} slots"
                if len(sends) == cfg.queue_size
                else f"into a queue of {cfg.queue_size}"
            )
            + f"; {waited}"
        )
        return Finding(
            "consumer-never-started",
            Severity.FAIL,
            title,
            evidence([*hint_lines, first_send, last_send, end], cfg.max_evidence) + tuple(hints),
            fix=FIX_CONSUMER_DEAD,
            subject=task.label,
        )
    limit = end.time if end is not None else ctx.timeline.end_time
    before_end = [e for e in consumer if e.time <= limit]
    last = before_end[-1] if before_end else consumer[0]
    silent = (limit - last.time).total_seconds()
    # Still finishing batches after the put timed out: a batch took longer than the timeout.
    working = any(e.time > limit for e in consumer)
    if not working:
        before = "the queue-full error" if end is not None else "the end of the log"
        when = f"{ctx.at(last.record)}, {silent:.0f} s before {before}"
        if not ctx.timed:
            when = f"{ctx.at(last.record)}, and nothing more before {before}"
        did = (
            f"it took the batch up to frame {last.index} {when} and never finished it"
            if last.kind is EventKind.TAKE
            else f"its last batch (frame {last.index}) was {when}"
        )
        death, death_lines, fix = _death_notes(ctx, last.record, end)
        title = f"the consumer stopped during task {task.label}: {did}; {what}" + (
            f"; just before, the log says: {death[0]}" if death else ""
        )
        return Finding(
            "consumer-stopped",
            Severity.FAIL,
            title,
            evidence([*hint_lines, last.record, *death_lines, last_send, end], cfg.max_evidence)
            + tuple(hints),
            fix=fix,
            subject=task.label,
        )
    cost = f"{facts.steady_cost_s:.1f} s per batch" if facts.steady_cost_s else "slow batches"
    title = (
        f"the consumer of task {task.label} was still working, but too slowly ({cost}): a put "
        f"waited HeyGem's full {cfg.put_timeout_s:g} s for a free slot"
    )
    return Finding(
        "consumer-too-slow",
        Severity.FAIL,
        title,
        evidence([last.record, last_send, end], cfg.max_evidence) + tuple(hints),
        fix=cpu_fix(ctx.provider_texts),
        subject=task.label,
    )


def _sent(facts: Pace, sends: Sequence[Event]) -> str:
    if not sends:
        return "the producer's sends are not in the log"
    idx = f" (current_idx up to {facts.max_index})" if facts.max_index is not None else ""
    return f"the producer put {len(sends)} batch{'es' if len(sends) != 1 else ''}{idx}"


def _consumer_hints(
    task: Task, ctx: Context, before: Record, never_took: bool
) -> tuple[list[str], list[Record]]:
    """What the log says about the consumer process: its start line, a death, a traceback."""
    hints: list[str] = []
    lines: list[Record] = []
    starts = [
        e.record
        for e in ctx.timeline.service
        if e.kind is EventKind.PROCESS_START
        and "数字人图片处理" in e.record.message
        and e.record.stream == task.stream
        and (e.record.time, e.record.line) <= (before.time, before.line)
    ]
    if not never_took:
        pass
    elif starts:
        start = starts[-1]
        lines.append(start)
        hints.append(
            f"the consumer process logged its start (line {start.line}), so it died or "
            "blocked before taking its first item"
        )
    else:
        hints.append(
            "no consumer start line ('>>> 数字人图片处理进程启动') before the first send: the "
            "consumer was still loading its models, or died while starting"
        )
    window = [r for e in task.events for r in ctx.around(e.record, before=1)]
    for found in tracebacks(line for r in window for line in r.continuation)[:2]:
        hints.append(f"a traceback in the log ends in {found.exception} {found.message}".strip())
    if ctx.provider_events:
        hints.append(
            f"onnxruntime could not use CUDA (line {ctx.provider_events[0].line}): a consumer "
            "creating CUDA sessions that fail can hang or crash"
        )
    init_wh = task.first_of(EventKind.INIT_WH)
    slow = init_wh is not None and (init_wh.seconds or 0) >= ctx.config.cpu_init_wh_s
    if never_took and slow:
        assert init_wh is not None and init_wh.seconds is not None
        hints.append(
            f"init_wh took {init_wh.seconds:.0f} s (line {init_wh.line}; ~8 s on a GPU): on "
            "the CPU, a consumer still loading its models can take longer than the "
            f"{ctx.config.put_timeout_s:g} s put timeout to take its first item"
        )
    return hints, lines


# Native failures a process prints to stderr before it dies (no Python traceback).
_FATAL = re.compile(
    r"Could not load library \S+|cannot open shared object file|CUDNN_STATUS_\w+"
    r"|CUDA error: [^\n]+|Aborted \(core dumped\)|core dumped|Segmentation fault|Bus error"
    r"|terminate called after throwing",
    re.I,
)


def _death_notes(
    ctx: Context, last: Record, end: Record | None
) -> tuple[list[str], list[Line], str]:
    """What the log printed between the consumer's last batch and the error (or the log's
    end): a library it could not load, an abort. Bare stderr lines of a dying process have
    no timestamp of their own; they are read in file order, within the consumer's stream."""
    start = ctx.position.get(id(last))
    stop = ctx.position.get(id(end)) if end is not None else len(ctx.log.records) - 1
    if start is None or stop is None:
        return [], [], FIX_STOPPED
    lines: list[Line] = []
    for record in ctx.log.records[start : stop + 1]:
        if record.stream != last.stream:
            continue
        candidates = [Line(record.line, record.message), *record.continuation]
        lines += [line for line in candidates if _FATAL.search(line.text)]
    if not lines:
        return [], [], FIX_STOPPED
    notes = [f"'{lines[0].text.strip()}' (line {lines[0].number})"]
    needs = cuda_needs(line.text for line in lines)
    if not needs.missing:
        return notes, lines[:2], FIX_STOPPED
    fix = (
        f"The consumer died loading {', '.join(needs.missing)}: make them visible to the "
        "service's processes, built for the CUDA its torch/onnxruntime use (pip "
        "`nvidia-cudnn-cu<CUDA major>` for libcudnn*, `nvidia-cuda-nvrtc-cu<CUDA major>` for "
        "libnvrtc, which cuDNN 8 loads to compile kernels at run time) with their lib "
        "directories on LD_LIBRARY_PATH, or use a CUDA base image that has them; "
        "`heygem-diagnose env` where the service runs shows which libraries load. Then restart "
        "the service: HeyGem does not recover the stuck task."
    )
    return notes, lines[:2], fix


def still_open(task: Task, facts: Pace, ctx: Context) -> Finding:
    cfg = ctx.config
    last = task.last
    silent = (ctx.timeline.end_time - last.time).total_seconds() if ctx.timed else 0.0
    progress = ""
    if facts.max_index is not None:
        of = f" of {facts.total_frames} frames" if facts.total_frames else ""
        progress = f"; the producer had reached current_idx {facts.max_index}{of}"
    if silent >= cfg.put_timeout_s:
        return Finding(
            "task-hung",
            Severity.FAIL,
            f"task {task.label} hung: no line about it for the last {silent:.0f} s of the log "
            f"({ctx.at(last)}), longer than any wait HeyGem allows{progress}",
            evidence([task.first, last], cfg.max_evidence),
            fix=FIX_HUNG,
            subject=task.label,
        )
    where = (
        f"its last line is {silent:.0f} s before the end"
        if ctx.timed
        else "the log has no timestamps, so whether it hung cannot be told"
    )
    return Finding(
        "task-running",
        Severity.WARN,
        f"task {task.label} was still running when the log ends ({where}){progress}",
        evidence([task.first, last], cfg.max_evidence),
        fix="Take the log again after the task had time to finish.",
        subject=task.label,
    )
