"""Events: what a HeyGem log line means, in HeyGem's own vocabulary.

The messages are the ones HeyGem's ``service/trans_dh_service.py`` writes (the decompiled
source is public in HeyGem-Linux-Python-Hack and its forks):

* ``TransDhTask.work``: ``任务:<code> -> audio_url:...`` (start), ``[<code>] -> get_aud_feat1
  cost:s``, then it waits ``init_wh_queue_output.get(timeout=10)`` for the init_wh process,
  ``[<code>] -> wh: [x]`` (the reply came), ``[<code>]任务执行失败，异常信息:[msg]`` (any
  exception; a ``queue.Empty`` has an empty message) and, always, ``>>> 任务:<code> 耗时:s``.
* ``init_wh_process``: ``[<code>]init_wh result :[x]， cost: s s``.
* ``drivered_video`` (the producer): ``[<code>]任务视频驱动队列启动 batch_size:n, len:N``, one
  ``发送数据大小:[n], current_idx:k`` per batch *after* its ``put(timeout=60)`` on a queue of 10
  returned, ``发送数据结束``; ``[<code>]任务视频驱动队列满，严重阻塞，下游队列异常`` when a put
  timed out.
* ``audio_transfer`` (the consumer): ``>>> audio_transfer get message:<frameId>`` per batch
  taken (frameId = the producer's current_idx), ``[<frameId>] -> chaofen cost:s``,
  ``发送完成数据大小:n, frameId:k, cost:s`` per batch done, ``get exception msg:-1`` for the
  end marker, ``[<code>]任务数字人图片处理已完成``.
* ``write_video``: ``[<code>]视频帧队列处理已结束`` / ``...异常结束，异常原因:[...]``.
* Wrappers print ``task_result = (<Status.error: 3>, 0, '', '')`` (``task_dic[code]``).

Only the lines naming a task say which one; the producer's and consumer's lines do not
(``tasks`` attributes them by their frame ids).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from diagnostics.logs.reading import Line, Record

__all__ = ["Event", "EventKind", "Traceback", "classify", "tracebacks"]


class EventKind(StrEnum):
    SERVICE_START = "service_start"  # a start-up banner: the service (re)started
    PROCESS_START = "process_start"  # a child process logged its start
    TASK_START = "task_start"
    VIDEO_INFO = "video_info"
    AUDIO_FEATURES = "audio_features"
    INIT_WH = "init_wh"  # the init_wh process answered (with its own cost)
    INIT_WH_REPLY = "init_wh_reply"  # the task received the answer
    PRODUCER_START = "producer_start"
    SEND = "send"
    PRODUCER_DONE = "producer_done"
    TAKE = "take"
    END_MARKER = "end_marker"
    CHAOFEN = "chaofen"
    BATCH_DONE = "batch_done"
    CONSUMER_DONE = "consumer_done"
    WRITER_DONE = "writer_done"
    RESULT = "result"
    QUEUE_FULL = "queue_full"
    PRODUCER_ERROR = "producer_error"
    CONSUMER_FAILED = "consumer_failed"
    WRITER_FAILED = "writer_failed"
    TASK_FAILED = "task_failed"
    TASK_END = "task_end"
    TASK_RESULT = "task_result"
    HTTP = "http"  # access-log lines: client polling, not task work
    PROVIDER_FAILURE = "provider_failure"  # onnxruntime could not use CUDA
    ERROR = "error"  # an ERROR record of no known kind
    WARNING = "warning"
    NOTE = "note"  # any other line that names a task: it shows the task was alive
    # heygem's own JSON log
    STAGE_START = "stage_start"
    PROGRESS = "progress"
    STAGE_DONE = "stage_done"
    STALL = "stall"
    CRASH = "crash"


FAILURES = frozenset(
    {
        EventKind.QUEUE_FULL,
        EventKind.PRODUCER_ERROR,
        EventKind.CONSUMER_FAILED,
        EventKind.WRITER_FAILED,
        EventKind.TASK_FAILED,
        EventKind.STALL,
        EventKind.CRASH,
    }
)
SUCCESSES = frozenset({EventKind.CONSUMER_DONE, EventKind.WRITER_DONE, EventKind.RESULT})


@dataclass(frozen=True)
class Event:
    kind: EventKind
    record: Record
    task_id: str | None = None  # the task the line names, if it names one
    size: int | None = None  # frames in a batch
    index: int | None = None  # current_idx / frameId / cumulative frames
    seconds: float | None = None  # a cost or duration the line states
    total: int | None = None  # frames in the task (the producer's `len`)
    text: str = ""  # detail: the failure message, the status, the stage
    stage: str | None = None  # JSON log: the pipeline stage

    @property
    def time(self) -> datetime:
        return self.record.time

    @property
    def line(self) -> int:
        return self.record.line


# --- task ids ---------------------------------------------------------------------------
_ID = r"[\w.\-]{1,80}"
_LEADING_ID = re.compile(rf"^\s*(?:>>>\s*)?\[(?P<id>{_ID})\]")
_TASK_COLON_ID = re.compile(rf"任务\s*[:：]\s*(?P<id>{_ID})")
_ARROW_ID = re.compile(r"^\s*(?P<id>[\w.\-]{3,80})\s*->")
_NAMED_BRACKET_ID = re.compile(rf"\[(?P<id>{_ID})\](?=\s*(?:任务|视频|数字人|init_wh))")
_FIELD_ID = re.compile(r"""\b(?:task_id|taskid|work_id)["']?\s*[=:]\s*["']?(?P<id>[\w.\-]{4,80})""")
_NOT_IDS = frozenset({"system", "drivered_video", "audio_transfer", "info", "error", "-1"})


def task_id_of(message: str) -> str | None:
    """The task a HeyGem message names, if any (frame ids and format leftovers are not)."""
    match = _LEADING_ID.match(message)
    if match and not _is_frame_line(message[match.end() :]):
        return _checked(match["id"])
    if "任务" in message and (match := _TASK_COLON_ID.search(message)):
        return _checked(match["id"])
    match = _ARROW_ID.match(message)
    if match and match["id"].lower() not in _NOT_IDS:
        return _checked(match["id"])
    if match := _NAMED_BRACKET_ID.search(message):
        return _checked(match["id"])
    if match := _FIELD_ID.search(message):
        return _checked(match["id"])
    return None


def _is_frame_line(rest: str) -> bool:
    return bool(re.match(r"\s*->\s*chaofen", rest))


def _checked(task_id: str) -> str | None:
    return None if task_id.lower() in _NOT_IDS else task_id


# --- messages ---------------------------------------------------------------------------
_NUMBER = r"(\d+(?:\.\d+)?(?:[eE]-?\d+)?)"
_BANNER = re.compile(
    r"TransDhTask init|TransDhServer服务启动|Serving Flask app|Uvicorn running on"
    r"|Running on local URL|Application startup complete|Started server process"
)
_TASK_START = re.compile(r"audio_url\s*[:：]")
_VIDEO_INFO = re.compile(r"video_info\s*[:：]\s*\[\s*(\d+(?:\.\d+)?)\s*/")
_AUDIO_FEATURES = re.compile(rf"get_aud_feat\w*.*?cost\s*[:：]?\s*{_NUMBER}\s*(ms|s)?", re.I)
_INIT_WH = re.compile(rf"init_wh result.*?cost\s*[:：]?\s*{_NUMBER}\s*(ms|s)?", re.I)
_INIT_WH_REPLY = re.compile(r"->\s*wh\s*[:：]\s*\[")
_PRODUCER_START = re.compile(
    r"视频驱动队列启动(?:.*?batch_size\s*[:：]\s*(\d+))?(?:.*?len\s*[:：]\s*(\d+))?"
)
_SEND = re.compile(
    r"发送数据大小\s*[:：]\s*\[?\s*(\d+)\s*\]?"
    r"(?:\s*[,，]\s*current_idx\s*[:：]\s*(\d+)(?:\s*/\s*(\d+))?)?"
)
_PRODUCER_DONE = re.compile(r"发送数据结束|预处理进程结束")
_TAKE = re.compile(r"audio_transfer get message\s*[:：]?\s*(-?\d+)?")
_BATCH_DONE = re.compile(
    r"发送完成数据大小\s*[:：]\s*(\d+)(?:.*?frameId\s*[:：]\s*(-?\d+))?"
    rf"(?:.*?cost\s*[:：]\s*{_NUMBER}\s*(ms|s)?)?"
)
_CHAOFEN = re.compile(rf"^\s*\[(-?\d+)\]\s*->\s*chaofen.*?cost\s*[:：]?\s*{_NUMBER}", re.I)
_QUEUE_FULL = re.compile(r"队列满|\bqueue (?:is )?full\b", re.I)
_TASK_FAILED = re.compile(
    r"任务执行失败|预处理失败|音频特征提取失败|任务失败|\btask failed\b", re.I
)
_TASK_END = re.compile(
    rf"(?:任务\s*[:：]\s*{_ID}\s*耗时|^\s*(?:{_ID}\s*)?->\s*耗时)\s*[:：]?\s*{_NUMBER}?"
)
_STATUS = re.compile(
    r"Status\.(?P<status>\w+)(?::\s*\d+>)?\s*,\s*(?P<progress>\d+)\s*,\s*"
    r"(?P<q1>['\"])(?P<result>.*?)(?P=q1)\s*,\s*(?P<q2>['\"])(?P<msg>.*?)(?P=q2)"
)
_HTTP = re.compile(r'"(?:GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH) \S+ HTTP/\d')
PROVIDER_FAILURE = re.compile(
    r"Failed to create CUDAExecutionProvider|Failed to load library libonnxruntime_providers_cuda"
    r"|LoadLibrary failed with error \d+.*onnxruntime_providers_cuda"
    r"|CUDAExecutionProvider\W+(?:is )?not in available provider",
    re.I,
)
_EXCEPTION_INFO = re.compile(r"(?:异常信息|异常原因|失败原因)\s*[:：]\s*\[(.*)\]\s*$")
_WARNING_TEXT = re.compile(r"\b\w+Warning\b|\b[Dd]eprecat")


def classify(record: Record) -> list[Event]:
    """The events one record stands for (usually one; none for plain chatter)."""
    if record.data is not None:
        event = _classify_json(record)
        return [event] if event is not None else []
    message = record.message
    task_id = None if _HTTP.search(message) else task_id_of(message)
    events = []
    event = _classify_text(record, message, task_id)
    if event is not None:
        events.append(event)
    events += [e for line in record.continuation if (e := _classify_printed(record, line))]
    return events


def _classify_printed(owner: Record, line: Line) -> Event | None:
    """A line printed between records (stderr, print()) that still says something: an
    onnxruntime provider failure, a wrapper's ``task_result``. It takes its owner's time."""
    text = line.text
    if ("CUDA" in text or "cuda" in text) and PROVIDER_FAILURE.search(text):
        kind, detail, status = EventKind.PROVIDER_FAILURE, text, None
    elif "Status." in text and (match := _STATUS.search(text)):
        kind, detail, status = EventKind.TASK_RESULT, match["msg"], match["status"].lower()
    else:
        return None
    printed = Record(line.number, owner.time, "INFO", text, text, owner.stream)
    return Event(kind, printed, None, text=detail, stage=status)


def _classify_text(record: Record, message: str, task_id: str | None) -> Event | None:
    def event(kind: EventKind, **numbers: object) -> Event:
        return Event(kind, record, task_id, **numbers)  # type: ignore[arg-type]

    if _HTTP.search(message):
        return Event(EventKind.HTTP, record)
    if "发送" in message:
        if match := _BATCH_DONE.search(message):
            return Event(
                EventKind.BATCH_DONE,
                record,
                None,
                size=int(match[1]),
                index=_int(match[2]),
                seconds=_seconds(match[3], match[4]),
            )
        if match := _SEND.search(message):
            return Event(
                EventKind.SEND,
                record,
                task_id,
                size=int(match[1]),
                index=_int(match[2]),
                total=_int(match[3]),
            )
        if _PRODUCER_DONE.search(message):
            return event(EventKind.PRODUCER_DONE)
    if "audio_transfer" in message:
        if match := _TAKE.search(message):
            return Event(EventKind.TAKE, record, None, index=_int(match[1]))
        if "exception msg" in message:
            return Event(EventKind.END_MARKER, record, None)
    if "chaofen" in message and (match := _CHAOFEN.match(message)):
        return Event(EventKind.CHAOFEN, record, None, index=int(match[1]), seconds=float(match[2]))
    if _QUEUE_FULL.search(message):
        return event(EventKind.QUEUE_FULL, text=message)
    if "视频驱动队列异常" in message:
        return event(EventKind.PRODUCER_ERROR, text=_exception_info(message))
    if _TASK_FAILED.search(message):
        return event(EventKind.TASK_FAILED, text=_exception_info(message))
    if "数字人图片处理异常结束" in message or "数字人处理失败" in message:
        return event(EventKind.CONSUMER_FAILED, text=_exception_info(message))
    if "视频帧队列处理异常结束" in message or ("视频帧队列" in message and "异常原因" in message):
        return event(EventKind.WRITER_FAILED, text=_exception_info(message))
    if "数字人图片处理已完成" in message:
        return event(EventKind.CONSUMER_DONE)
    if "视频帧队列处理已结束" in message:
        return event(EventKind.WRITER_DONE)
    if (
        "任务最终合成结果" in message
        or "任务完成" in message
        or "video result saved" in message.lower()
    ):
        return event(EventKind.RESULT)
    if match := _STATUS.search(message):
        return event(EventKind.TASK_RESULT, text=match["msg"], stage=match["status"].lower())
    if "init_wh" in message and (match := _INIT_WH.search(message)):
        return event(EventKind.INIT_WH, seconds=_seconds(match[1], match[2]))
    if _INIT_WH_REPLY.search(message):
        return event(EventKind.INIT_WH_REPLY)
    if match := _PRODUCER_START.search(message):
        return event(EventKind.PRODUCER_START, size=_int(match[1]), total=_int(match[2]))
    if "耗时" in message and (match := _TASK_END.search(_after_id(message))):
        return event(EventKind.TASK_END, seconds=_seconds(match[1], None))
    if _TASK_START.search(message):
        return event(EventKind.TASK_START)
    if match := _AUDIO_FEATURES.search(message):
        return event(EventKind.AUDIO_FEATURES, seconds=_seconds(match[1], match[2]))
    if match := _VIDEO_INFO.search(message):
        return event(EventKind.VIDEO_INFO, seconds=float(match[1]))
    if _BANNER.search(message):
        return Event(EventKind.SERVICE_START, record, None)
    if "进程启动" in message or "process started" in message.lower():
        return Event(EventKind.PROCESS_START, record, None, text=message)
    if PROVIDER_FAILURE.search(message):
        return Event(EventKind.PROVIDER_FAILURE, record, None, text=message)
    if record.is_error:
        return event(EventKind.ERROR, text=message)
    if record.level == "WARNING" or _WARNING_TEXT.search(message):
        return event(EventKind.WARNING, text=message)
    if task_id is not None:
        return event(EventKind.NOTE)
    return None


def _after_id(message: str) -> str:
    match = _LEADING_ID.match(message)
    return message[match.end() :] if match else message


def _exception_info(message: str) -> str:
    """The innermost `异常信息:[...]` text: HeyGem nests the message of the exception it
    re-raises (`任务执行失败，异常信息:[[1002]预处理失败，异常信息:[format video error]]`)."""
    text = message
    while match := _EXCEPTION_INFO.search(text):
        inner = match[1].strip()
        if inner == text:
            break
        text = inner
    return text if text != message else message


def _int(text: str | None) -> int | None:
    return int(text) if text is not None else None


def _seconds(number: str | None, unit: str | None) -> float | None:
    if number is None:
        return None
    value = float(number)
    return value / 1000 if (unit or "").lower() == "ms" else value


# --- heygem's JSON log ------------------------------------------------------------------
_JSON_KINDS = {
    "job_started": EventKind.TASK_START,
    "stage_started": EventKind.STAGE_START,
    "stage_progress": EventKind.PROGRESS,
    "stage_finished": EventKind.STAGE_DONE,
    "stage_stalled": EventKind.STALL,
    "stage_crashed": EventKind.CRASH,
    "job_finished": EventKind.RESULT,
    "job_failed": EventKind.TASK_FAILED,
}


def _classify_json(record: Record) -> Event | None:
    data = record.data or {}
    kind = _JSON_KINDS.get(str(data.get("event")))
    if kind is None and PROVIDER_FAILURE.search(record.message):
        kind = EventKind.PROVIDER_FAILURE
    if kind is None and record.is_error:
        kind = EventKind.ERROR
    if kind is None:
        return None
    job = data.get("job_id")
    stage = data.get("stage") if isinstance(data.get("stage"), str) else None
    frames = data.get("frames")
    depth = data.get("queue_depth")
    detail = " ".join(
        str(part)
        for part in (record.message, data.get("error_type"), data.get("cause"))
        if part not in (None, "")
    )
    return Event(
        kind,
        record,
        str(job) if job not in (None, "") else None,
        size=int(depth) if isinstance(depth, int | float) else None,
        index=int(frames) if isinstance(frames, int | float) else None,
        seconds=float(data["seconds"]) if isinstance(data.get("seconds"), int | float) else None,
        text=detail,
        stage=stage,
    )


# --- tracebacks -------------------------------------------------------------------------
_EXCEPTION_LINE = re.compile(
    r"^(?P<type>(?:[A-Za-z_]\w*\.)*\w*(?:Error|Exception|Empty|Full|Interrupt|Exit)"
    r"|Killed|Segmentation fault|Bus error)\b:?\s*(?P<message>.*)$"
)
_FRAME = re.compile(r'^File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<function>\S+)')


@dataclass(frozen=True)
class Traceback:
    """The end of a Python traceback (or a fatal signal's line) printed to the log."""

    exception: str  # "_queue.Empty", "RuntimeError", "Killed"
    message: str
    function: str | None  # the innermost frame's function
    lines: tuple[Line, ...]  # the lines that show it

    @property
    def is_queue_empty(self) -> bool:
        return self.exception.endswith("Empty")


def tracebacks(lines: Iterable[Line]) -> list[Traceback]:
    """Tracebacks in a run of continuation lines: exception, message, and the innermost
    frame of the application (not of the standard library it called)."""
    found: list[Traceback] = []
    frames: list[tuple[Line, str, str]] = []  # (line, file, function)
    seen_header = False
    for line in lines:
        text = line.text.strip()
        if text.startswith("Traceback (most recent call last)"):
            seen_header, frames = True, []
            continue
        if match := _FRAME.match(text):
            frames.append((line, match["file"], match["function"]))
            continue
        match = _EXCEPTION_LINE.match(text)
        if match is None or not (seen_header or match["type"] in ("Killed", "Bus error")):
            continue
        own = [f for f in frames if not _LIBRARY.search(f[1])] or frames
        frame = own[-1] if own else None
        shown = tuple(x for x in (frame[0] if frame else None, line) if x is not None)
        found.append(
            Traceback(match["type"], match["message"].strip(), frame[2] if frame else None, shown)
        )
        seen_header, frames = False, []
    return found


_LIBRARY = re.compile(r"[/\\](?:lib[/\\]python[\d.]*|site-packages|dist-packages)[/\\]")
