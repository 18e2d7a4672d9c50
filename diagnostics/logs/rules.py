"""The rules: every finding about a log, judged by HeyGem's mechanics.

Per task: its verdict (``verdicts``), then information lines: the steady-state batch cost,
the consumer's pace and the real-time factor (HeyGem is always slower than real time; that
alone is no problem), the longest wait for a free queue slot as a fraction of the 60 s put
timeout, how far into its 10 s wait init_wh answered, and CPU inference suspected from the
steady cost or init_wh (never from the warm-up batch). Log-wide: onnxruntime's own
CPU-fallback messages, damaged lines, restarts, errors outside any task, warnings.
Timings alone make at most a WARN.
"""

from __future__ import annotations

from collections.abc import Sequence

from diagnostics.findings import Finding, Severity
from diagnostics.logs.advice import (
    FIX_CONSUMER_DEAD,
    FIX_STOPPED,
    cpu_fallback_fix,
    cpu_fix,
    cuda_needs,
)
from diagnostics.logs.causes import known_cause
from diagnostics.logs.context import Context, evidence, short
from diagnostics.logs.events import Event, EventKind
from diagnostics.logs.pace import Pace, pace
from diagnostics.logs.reading import Record
from diagnostics.logs.tasks import Task
from diagnostics.logs.verdicts import STALLS, still_open, verdict

__all__ = ["log_findings", "task_findings"]


def task_findings(task: Task, facts: Pace | None, ctx: Context) -> list[Finding]:
    """The verdict on one task, then what its numbers say (``facts``: None for heygem's
    JSON log, whose jobs have no HeyGem queue)."""
    if facts is None:
        return _json_task(task, ctx)
    findings = [verdict(task, facts, ctx)]
    findings += _pace_findings(task, facts, ctx, findings[0])
    return findings


def _pace_findings(task: Task, facts: Pace, ctx: Context, verdict: Finding) -> list[Finding]:
    cfg = ctx.config
    findings: list[Finding] = []
    if facts.steady_cost_s is not None:
        per = f" of {facts.batch_size}" if facts.batch_size else ""
        warmup = (
            f"; the first batch took {facts.warmup_cost_s:.2f} s (warm-up, excluded)"
            if facts.warmup_cost_s is not None
            else ""
        )
        findings.append(
            Finding(
                "batch-cost",
                Severity.INFO,
                f"steady-state batch cost {facts.steady_cost_s:.2f} s per batch{per} (median "
                f"of {facts.batches_done - 1} batches){warmup}",
                subject=task.label,
            )
        )
    if facts.fps is not None:
        rtf = facts.real_time_factor or 0.0
        fps = f"{facts.video_fps:g} fps video" + ("" if facts.video_fps_stated else ", assumed")
        pace_text = (
            f"{rtf:.1f}x slower than real time ({fps})"
            if rtf > 1
            else f"faster than real time ({fps})"
        )
        findings.append(
            Finding(
                "throughput",
                Severity.INFO,
                f"the consumer finished {facts.fps:.1f} frames/s (from its frame ids): {pace_text}",
                subject=task.label,
            )
        )
    if facts.longest_wait_s is not None:
        fraction = facts.longest_wait_s / cfg.put_timeout_s
        close = fraction >= cfg.close_call and verdict.id not in STALLS
        findings.append(
            Finding(
                "queue-wait",
                Severity.WARN if close else Severity.INFO,
                f"longest wait for a free queue slot {facts.longest_wait_s:.1f} s = "
                f"{fraction:.0%} of HeyGem's {cfg.put_timeout_s:g} s put timeout"
                + (": close to failing the task" if close else ""),
                evidence([facts.wait_ended_by], 1),
                fix=(cpu_fix(ctx.provider_texts) if close else None),
                subject=task.label,
            )
        )
    answer = task.first_of(EventKind.INIT_WH)
    began = task.first_of(EventKind.AUDIO_FEATURES)
    if ctx.timed and answer and began and verdict.id != "init-wh-timeout":
        into = (answer.time - began.time).total_seconds()
        if 0 < into <= cfg.init_wh_wait_s:
            findings.append(
                Finding(
                    "init-wh-wait",
                    Severity.INFO,
                    f"init_wh answered {into:.1f} s into HeyGem's {cfg.init_wh_wait_s:g} s wait "
                    f"({into / cfg.init_wh_wait_s:.0%}; later than that fails the task)",
                    evidence([began.record, answer.record], 2),
                    subject=task.label,
                )
            )
    cpu = _cpu_suspected(task, facts, ctx)
    if cpu is not None:
        findings.append(cpu)
    return findings


