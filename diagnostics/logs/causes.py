"""Why a task failed, from the evidence around its failure line.

HeyGem's failure line often says nothing (``任务执行失败，异常信息:[]``: a ``queue.Empty``
has an empty message). The lines around it do: the traceback printed just before it, the
time since the wait began (10 s: the init_wh wait), a late answer (init_wh answering after
the task gave up), the ``task_result`` a wrapper printed.
"""

from __future__ import annotations

from collections.abc import Sequence

from diagnostics.findings import Finding, Severity
from diagnostics.logs.context import Context, evidence, short
from diagnostics.logs.events import Event, EventKind, Traceback, tracebacks
from diagnostics.logs.pace import Pace
from diagnostics.logs.reading import Line, Record
from diagnostics.logs.tasks import Task

__all__ = ["failure_finding", "known_cause"]


def failure_finding(
    task: Task, facts: Pace, ctx: Context, failures: Sequence[Event], result: Event | None
) -> Finding:
    cfg = ctx.config
    failure = min(failures, key=lambda e: (e.time, e.line)) if failures else result
    assert failure is not None
    message = next((e.text.strip() for e in failures if e.text.strip()), "")
    if not message and result is not None:
        message = result.text.strip()
    around = list({id(r): r for e in failures[:3] for r in ctx.around(e.record)}.values())
    pairs = [(r, tb) for r in around for tb in tracebacks(r.continuation)]
    found = [tb for _, tb in pairs]
    said = (
        f"the task failed with '{short(message)}'"
        if message
        else ("the task failed with an empty message")
    )
    evidence_records: list[Record | Line | None] = [failure.record]
    if result is not None:
        evidence_records.append(result.record)
    # One traceback is evidence enough: a queue.Empty one if there is one (it names the wait).
    for owner, tb in [p for p in pairs if p[1].is_queue_empty][-1:] or pairs[-1:]:
        evidence_records += [owner, *tb.lines]
    init_wh = _init_wh_timeout(task, ctx, failure, message, found)
    if init_wh is not None:
        title, extra, lines, fix = init_wh
        return Finding(
            "init-wh-timeout",
            Severity.FAIL,
            f"task {task.label}: {title}: {said}{extra}",
            evidence([*lines, *evidence_records], cfg.max_evidence),
            fix=fix,
            subject=task.label,
        )
    cause, fix = known_cause(message, found)
    if cause is None:
        title = f"task {task.label}: {said}"
    elif message:
        title = f"task {task.label} failed: {cause}"
        if short(message) not in cause:
            title += f" ('{short(message)}')"
    else:
        title = f"task {task.label} failed with an empty message: {cause}"
    return Finding(
        "task-failed",
        Severity.FAIL,
        title,
        evidence(evidence_records, cfg.max_evidence),
        fix=fix,
        subject=task.label,
    )


def _init_wh_timeout(
    task: Task, ctx: Context, failure: Event, message: str, found: Sequence[Traceback]
) -> tuple[str, str, list[Record], str] | None:
    """HeyGem waits 10 s for the init_wh process; a queue.Empty (an empty message) about
    that long after the audio features means init_wh did not answer in time."""
    cfg = ctx.config
    before = [e for e in task.events if (e.time, e.line) < (failure.time, failure.line)]
    if any(e.kind in (EventKind.INIT_WH, EventKind.INIT_WH_REPLY) for e in before):
        return None
    if any(e.kind in (EventKind.SEND, EventKind.PRODUCER_START) for e in before):
        return None  # past the wait: the producer had started
    empty_wait = any(tb.is_queue_empty for tb in found) or not message
    if not empty_wait:
        return None
    waited_from = next((e for e in reversed(before) if e.kind is EventKind.AUDIO_FEATURES), None)
    waited = (
        (failure.time - waited_from.time).total_seconds() if waited_from and ctx.timed else None
    )
    if waited is not None and not cfg.init_wh_wait_s * 0.8 <= waited <= cfg.init_wh_wait_s + 5:
        return None
    if waited is None and not any(tb.is_queue_empty for tb in found):
        return None
    answers = [
        e for e in (*task.events, *task.late) if e.kind is EventKind.INIT_WH and e not in before
    ]
    lines = [r for r in (waited_from.record if waited_from else None,) if r is not None]
    wait = f"{cfg.init_wh_wait_s:g} s"
    if answers:
        answer = answers[0]
        lines.append(answer.record)
        took = (
            (answer.time - waited_from.time).total_seconds()
            if waited_from and ctx.timed
            else answer.seconds
        )
        own = (
            f"; init_wh's own cost {answer.seconds:.1f} s"
            if answer.seconds is not None and took is not None and abs(answer.seconds - took) > 1
            else ""
        )
        title = f"init_wh did not answer within {wait} (it took {took:.1f} s{own})"
    else:
        title = f"init_wh did not answer within {wait} (no answer in the log)"
    started = [
        e.record
        for e in ctx.timeline.service
        if e.kind is EventKind.PROCESS_START
        and "init_wh" in e.record.message
        and e.record.stream == task.stream
    ]
    late_start = [r for r in started if (r.time, r.line) > (task.first.time, task.first.line)]
    extra = ""
    if late_start:
        lines.append(late_start[0])
        extra = (
            f"; the init_wh process itself only started {ctx.at(late_start[0])}, after "
            "the task was submitted"
        )
    return title, extra, lines, _fix_init_wh(ctx, bool(late_start))


