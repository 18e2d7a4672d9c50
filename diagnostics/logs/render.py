"""Rendering: the one ``Report`` with a per-task summary and a compact timeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from diagnostics.findings import Finding, Report
from diagnostics.logs.events import Event, EventKind
from diagnostics.logs.reading import LogText
from diagnostics.logs.rules import Pace
from diagnostics.logs.tasks import Task, Timeline

__all__ = ["TaskResult", "build_report"]

_REPEATED = frozenset(
    {EventKind.SEND, EventKind.TAKE, EventKind.BATCH_DONE, EventKind.CHAOFEN, EventKind.PROGRESS}
)
_MAX_ROWS = 24
_STATES = {
    "task-finished": "finished",
    "task-interrupted": "interrupted",
    "task-running": "running",
    "task-hung": "hung",
    "consumer-never-started": "stalled",
    "consumer-stopped": "stalled",
    "consumer-too-slow": "stalled",
    "queue-full": "stalled",
    "stage-stalled": "stalled",
}


@dataclass(frozen=True)
class TaskResult:
    task: Task
    pace: Pace | None
    findings: tuple[Finding, ...]

    @property
    def state(self) -> str:
        return _STATES.get(self.findings[0].id, "failed") if self.findings else "unknown"


def build_report(
    log: LogText, timeline: Timeline, results: Sequence[TaskResult], log_wide: Sequence[Finding]
) -> Report:
    findings = tuple(f for r in results for f in r.findings) + tuple(log_wide)
    body = [_summary(log, timeline)]
    for result in results:
        body += ["", *_task_block(result, log.timed)]
    if results:
        body.append("")
    return Report(
        tool="log",
        title=f"HeyGem log {log.path.name}",
        findings=findings,
        details={
            "path": str(log.path),
            "format": log.format,
            "encoding": log.encoding,
            "lines": log.total_lines,
            "records": len(log.records),
            "other_lines": log.other_lines,
            "prefixes": list(log.prefixes),
            "timed": log.timed,
            "damage": log.damage.to_dict(),
            "tasks": [_task_dict(r) for r in results],
        },
        body=tuple(body),
    )


def _summary(log: LogText, timeline: Timeline) -> str:
    kind = "heygem JSON log" if log.format == "json" else "HeyGem log"
    count = len(timeline.tasks)
    damage = f"{log.damage.lines} damaged" if log.damage.lines else "no damaged lines"
    prefixes = f", prefixes: {', '.join(log.prefixes)}" if log.prefixes else ""
    if not log.timed:
        prefixes += ", no timestamps (order only)"
    return (
        f"{log.path.name}: {kind} ({log.encoding}), {log.total_lines} lines, "
        f"{len(log.records)} records, {count} task{'s' if count != 1 else ''}, "
        f"{damage}{prefixes}"
    )


def _task_block(result: TaskResult, timed: bool) -> list[str]:
    task = result.task
    first, last = task.first, task.last
    duration = (last.time - first.time).total_seconds()
    stream = f" in {task.stream}" if task.stream else ""
    span = (
        f"{first.time:%Y-%m-%d %H:%M:%S} -> {last.time:%H:%M:%S} ({duration:.1f} s, "
        if timed
        else "("
    )
    lines = [f"task {task.label}{stream} [{result.state}] {span}lines {first.line}-{last.line})"]
    if result.pace is not None and (result.pace.sends or result.pace.takes):
        lines.append("  " + _pace_line(result.pace))
    lines += [f"  {row}" for row in _timeline_rows([*task.events, *task.late], timed)]
    return lines


def _pace_line(pace: Pace) -> str:
    idx = f" (current_idx {pace.max_index}" if pace.max_index is not None else ""
    if idx:
        idx += f" of {pace.total_frames})" if pace.total_frames else ")"
    parts = [f"{pace.sends} sends{idx}", f"{pace.takes} takes", f"{pace.batches_done} batches done"]
    if pace.steady_cost_s is not None:
        parts.append(f"steady {pace.steady_cost_s:.2f} s/batch (first {pace.warmup_cost_s:.2f} s)")
    if pace.fps is not None:
        parts.append(f"{pace.fps:.1f} fps")
    if pace.longest_wait_s is not None:
        parts.append(f"longest queue wait {pace.longest_wait_s:.1f} s")
    return ", ".join(parts)


def _timeline_rows(events: Sequence[Event], timed: bool) -> list[str]:
    """One row per event; runs of sends/takes/finished batches collapse to one row each."""
    ordered = sorted(events, key=lambda e: (e.time, e.line))
    rows: list[str] = []
    groups: dict[EventKind, list[Event]] = {}
    order: list[Event | EventKind] = []
    for event in ordered:
        if event.kind in _REPEATED:
            if event.kind not in groups:
                groups[event.kind] = []
                order.append(event.kind)
            groups[event.kind].append(event)
        else:
            order.append(event)
    for entry in order[:_MAX_ROWS]:
        if isinstance(entry, Event):
            rows.append(
                f"{_hms(entry, timed)}  L{entry.line:<6} {entry.kind.value:<15} {_detail(entry)}"
            )
            continue
        group = groups[entry]
        first, last = group[0], group[-1]
        span = f"L{first.line}-{last.line}" if len(group) > 1 else f"L{first.line}"
        label = f"{entry.value} x{len(group)}"
        rows.append(
            f"{_hms(first, timed)}  {span:<7} {label:<15} until {_hms(last, timed)}; "
            f"last: {_detail(last)}"
        )
    if len(order) > _MAX_ROWS:
        rows.append(f"... {len(order) - _MAX_ROWS} more events (see --json)")
    return rows


def _hms(event: Event, timed: bool = True) -> str:
    return event.time.strftime("%H:%M:%S.%f")[:-3] if timed else "--:--:--.---"


def _detail(event: Event) -> str:
    text = event.record.message.strip() or "(empty message)"
    return text if len(text) <= 90 else text[:89] + "…"


def _task_dict(result: TaskResult) -> dict[str, Any]:
    task, pace = result.task, result.pace
    late = {id(e) for e in task.late}
    data: dict[str, Any] = {
        "label": task.label,
        "task_id": task.task_id,
        "run": task.run,
        "stream": task.stream,
        "state": result.state,
        "ending": task.ending.value,
        "first_line": task.first.line,
        "last_line": task.last.line,
        "start": task.first.time.isoformat(),
        "end": task.last.time.isoformat(),
        "duration_s": round((task.last.time - task.first.time).total_seconds(), 3),
        "restart_line": task.restart.line if task.restart else None,
        "events": [
            {
                "time": e.time.isoformat(),
                "line": e.line,
                "kind": e.kind.value,
                "late": id(e) in late,
                "detail": _detail(e),
            }
            for e in sorted([*task.events, *task.late], key=lambda e: (e.time, e.line))
        ],
    }
    if pace is not None:
        data.update(
            {
                "batch_size": pace.batch_size,
                "sends": pace.sends,
                "max_current_idx": pace.max_index,
                "total_frames": pace.total_frames,
                "takes": pace.takes,
                "batches_done": pace.batches_done,
                "warmup_batch_cost_s": _round(pace.warmup_cost_s),
                "steady_batch_cost_s": _round(pace.steady_cost_s),
                "fps": _round(pace.fps),
                "video_fps": pace.video_fps,
                "real_time_factor": _round(pace.real_time_factor),
                "longest_queue_wait_s": _round(pace.longest_wait_s),
                "longest_queue_wait_fraction": _round(pace.wait_fraction),
            }
        )
    return data


def _round(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None