def _cpu_suspected(task: Task, facts: Pace, ctx: Context) -> Finding | None:
    """Timings that look like CPU inference: the steady cost (never the warm-up batch) and
    init_wh's cost."""
    cfg = ctx.config
    reasons: list[str] = []
    lines: list[Record] = []
    frame_cost = facts.steady_frame_cost_s
    if frame_cost is not None and frame_cost >= cfg.cpu_frame_cost_s:
        reasons.append(
            f"the steady cost is {frame_cost:.2f} s per frame (GPUs: 0.1-0.4 s; flagged from "
            f"{cfg.cpu_frame_cost_s:g} s)"
        )
        dones = task.of(EventKind.BATCH_DONE)
        lines += [e.record for e in dones[1:2]]
    init_wh = next((e for e in (*task.events, *task.late) if e.kind is EventKind.INIT_WH), None)
    if init_wh is not None and init_wh.seconds is not None and init_wh.seconds >= cfg.cpu_init_wh_s:
        reasons.append(
            f"init_wh took {init_wh.seconds:.1f} s (a GPU: ~8 s; flagged from "
            f"{cfg.cpu_init_wh_s:g} s)"
        )
        lines.append(init_wh.record)
    if not reasons:
        return None
    providers = ctx.provider_events
    title = "CPU inference suspected: " + "; ".join(reasons)
    if providers:
        title += f", as onnxruntime's CUDA failure (line {providers[0].line}) predicts"
    return Finding(
        "cpu-fallback-suspected",
        Severity.WARN,
        title,
        evidence(lines, ctx.config.max_evidence),
        fix=cpu_fix(ctx.provider_texts),
        subject=task.label,
    )


# --- heygem's JSON log --------------------------------------------------------------------
def _json_task(task: Task, ctx: Context) -> list[Finding]:
    cfg = ctx.config
    stall = task.first_of(EventKind.STALL, EventKind.CRASH)
    failed = task.first_of(EventKind.TASK_FAILED)
    fps = _json_fps(task)
    findings: list[Finding] = []
    if stall is not None:
        stage = stall.stage or "?"
        progressed = [
            e
            for e in task.of(EventKind.PROGRESS, EventKind.STAGE_DONE)
            if e.stage == stage and e.index
        ]
        depth = f" (its input queue held {stall.size})" if stall.size is not None else ""
        shown = evidence([task.first, stall.record, failed.record if failed else None], 8)
        if stall.kind is EventKind.STALL and not progressed:
            findings.append(
                Finding(
                    "consumer-never-started",
                    Severity.FAIL,
                    f"stage {stage} of job {task.label} never reported progress before the "
                    f"watchdog stopped it{depth}: consumer never started or died",
                    shown,
                    fix=FIX_CONSUMER_DEAD,
                    subject=task.label,
                )
            )
        else:
            kind = "stalled" if stall.kind is EventKind.STALL else "crashed"
            findings.append(
                Finding(
                    f"stage-{kind}",
                    Severity.FAIL,
                    f"stage {stage} of job {task.label} {kind}{depth}: {short(stall.text)}",
                    shown,
                    fix=FIX_STOPPED,
                    subject=task.label,
                )
            )
    elif failed is not None:
        findings.append(
            Finding(
                "task-failed",
                Severity.FAIL,
                f"job {task.label} failed: {short(failed.text) or 'no message'}",
                evidence([failed.record], cfg.max_evidence),
                fix=known_cause(failed.text, [])[1],
                subject=task.label,
            )
        )
    elif task.first_of(EventKind.RESULT) is not None:
        done = task.first_of(EventKind.RESULT)
        assert done is not None
        took = (
            done.seconds
            if done.seconds is not None
            else ((task.last.time - task.first.time).total_seconds())
        )
        findings.append(
            Finding(
                "task-finished",
                Severity.OK,
                f"job {task.label} finished normally in {took:.1f} s",
                evidence([task.first, done.record], 4),
                subject=task.label,
            )
        )
    else:
        findings.append(still_open(task, pace(task, ctx), ctx))
    if fps is not None:
        stage, rate = fps
        findings.append(
            Finding(
                "throughput",
                Severity.INFO,
                f"the slowest stage ({stage}) went at {rate:.1f} frames/s",
                subject=task.label,
            )
        )
    return findings