def _fix_init_wh(ctx: Context, started_late: bool) -> str:
    fix = (
        "HeyGem gives init_wh (face detection on the template's first 100 frames) only 10 s "
        "and then fails the task with an empty message. "
    )
    if started_late:
        fix += (
            "Submit tasks only after the service has finished starting (the '>>> "
            "init_wh_process进程启动' and '>>> 数字人图片处理进程启动' lines), or retry the task. "
        )
    fix += (
        "If init_wh is slow on every task, its onnxruntime session is probably on the CPU "
        "(8 s on a GPU, 100 s+ on a CPU): see `heygem-diagnose env`. A shorter or "
        "lower-resolution template also helps; patching the wait "
        "(`init_wh_queue_output.get(timeout=10)` in trans_dh_service.py) removes the race."
    )
    return fix


_KNOWN = (
    (
        ("存在多人脸",),
        "the template video shows more than one face",
        "Use a template video with exactly one face in every frame of its first seconds.",
    ),
    (
        ("format video error", "format audio error", "No such file", "视频入参或音频入参"),
        "ffmpeg inside the service could not read the input",
        "Pass paths as the service sees them (inside the container: under the mounted data "
        "directory, e.g. /code/data/...), and check that the file exists there and decodes "
        "(`ffprobe <file>`).",
    ),
    (
        ("三次获取音频时长失败",),
        "ffprobe could not read the audio duration (HeyGem tried three times)",
        "The audio path must be the container's path and the file a decodable audio file.",
    ),
    (
        ("no final result",),
        "HeyGem gave up waiting for a result: its worker pipeline stalled",
        "Read the lines before the failure (the timeline above); restart the service before "
        "retrying, a stalled pipeline keeps later tasks stuck.",
    ),
    (
        ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "OutOfMemory"),
        "the GPU ran out of memory",
        "Run one task per GPU at a time, lower the batch size, or use a lower-resolution "
        "template; `nvidia-smi` shows what else holds GPU memory.",
    ),
    (
        ("下载失败", "download", "ConnectionError", "Max retries exceeded"),
        "downloading an input failed",
        "Check that the audio/video URL is reachable from inside the service's container, "
        "or pass a local path under the mounted data directory.",
    ),
)


def known_cause(message: str, found: Sequence[Traceback]) -> tuple[str | None, str]:
    texts = [message, *(f"{tb.exception} {tb.message}" for tb in found)]
    for needles, cause, fix in _KNOWN:
        if any(needle.lower() in text.lower() for text in texts for needle in needles):
            return cause, fix
    empties = [tb for tb in found if tb.is_queue_empty]
    if empties:
        where = f" in {empties[0].function}" if empties[0].function else ""
        return (
            f"a queue wait ended in queue.Empty{where}: the process on the other side of "
            "that queue did not deliver in time",
            "The other side of the queue died or stalled: look for its last line and for "
            "'Killed' / a traceback before it; `heygem-diagnose ps --pid <service pid>` shows "
            "dead or stuck children. Restart the service before retrying.",
        )
    if found:
        last = found[-1]
        return (
            f"the traceback before it ends in {last.exception}"
            + (f": {short(last.message)}" if last.message else ""),
            "Fix what the traceback's exception names; if it points at the environment run "
            "`heygem-diagnose env`.",
        )
    return None, (
        "Read the failure message and the lines before it in the timeline, fix the input or "
        "environment it names and resubmit; run `heygem-diagnose env` if it points at the "
        "environment."
    )