def _json_fps(task: Task) -> tuple[str, float] | None:
    """The slowest stage's rate, from its cumulative frame counters."""
    rates: dict[str, float] = {}
    stages = {e.stage for e in task.events if e.stage}
    for stage in stages:
        points = [
            (e.time, 0 if e.kind is EventKind.STAGE_START else (e.index or 0))
            for e in task.events
            if e.stage == stage
            and e.kind in (EventKind.STAGE_START, EventKind.PROGRESS, EventKind.STAGE_DONE)
        ]
        points.sort()
        if len(points) < 2:
            continue
        span = (points[-1][0] - points[0][0]).total_seconds()
        frames = points[-1][1] - points[0][1]
        if span > 0 and frames > 0:
            rates[stage] = frames / span
    if not rates:
        return None
    slowest = min(rates, key=rates.__getitem__)
    return slowest, rates[slowest]


# --- the whole log ------------------------------------------------------------------------
def log_findings(ctx: Context, task_results: Sequence[Sequence[Finding]]) -> list[Finding]:
    cfg = ctx.config
    findings: list[Finding] = []
    providers = ctx.provider_events
    if providers:
        needs = cuda_needs(ctx.provider_texts)
        wants = ""
        if needs.known:
            versions = [f"CUDA {v}" for v in needs.cuda] + [f"cuDNN {v}" for v in needs.cudnn]
            wants = f" (it needs {' + '.join(versions)})"
        findings.append(
            Finding(
                "cpu-fallback",
                Severity.FAIL,
                f"onnxruntime could not use CUDA{wants}: its sessions run on the CPU, many "
                "times slower",
                evidence([e.record for e in providers], cfg.max_evidence),
                fix=cpu_fallback_fix(needs),
            )
        )
    damage = ctx.log.damage
    if damage.lines:
        kinds = [
            f"{count} {name}"
            for name, count in (
                ("with NUL bytes", damage.nul),
                ("with control bytes", damage.control),
                (f"not {ctx.log.encoding} text", damage.invalid_text),
                ("holding glued records", damage.glued),
                ("cut short", damage.cut),
            )
            if count
        ]
        findings.append(
            Finding(
                "damaged-lines",
                Severity.INFO,
                f"{damage.lines} damaged line{'s' if damage.lines != 1 else ''} in the file "
                f"({', '.join(kinds)}); read around them, they are not the service's fault",
                tuple(f"L{e.number}: {e.text}" for e in damage.examples),
            )
        )
    starts = [e for e in ctx.timeline.service if e.kind is EventKind.SERVICE_START]
    restarts = _restarts(starts)
    if len(restarts) > 1:
        findings.append(
            Finding(
                "service-restarts",
                Severity.INFO,
                f"the service started {len(restarts)} times in this log (at "
                + ", ".join(ctx.at(r).removeprefix("at ") for r in restarts[:6])
                + (", ..." if len(restarts) > 6 else "")
                + ")",
                evidence(restarts, cfg.max_evidence),
            )
        )
    errors = [e for e in ctx.timeline.service if e.kind is EventKind.ERROR]
    if errors:
        findings.append(
            Finding(
                "service-errors",
                Severity.WARN,
                f"{len(errors)} ERROR line{'s' if len(errors) != 1 else ''} outside any task",
                evidence([e.record for e in errors], cfg.max_evidence),
                fix="Read them: they are not tied to a task's failure in this log.",
            )
        )
    warnings = [
        e
        for e in (*ctx.timeline.service, *(e for t in ctx.timeline.tasks for e in t.events))
        if e.kind is EventKind.WARNING
    ]
    if warnings:
        findings.append(
            Finding(
                "warnings",
                Severity.INFO,
                f"{len(warnings)} warning line{'s' if len(warnings) != 1 else ''} (deprecation "
                "notices, library chatter): none of them decides a verdict",
                evidence([e.record for e in warnings], 3),
            )
        )
    if not ctx.timeline.tasks:
        findings.append(
            Finding(
                "no-tasks",
                Severity.INFO,
                f"no task in this log: {ctx.timeline.records} records of service activity only",
                fix="To analyse a task, pass the log that covers it (dh.log, or "
                "`docker logs -t <container> > dh.log 2>&1`).",
            )
        )
    return findings


def _restarts(starts: Sequence[Event]) -> list[Record]:
    """One record per start of the service. A start logs several banners within a minute
    (`TransDhTask init`, `TransDhServer服务启动`, Flask's); the same banner again is a new
    start."""
    found: list[Record] = []
    seen: set[str] = set()
    for event in sorted(starts, key=lambda e: (e.record.stream, e.time, e.line)):
        kind = _banner_kind(event.record.message)
        previous = found[-1] if found else None
        if (
            previous is not None
            and previous.stream == event.record.stream
            and kind not in seen
            and (event.time - previous.time).total_seconds() < 60
        ):
            seen.add(kind)
            continue
        found.append(event.record)
        seen = {kind}
    return found


def _banner_kind(message: str) -> str:
    return "".join(ch for ch in message if ch.isalpha())[:40]
