"""Read a HeyGem ``dh.log`` (or our own JSON pipeline log) and name what went wrong.

Two formats are auto-detected per file, from its first recognisable line:

* **HeyGem text log** (Duix-Avatar / HeyGem-Linux-Python-Hack ``dh.log`` and the
  ``docker logs`` output of its containers)::

      [2025-03-18 10:21:33,412] [process.py[line:108]] [INFO] [[1002]任务视频驱动队列启动 ...]

  Also accepted: timestamps without milliseconds, anything before the first ``[ts]`` on a
  line (docker-compose's ``heygem-gen-video | 2025-... |`` prefix), and the newer
  ``2025-06-06 10:10:38,930-[service.self_logger]-threading.py[line:870]-INFO: msg``
  layout. A line that is not a record (tracebacks, ffmpeg/onnxruntime stderr, ``print``)
  is a continuation of the record before it.
* **heygem JSON log**: one JSON object per line with at least ``ts`` (epoch seconds) and
  ``message``; ``job_id``/``stage``/``event`` drive the timeline. ``frames`` on
  ``stage_progress`` is assumed cumulative per stage (a progress counter).

Assumptions about HeyGem logs, all made because HeyGem does not tag every line:

* A task id is ``[<code>]`` at the start of a message (except ``[<frameId>] -> chaofen``,
  which is a batch number), ``任务:<code>``, ``<code> ->`` at the start of a message
  (newer layout; ``system ->`` is not a task), a ``[<code>]`` anywhere that is already a
  known task, or a ``task_id``/``code`` field (values shorter than 6 characters are taken
  for status codes unless already known).
* HeyGem runs one task at a time, so an untagged line (``drivered_video ... 发送数据大小``,
  ``audio_transfer get message``) belongs to the most recently mentioned task that has
  not ended; with no open task it is service-level. A task ends at its success, failure
  or ``任务:<code> 耗时`` line. HTTP access lines (client polling ``/easy/query``) are
  never attributed to a task, but they do show that the service was still logging.
* The producer logs ``发送数据大小:[n], current_idx:k`` per batch put on the video-drive
  queue; the consumer logs ``audio_transfer get message:<frameId>`` per batch taken and
  ``发送完成数据大小:n, frameId:k, cost:s`` per batch done. A producer that put exactly
  ``maxsize`` batches while the consumer took none blocks, and ~60 s later HeyGem logs
  ``任务视频驱动队列满，严重阻塞，下游队列异常``.
* Bytes that are not UTF-8 are replaced, never fatal. Timestamps are kept as written
  (naive local time for HeyGem, UTC for JSON); only differences within a file are used.
"""

from __future__ import annotations

import json
import logging
import re
import statistics
import textwrap
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from heygem.errors import InputNotFound, InvalidOption

__all__ = [
    "AnalyzerConfig",
    "EventKind",
    "Evidence",
    "Finding",
    "LogEvent",
    "LogReport",
    "Severity",
    "TaskReport",
    "TaskState",
    "analyze_log",
    "format_log_report",
]

_LOG = logging.getLogger(__name__)

# --- record layouts -------------------------------------------------------------------
_TS = r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[,.]\d{1,6})?"
_LEVEL = r"DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL"
# search(), not match(): docker/compose prefixes come before the first "[ts]".
_BRACKET_RECORD = re.compile(
    rf"\[(?P<ts>{_TS})\]\s*\[(?P<src>[^\[\]]*)(?:\[line:\s*\d+\])?\]\s*"
    rf"\[(?P<level>{_LEVEL})\]\s*\[(?P<msg>.*?)\]?\s*$"
)
_SELF_LOGGER_RECORD = re.compile(
    rf"(?P<ts>{_TS})-\[[^\]]*\]-(?P<src>[^\s\[]+)(?:\[line:\s*\d+\])?-"
    rf"(?P<level>{_LEVEL}):\s?(?P<msg>.*?)\s*$"
)
_HTTP_ACCESS = re.compile(r'"(?:GET|POST|PUT|DELETE|HEAD|OPTIONS|PATCH) \S+ HTTP/\d')

# --- task ids -------------------------------------------------------------------------
_LEADING_BRACKET_ID = re.compile(r"^\s*\[(?P<id>[^\[\]\s]{1,80})\]")
_FRAME_ID_REST = re.compile(r"^\s*->\s*chaofen", re.IGNORECASE)
_TASK_COLON_ID = re.compile(r"任务\s*[:：]\s*(?P<id>[\w.-]{2,80})")
_ARROW_ID = re.compile(r"^\s*(?P<id>[\w.-]{3,80})\s*->")
# A bracket right after ':' or '=' is a value ("发送数据大小:[10]"), not a task id.
_ANY_BRACKET_ID = re.compile(r"(?<![:：=])\[(?P<id>[^\[\]\s]{1,80})\]")
_FIELD_ID = re.compile(r"""\b(?:task_id|taskid|code)["']?\s*[=:]\s*["']?(?P<id>[\w.-]{1,80})""")

# --- events ---------------------------------------------------------------------------
_PROVIDER_FAILURE = re.compile(
    r"Failed to create CUDAExecutionProvider"
    r"|Failed to load library libonnxruntime_providers_cuda"
    r"|CUDAExecutionProvider\W+is not in available provider",
    re.IGNORECASE,
)
_QUEUE_FULL = re.compile(r"队列满|\bqueue (?:is )?full\b", re.IGNORECASE)
_TASK_FAILED = re.compile(
    r"任务执行失败|预处理失败|异常结束|任务失败|\btask failed\b", re.IGNORECASE
)
_CONSUMER_DONE = re.compile(r"数字人图片处理已完成")
_TASK_SUCCESS = re.compile(
    r"视频帧队列处理已结束|任务执行成功|合成成功|任务完成|video result saved", re.IGNORECASE
)
_BATCH_DONE = re.compile(
    r"发送完成数据大小\s*[:：]\s*(?P<size>\d+)"
    r"(?:.*?frameId\s*[:：]\s*(?P<frame>-?\d+))?(?:.*?cost\s*[:：]\s*(?P<cost>\d+(?:\.\d+)?))?"
)
_BATCH_DONE_EN = re.compile(r"\b(?:batch|chunk)\b.*?\b(?:done|finished|completed?)\b", re.I)
_SEND = re.compile(
    r"发送数据大小\s*[:：]\s*\[?\s*(?P<size>\d+)\s*\]?\s*[,，]\s*current_idx\s*[:：]\s*(?P<idx>\d+)"
)
_TAKE = re.compile(r"audio_transfer get message\s*[:：]?\s*(?P<frame>-?\d+)?")
_PRODUCER_START = re.compile(
    r"视频驱动队列启动(?:.*?batch_size\s*[:：]\s*(?P<batch>\d+))?(?:.*?len\s*[:：]\s*(?P<len>\d+))?"
)
_PRODUCER_DONE = re.compile(r"发送数据结束|预处理进程结束")
_INIT_WH = re.compile(r"init_wh(?![A-Za-z_])")
_AUDIO_FEATURES = re.compile(r"get_aud_feat|audio[ _]feature|音频特征|wenet", re.IGNORECASE)
_TASK_START = re.compile(r"audio_url\s*[:：]")
_TASK_END = re.compile(r"^\s*(?:>>>\s*)?任务\s*[:：]\s*[\w.-]+\s*耗时|^\s*(?:[\w.-]+\s*)?->\s*耗时")
_ELAPSED = re.compile(r"耗时")
_PROCESS_START = re.compile(r"进程启动|process started", re.IGNORECASE)
_CONSUMER_PROCESS_START = re.compile(r"数字人图片处理进程启动|audio_transfer.*(?:启动|start)", re.I)
_SECONDS = re.compile(
    r"(?:耗时|cost)\s*[:：]?\s*(?P<s>\d+(?:\.\d+)?)\s*(?P<unit>ms|s)?", re.IGNORECASE
)
_EMPTY_EXCEPTION_INFO = re.compile(r"异常信息\s*[:：]\s*\[\s*\]\s*$")
# "2025-03-16 22:46:33 " or "heygem-gen-video | 2025-05-25 23:02:15.030 | " before stderr text.
_STDERR_PREFIX = re.compile(rf"^.*?{_TS}\S*\s+(?:\|\s*)?")
_TRACEBACK_EXCEPTION = re.compile(
    r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Empty|Full|Interrupt|Exit)\b"
)

# Known HeyGem failure messages and what fixes them.
_KNOWN_FAILURES = (
    (
        re.compile(r"format (?:video|audio) error|No such file", re.IGNORECASE),
        "ffmpeg inside the service could not read the input: pass paths as the container "
        "sees them (under the mounted data dir, e.g. /code/data/...), check that the file "
        "exists there and is a valid video/audio file.",
    ),
    (
        re.compile(r"三次获取音频时长失败"),
        "ffprobe could not read the audio duration (HeyGem retried three times): the audio "
        "path must be the container path and the file a decodable audio file.",
    ),
    (
        re.compile(r"no final result", re.IGNORECASE),
        "HeyGem gave up waiting for a result: the worker pipeline stalled; look at the lines "
        "before the failure (this report's timeline) and restart the service before retrying.",
    ),
)


# --- public types ---------------------------------------------------------------------
class Severity(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return (Severity.OK, Severity.WARN, Severity.FAIL).index(self)


class TaskState(StrEnum):
    FINISHED = "finished"
    FAILED = "failed"
    NEVER_FINISHED = "never_finished"


class EventKind(StrEnum):
    TASK_START = "task_start"
    PROCESS_START = "process_start"
    INIT_WH = "init_wh"
    AUDIO_FEATURES = "audio_features"
    PRODUCER_START = "producer_start"
    SEND = "send"
    TAKE = "take"
    BATCH_DONE = "batch_done"
    PRODUCER_DONE = "producer_done"
    CONSUMER_DONE = "consumer_done"
    QUEUE_FULL = "queue_full"
    STAGE_START = "stage_start"
    PROGRESS = "progress"
    STAGE_DONE = "stage_done"
    STALL = "stall"
    ELAPSED = "elapsed"
    TASK_END = "task_end"
    TASK_SUCCESS = "task_success"
    TASK_FAILED = "task_failed"
    PROVIDER_FAILURE = "provider_failure"
    ERROR = "error"


@dataclass(frozen=True)
class AnalyzerConfig:
    """Thresholds; the defaults fit HeyGem on a single modern GPU."""

    video_fps: float = 25.0  # realtime: the consumer must keep up with the video rate
    init_wh_baseline_s: float = 10.0  # typical init_wh on a GPU (8.4 s logged on a V100)
    first_batch_baseline_s: float = 0.5  # typical per-batch time (0.44 s for 4 frames)
    cpu_factor: float = 10.0  # this many times the baseline suggests a CPU fallback
    stall_after_s: float = 60.0  # HeyGem's own queue put timeout
    max_evidence: int = 6


@dataclass(frozen=True)
class Evidence:
    line: int
    text: str


@dataclass(frozen=True)
class Finding:
    id: str
    severity: Severity
    title: str
    detail: str
    evidence: tuple[Evidence, ...]
    fix: tuple[str, ...]


@dataclass(frozen=True)
class LogEvent:
    time: datetime
    kind: EventKind
    detail: str
    line: int


@dataclass(frozen=True)
class TaskReport:
    task_id: str
    first_ts: datetime
    last_ts: datetime
    first_line: int
    last_line: int
    duration_s: float
    state: TaskState
    events: tuple[LogEvent, ...]
    sends: int
    max_current_idx: int | None
    takes: int
    completions: int
    throughput_fps: float | None
    batches_per_s: float | None
    init_wh_s: float | None
    findings: tuple[Finding, ...]

    @property
    def worst_severity(self) -> Severity:
        return _worst(f.severity for f in self.findings)


@dataclass(frozen=True)
class LogReport:
    path: str
    format: str  # "heygem" or "json"
    total_lines: int
    records: int
    tasks: tuple[TaskReport, ...]
    findings: tuple[Finding, ...]  # log-wide, not tied to one task
    service_events: tuple[LogEvent, ...]

    @property
    def worst_severity(self) -> Severity:
        every = [f.severity for f in self.findings]
        every += [t.worst_severity for t in self.tasks]
        return _worst(every)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = _jsonable(self)
        data["worst_severity"] = self.worst_severity.value
        for task, task_data in zip(self.tasks, data["tasks"], strict=True):
            task_data["worst_severity"] = task.worst_severity.value
        return data


_MAX_CONTINUATION = 50


# --- reading --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Record:
    line: int
    time: datetime
    level: str
    msg: str
    raw: str
    continuation: tuple[Evidence, ...] = ()
    data: dict[str, Any] | None = None  # the JSON object, for JSON logs

    @property
    def is_error(self) -> bool:
        return self.level in ("ERROR", "CRITICAL", "FATAL")


@dataclass
class _ReadStats:
    """Filled while streaming; the file is read once, line by line."""

    total_lines: int = 0
    format: str | None = None
    provider_lines: list[Evidence] = field(default_factory=list)


def _parse_ts(text: str) -> datetime:
    # fromisoformat is C code, several times faster than strptime on big logs.
    return datetime.fromisoformat(text.replace(",", "."))


def _parse_text_line(line_no: int, text: str) -> _Record | None:
    match = _BRACKET_RECORD.search(text) or _SELF_LOGGER_RECORD.search(text)
    if match is None:
        return None
    try:
        time = _parse_ts(match["ts"])
    except ValueError:
        return None
    level = "WARNING" if match["level"] == "WARN" else match["level"]
    return _Record(line_no, time, level, match["msg"], text)


def _parse_json_line(line_no: int, text: str) -> _Record | None:
    if not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("ts"), int | float):
        return None
    if not isinstance(data.get("message"), str) and not isinstance(data.get("event"), str):
        return None
    try:
        time = datetime.fromtimestamp(float(data["ts"]), tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    level = str(data.get("level") or "INFO").upper()
    return _Record(line_no, time, level, str(data.get("message") or ""), text, data=data)


def _parse_line(line_no: int, text: str, stats: _ReadStats) -> _Record | None:
    if stats.format != "heygem":
        record = _parse_json_line(line_no, text)
        if record is not None:
            stats.format = "json"
            return record
    if stats.format != "json":
        record = _parse_text_line(line_no, text)
        if record is not None:
            stats.format = "heygem"
            return record
    return None


def _read_records(path: Path, stats: _ReadStats, max_evidence: int) -> Iterator[_Record]:
    pending: _Record | None = None
    # Bounded: a crash can print megabytes between two records; the tail names the error.
    continuation: deque[Evidence] = deque(maxlen=_MAX_CONTINUATION)
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            stats.total_lines = line_no
            # onnxruntime prints its provider errors to stderr, so they are usually
            # continuation lines: scan every physical line for them.
            if _PROVIDER_FAILURE.search(text) and len(stats.provider_lines) < max_evidence:
                stats.provider_lines.append(Evidence(line_no, _clip(text)))
            record = _parse_line(line_no, text, stats)
            if record is None:
                if text.strip():
                    continuation.append(Evidence(line_no, _clip(text)))
                continue
            if pending is not None:
                yield _with_continuation(pending, continuation)
            pending = record
            continuation.clear()
    if pending is not None:
        yield _with_continuation(pending, continuation)


def _with_continuation(record: _Record, lines: deque[Evidence]) -> _Record:
    return replace(record, continuation=tuple(lines)) if lines else record


def _clip(text: str, limit: int = 300) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- classification -------------------------------------------------------------------
@dataclass(frozen=True)
class _Item:
    """One classified record: the public event plus numbers the analysis needs."""

    record: _Record
    event: LogEvent
    value: float | None = None  # current_idx, frameId, seconds, cumulative frames, ...
    size: int | None = None  # frames in the batch
    stage: str | None = None


def _seconds(msg: str) -> float | None:
    match = _SECONDS.search(msg)
    if match is None:
        return None
    value = float(match["s"])
    return value / 1000 if (match["unit"] or "").lower() == "ms" else value


def _int_or_none(text: str | None) -> int | None:
    return int(text) if text is not None else None


def _classify_heygem(record: _Record) -> _Item | None:
    msg = record.msg

    def item(
        kind: EventKind, detail: str, value: float | None = None, size: int | None = None
    ) -> _Item:
        event = LogEvent(record.time, kind, _clip(detail, 160), record.line)
        return _Item(record, event, value, size)

    if _PROVIDER_FAILURE.search(msg):
        return item(EventKind.PROVIDER_FAILURE, msg)
    if _QUEUE_FULL.search(msg):
        return item(EventKind.QUEUE_FULL, msg)
    if _TASK_FAILED.search(msg):
        return item(EventKind.TASK_FAILED, msg)
    if _CONSUMER_DONE.search(msg):
        return item(EventKind.CONSUMER_DONE, msg)
    if _TASK_SUCCESS.search(msg):
        return item(EventKind.TASK_SUCCESS, msg)
    if match := _BATCH_DONE.search(msg):
        cost = float(match["cost"]) if match["cost"] else None
        detail = f"batch of {match['size']} frames done (frameId {match['frame']}, cost {cost} s)"
        return item(EventKind.BATCH_DONE, detail, cost, int(match["size"]))
    if match := _SEND.search(msg):
        detail = f"sent {match['size']} frames, current_idx {match['idx']}"
        return item(EventKind.SEND, detail, float(match["idx"]), int(match["size"]))
    if match := _TAKE.search(msg):
        frame = _int_or_none(match["frame"])
        return item(EventKind.TAKE, f"consumer took frameId {frame}", frame)
    if match := _PRODUCER_START.search(msg):
        length = _int_or_none(match["len"])
        return item(EventKind.PRODUCER_START, msg, length, _int_or_none(match["batch"]))
    if _PRODUCER_DONE.search(msg):
        return item(EventKind.PRODUCER_DONE, msg)
    if _INIT_WH.search(msg):
        seconds = _seconds(msg)
        detail = f"init_wh took {seconds:g} s" if seconds is not None else msg
        return item(EventKind.INIT_WH, detail, seconds)
    if _AUDIO_FEATURES.search(msg):
        return item(EventKind.AUDIO_FEATURES, msg, _seconds(msg))
    if _TASK_START.search(msg):
        return item(EventKind.TASK_START, msg)
    if _TASK_END.search(_strip_leading_id(msg)):
        return item(EventKind.TASK_END, msg, _seconds(msg))
    if _ELAPSED.search(msg):
        return item(EventKind.ELAPSED, msg, _seconds(msg))
    if _PROCESS_START.search(msg):
        return item(EventKind.PROCESS_START, msg)
    if _BATCH_DONE_EN.search(msg):
        return item(EventKind.BATCH_DONE, msg)
    if record.is_error:
        return item(EventKind.ERROR, msg if msg.strip() else "(empty error message)")
    return None


def _json_kind(event: object) -> EventKind | None:
    match event:
        case "job_started":
            return EventKind.TASK_START
        case "stage_started":
            return EventKind.STAGE_START
        case "stage_progress":
            return EventKind.PROGRESS
        case "stage_finished":
            return EventKind.STAGE_DONE
        case "stage_stalled":
            return EventKind.STALL
        case "job_finished":
            return EventKind.TASK_SUCCESS
        case "job_failed":
            return EventKind.TASK_FAILED
    return None


def _classify_json(record: _Record) -> _Item | None:
    data = record.data or {}
    kind = _json_kind(data.get("event"))
    if kind is None and _PROVIDER_FAILURE.search(record.msg):
        kind = EventKind.PROVIDER_FAILURE
    if kind is None and record.is_error:
        kind = EventKind.ERROR
    if kind is None:
        return None
    stage = data.get("stage") if isinstance(data.get("stage"), str) else None
    frames = data.get("frames") if isinstance(data.get("frames"), int | float) else None
    parts = [p for p in (stage, record.msg.strip()) if p]
    if frames is not None:
        parts.append(f"frames={frames:g}")
    for key in ("queue_depth", "error_type"):
        if data.get(key) is not None:
            parts.append(f"{key}={data[key]}")
    if not record.msg.strip() and record.is_error:
        parts.append("(empty error message)")
    event = LogEvent(record.time, kind, _clip(" | ".join(parts), 160), record.line)
    value = frames if kind is not EventKind.STALL else _number(data.get("queue_depth"))
    return _Item(record, event, value, None, stage)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


# --- attributing records to tasks -----------------------------------------------------
def _strip_leading_id(msg: str) -> str:
    match = _LEADING_BRACKET_ID.match(msg)
    return msg[match.end() :] if match else msg


def _heygem_task_id(msg: str, known: dict[str, _TaskBuilder]) -> str | None:
    match = _LEADING_BRACKET_ID.match(msg)
    if match and not _FRAME_ID_REST.match(msg[match.end() :]):
        return match["id"]
    if match := _TASK_COLON_ID.search(msg):
        return match["id"]
    match = _ARROW_ID.match(msg)
    if match and match["id"].lower() != "system":
        return match["id"]
    for match in _ANY_BRACKET_ID.finditer(msg):
        if match["id"] in known:
            return match["id"]
    for match in _FIELD_ID.finditer(msg):
        value = match["id"]
        if value in known or (len(value) >= 6 and value.lower() not in ("null", "none")):
            return value
    return None


@dataclass
class _TaskBuilder:
    task_id: str
    items: list[_Item] = field(default_factory=list)
    records: list[_Record] = field(default_factory=list)


_CLOSING = (EventKind.TASK_SUCCESS, EventKind.TASK_FAILED, EventKind.TASK_END)


@dataclass
class _Attribution:
    tasks: dict[str, _TaskBuilder] = field(default_factory=dict)
    open: list[str] = field(default_factory=list)  # most recently mentioned last
    service: list[_Item] = field(default_factory=list)
    end_time: datetime | None = None
    records: int = 0

    def note_time(self, record: _Record) -> None:
        self.records += 1
        self.end_time = record.time if self.end_time is None else max(self.end_time, record.time)

    def add(
        self,
        record: _Record,
        task_id: str | None,
        item: _Item | None,
        *,
        follow_current: bool = True,
    ) -> None:
        self.note_time(record)
        owner = self._owner(task_id, follow_current)
        if owner is None:
            if item is not None:
                self.service.append(item)
            return
        owner.records.append(record)
        if item is not None:
            owner.items.append(item)
            if item.event.kind in _CLOSING and owner.task_id in self.open:
                self.open.remove(owner.task_id)

    def _owner(self, task_id: str | None, follow_current: bool) -> _TaskBuilder | None:
        if task_id is None:
            return self.tasks[self.open[-1]] if self.open and follow_current else None
        if task_id not in self.tasks:
            self.tasks[task_id] = _TaskBuilder(task_id)
            self.open.append(task_id)
        elif task_id in self.open:
            self.open.remove(task_id)
            self.open.append(task_id)
        return self.tasks[task_id]


def _attribute(records: Iterable[_Record]) -> _Attribution:
    result = _Attribution()
    for record in records:
        if record.data is not None:
            job = record.data.get("job_id")
            task_id = str(job) if job not in (None, "") else None
            # JSON lines name their job explicitly: untagged ones are service-level.
            result.add(record, task_id, _classify_json(record), follow_current=False)
        elif _HTTP_ACCESS.search(record.msg):
            result.note_time(record)  # client polling: not task work, but the service is alive
        else:
            task_id = _heygem_task_id(record.msg, result.tasks)
            result.add(record, task_id, _classify_heygem(record))
    return result


# --- per-task facts -------------------------------------------------------------------
@dataclass(frozen=True)
class _Context:
    config: AnalyzerConfig
    end_time: datetime
    format: str
    service: tuple[_Item, ...]


@dataclass(frozen=True)
class _Facts:
    """What the findings need about one task, computed once."""

    task_id: str
    records: tuple[_Record, ...]
    items: tuple[_Item, ...]
    state: TaskState
    sends: tuple[_Item, ...]
    consumer: tuple[_Item, ...]  # items the consumer took (HeyGem) or progress it made (JSON)
    stall: _Item | None
    fps: float | None
    batches_per_s: float | None
    init_wh: _Item | None
    first_batch: _Item | None
    first_batch_s: float | None
    total_frames: int | None
    silent_s: float  # from the task's last line to the end of the log

    def of(self, *kinds: EventKind) -> list[_Item]:
        return [i for i in self.items if i.event.kind in kinds]

    @property
    def first(self) -> _Record:
        return min(self.records, key=lambda r: (r.time, r.line))

    @property
    def last(self) -> _Record:
        return max(self.records, key=lambda r: (r.time, r.line))


def _state(items: Sequence[_Item], records: Sequence[_Record]) -> TaskState:
    kinds = {i.event.kind for i in items}
    if kinds & {EventKind.TASK_FAILED, EventKind.QUEUE_FULL, EventKind.STALL}:
        return TaskState.FAILED
    if kinds & {EventKind.TASK_SUCCESS, EventKind.TASK_END}:
        return TaskState.FINISHED
    if any(r.is_error for r in records):
        return TaskState.FAILED
    return TaskState.NEVER_FINISHED


def _rate(points: Sequence[tuple[datetime, float | None]]) -> tuple[float | None, float | None]:
    """Frames/s and batches/s over a series of (time, frames in that batch)."""
    points = sorted(points, key=lambda p: p[0])
    if len(points) < 2:
        return None, None
    span = (points[-1][0] - points[0][0]).total_seconds()
    if span <= 0:
        return None, None
    # The window opens at the first batch, so its frames are not part of the rate.
    sizes = [size for _, size in points[1:]]
    fps = sum(s for s in sizes if s is not None) / span if None not in sizes else None
    return fps, (len(points) - 1) / span


def _heygem_consumer(
    items: Sequence[_Item],
) -> tuple[tuple[_Item, ...], float | None, float | None]:
    takes = tuple(i for i in items if i.event.kind is EventKind.TAKE)
    done = tuple(i for i in items if i.event.kind is EventKind.BATCH_DONE)
    # Some HeyGem builds stopped logging takes; finished batches prove the consumer ran too.
    consumer = takes or done
    if len(done) >= 2:  # finished work is the better measure of throughput
        fps, bps = _rate([(i.record.time, i.size) for i in done])
    else:
        size = _batch_size(items)
        fps, bps = _rate([(i.record.time, size) for i in takes])
    return consumer, fps, bps


def _batch_size(items: Sequence[_Item]) -> int | None:
    for item in items:
        if item.event.kind is EventKind.PRODUCER_START and item.size:
            return item.size
    sizes = [i.size for i in items if i.event.kind is EventKind.SEND and i.size]
    return int(statistics.median(sizes)) if sizes else None


def _json_consumer(
    items: Sequence[_Item], stall: _Item | None
) -> tuple[tuple[_Item, ...], float | None, float | None]:
    """Progress of the stalled stage, or of the slowest stage (the bottleneck)."""
    stages = sorted({i.stage for i in items if i.stage})
    rates: dict[str, tuple[float | None, float | None]] = {}
    for stage in stages:
        points: list[tuple[datetime, float | None]] = []
        for item in items:
            if item.stage != stage:
                continue
            if item.event.kind is EventKind.STAGE_START:
                points.append((item.record.time, 0.0))
            elif item.event.kind in (EventKind.PROGRESS, EventKind.STAGE_DONE) and item.value:
                points.append((item.record.time, item.value))
        rates[stage] = _cumulative_rate(points)
    chosen = stall.stage if stall is not None else None
    if chosen is None:
        measured = [s for s in stages if rates[s][0] is not None]
        chosen = min(measured, key=lambda s: rates[s][0] or 0.0) if measured else None
    if chosen is None:
        return (), None, None
    progress = tuple(i for i in items if i.stage == chosen and i.event.kind is EventKind.PROGRESS)
    fps, bps = rates.get(chosen, (None, None))
    return progress, fps, bps


def _cumulative_rate(
    points: Sequence[tuple[datetime, float | None]],
) -> tuple[float | None, float | None]:
    """Like ``_rate`` for counters that report frames done so far."""
    points = sorted(points, key=lambda p: p[0])
    totals = [total or 0.0 for _, total in points]
    increments = [b - a for a, b in zip([0.0, *totals], totals, strict=False)]
    return _rate([(time, inc) for (time, _), inc in zip(points, increments, strict=True)])


def _first_batch(items: Sequence[_Item]) -> tuple[_Item | None, float | None]:
    done = next((i for i in items if i.event.kind is EventKind.BATCH_DONE), None)
    if done is None:
        return None, None
    if done.value is not None:  # HeyGem logs the batch's own cost
        return done, done.value
    take = next((i for i in items if i.event.kind is EventKind.TAKE), None)
    if take is None or take.record.time > done.record.time:
        return done, None
    return done, (done.record.time - take.record.time).total_seconds()


def _facts(builder: _TaskBuilder, ctx: _Context) -> _Facts:
    # Several HeyGem processes write one file: order by time, not by arrival.
    items = tuple(sorted(builder.items, key=lambda i: (i.record.time, i.record.line)))
    records = tuple(builder.records)
    stall = next(
        (i for i in items if i.event.kind in (EventKind.QUEUE_FULL, EventKind.STALL)), None
    )
    if ctx.format == "json":
        consumer, fps, bps = _json_consumer(items, stall)
    else:
        consumer, fps, bps = _heygem_consumer(items)
    init_wh = next(
        (i for i in items if i.event.kind is EventKind.INIT_WH and i.value is not None), None
    )
    first_batch, first_batch_s = _first_batch(items)
    producer_start = next((i for i in items if i.event.kind is EventKind.PRODUCER_START), None)
    last_time = max(r.time for r in records)
    return _Facts(
        task_id=builder.task_id,
        records=records,
        items=items,
        state=_state(items, records),
        sends=tuple(i for i in items if i.event.kind is EventKind.SEND),
        consumer=consumer,
        stall=stall,
        fps=fps,
        batches_per_s=bps,
        init_wh=init_wh,
        first_batch=first_batch,
        first_batch_s=first_batch_s,
        total_frames=int(producer_start.value) if producer_start and producer_start.value else None,
        silent_s=(ctx.end_time - last_time).total_seconds(),
    )


# --- findings -------------------------------------------------------------------------
_FIX_CONSUMER_DEAD = (
    "Check that the consumer (HeyGem's `audio_transfer` image process / DataLoader workers) "
    "is alive: `heygem-diagnose ps --pid <service pid>`; a missing or `<defunct>` child died "
    "(look for 'Killed', SIGBUS/-7, SIGSEGV in the container log before the first send).",
    "In Docker give the container shared memory: `docker run --shm-size=2g ...` (compose: "
    "`shm_size: '2g'`); the 64 MB default kills DataLoader workers with SIGBUS.",
    "Confirm with DataLoader `num_workers=0` (HeyGem `num_threads` 0): if the task then "
    "completes, the worker processes were the problem.",
    "Check that onnxruntime-gpu finds its CUDA/cuDNN libraries (`heygem-diagnose env`): a "
    "consumer stuck creating its CUDA session never takes its first item.",
    "Restart the service before retrying: the blocked producer keeps later tasks stuck too.",
)
_FIX_SLOW = (
    "Make sure inference runs on the GPU: `heygem-diagnose env` shows the providers a live "
    "onnxruntime session uses and whether the CUDA/cuDNN libraries load; a silent CPU "
    "fallback is the usual cause.",
    "Watch GPU utilisation during a run (`nvidia-smi`); several tasks sharing one GPU slow "
    "each one below realtime.",
    "Reduce the work per frame: disable super-resolution (chaofen=0), use a lower-resolution "
    "template video, and cap OMP/MKL_NUM_THREADS so CPU stages do not oversubscribe.",
)
_FIX_STOPPED = (
    "The consumer worked and then stopped: read the container log around its last take for "
    "a traceback, 'Killed' or 'Segmentation fault'.",
    "`heygem-diagnose ps --pid <service pid>` shows whether the process is gone, `<defunct>` "
    "or stuck; `dmesg | grep -i -E 'killed process|out of memory'` shows the OOM killer.",
    "In Docker raise shared memory (`--shm-size=2g`) and memory limits, then restart the "
    "service: HeyGem does not recover the stuck task.",
)
_FIX_CPU_FALLBACK = (
    "Run `heygem-diagnose env`: it lists the CUDA/cuDNN libraries onnxruntime-gpu needs and "
    "whether the dynamic loader finds them.",
    "PyPI onnxruntime-gpu 1.16.x/1.18.x are CUDA 11 + cuDNN 8 builds, while torch 2.1.2/2.4.1 "
    "ship CUDA 12: install the matching CUDA 11 runtime + cuDNN 8 (or an onnxruntime-gpu "
    "built for CUDA 12) and make them visible via LD_LIBRARY_PATH.",
    "Verify with `session.get_providers()` on the live session: `get_available_providers()` "
    "and `get_device()` do not prove that CUDA is used.",
)
_FIX_EMPTY_ERROR = (
    "HeyGem logged an exception whose text is empty (typically `queue.Empty` from a queue "
    "wait, or a bare `AssertionError`); the traceback lines after it (in the evidence when "
    "present) name the exception type.",
    "An empty error after a queue wait means the other side of the queue died or stalled: "
    "check the producer/consumer processes with `heygem-diagnose ps`.",
    "In patched code log with `logger.exception(...)` or `repr(exc)` instead of `str(exc)` "
    "so the exception type is never lost.",
)
_FIX_NEVER_FINISHED = (
    "The service is probably hung: `heygem-diagnose ps --pid <service pid>` shows stuck or "
    "`<defunct>` children.",
    "Look for 'Killed' / OOM around the task's last line (`dmesg | grep -i -E 'killed "
    "process|out of memory'`) and for processes that exited without a log line.",
    "Restart the service: HeyGem does not time out a stuck task, and later tasks queue behind it.",
)
_FIX_FAILED_DEFAULT = (
    "Read the failure message in the evidence, fix the input or environment it names, and "
    "resubmit; run `heygem-diagnose env` if it points at the environment.",
)


def _evidence(records: Iterable[_Record | None], limit: int) -> tuple[Evidence, ...]:
    seen: dict[int, Evidence] = {}
    for record in records:
        if record is not None and record.line not in seen:
            seen[record.line] = Evidence(record.line, _clip(record.raw))
    return tuple(sorted(seen.values(), key=lambda e: e.line)[:limit])


def _hms(time: datetime) -> str:
    return time.strftime("%H:%M:%S.%f")[:-3]


def _consumer_start_line(facts: _Facts, ctx: _Context, before: _Record) -> _Record | None:
    """HeyGem's consumer logs its start once per service start, usually before any task."""
    starts = [
        i.record
        for i in (*ctx.service, *facts.items)
        if i.event.kind is EventKind.PROCESS_START
        and _CONSUMER_PROCESS_START.search(i.record.msg)
        and i.record.line < before.line
    ]
    return max(starts, key=lambda r: r.line, default=None)


def _consumer_findings(facts: _Facts, ctx: _Context) -> list[Finding]:
    cfg = ctx.config
    stalled = facts.stall is not None
    silent = facts.state is TaskState.NEVER_FINISHED and facts.silent_s >= cfg.stall_after_s
    if (stalled or silent) and not facts.consumer and (facts.sends or stalled):
        return [_never_started(facts, ctx)]
    if facts.consumer and facts.fps is not None and facts.fps < cfg.video_fps:
        return [_slower_than_realtime(facts, ctx)]
    if stalled and facts.consumer:
        return [_consumer_stopped(facts, ctx)]
    return []


def _never_started(facts: _Facts, ctx: _Context) -> Finding:
    stall = facts.stall.record if facts.stall else None
    first_send = facts.sends[0].record if facts.sends else None
    last_send = facts.sends[-1].record if facts.sends else None
    consumer_start = _consumer_start_line(facts, ctx, first_send or facts.first)
    parts = [_never_started_what(facts)]
    if consumer_start is not None:
        parts.append(
            f"The consumer process logged its start (line {consumer_start.line}), so it "
            "died or is blocked before taking its first item."
        )
    elif ctx.format == "heygem":
        parts.append("No consumer process start line is in this log.")
    evidence = [consumer_start, first_send, last_send, stall]
    if first_send is None:
        evidence.insert(0, facts.first)
    return Finding(
        "consumer-never-started",
        Severity.FAIL,
        "consumer never started or died",
        " ".join(parts),
        _evidence(evidence, ctx.config.max_evidence),
        _FIX_CONSUMER_DEAD,
    )


def _never_started_what(facts: _Facts) -> str:
    if facts.stall is not None and facts.stall.stage:  # our own runner names the stage
        depth = facts.stall.value
        queue = f" (queue depth {depth:g})" if depth is not None else ""
        return f"Stage {facts.stall.stage} stalled{queue} without ever reporting progress."
    if not facts.sends:
        return "HeyGem reported the queue full and the consumer logged no work for this task."
    first, last = facts.sends[0].record, facts.sends[-1].record
    max_idx = max((i.value for i in facts.sends if i.value is not None), default=0.0)
    what = (
        f"The producer put {len(facts.sends)} batches on the video-drive queue (current_idx up "
        f"to {max_idx:g}) between {_hms(first.time)} and {_hms(last.time)}, and the consumer "
        "took none: 0 `audio_transfer get message` lines for this task."
    )
    if facts.stall is None:
        return what + f" The log goes on for {facts.silent_s:.0f} s without the task moving."
    gap = (facts.stall.record.time - last.time).total_seconds()
    return what + (
        f" {gap:.0f} s after the last put HeyGem logged the queue as full: "
        f"{len(facts.sends)} items filled the queue and the producer blocked."
    )


def _slower_than_realtime(facts: _Facts, ctx: _Context) -> Finding:
    cfg = ctx.config
    hung = facts.stall is not None or facts.state is TaskState.NEVER_FINISHED
    rate = f"{facts.fps:.1f} frames/s"
    if facts.batches_per_s is not None:
        rate += f" ({facts.batches_per_s:.2f} batches/s)"
    detail = (
        f"The consumer processed {rate} over {len(facts.consumer)} batches, below the "
        f"{cfg.video_fps:g} fps video rate, so the producer runs ahead of it."
    )
    if facts.stall is not None:
        full_at = _hms(facts.stall.record.time)
        detail += f" The queue filled and HeyGem logged it as full at {full_at}."
    elif not hung:
        detail += " The task still ended, only slower than realtime."
    stall = facts.stall.record if facts.stall else None
    evidence = _evidence(
        [facts.consumer[0].record, facts.consumer[-1].record, stall], cfg.max_evidence
    )
    return Finding(
        "consumer-slower-than-realtime",
        Severity.FAIL if hung else Severity.WARN,
        "consumer slower than realtime",
        detail,
        evidence,
        _FIX_SLOW,
    )


def _consumer_stopped(facts: _Facts, ctx: _Context) -> Finding:
    assert facts.stall is not None  # only called with a stall
    last = facts.consumer[-1].record
    gap = (facts.stall.record.time - last.time).total_seconds()
    detail = (
        f"The consumer took {len(facts.consumer)} batches, then stopped: its last item was at "
        f"{_hms(last.time)} (line {last.line}), {gap:.0f} s before the queue was reported full."
    )
    last_send = facts.sends[-1].record if facts.sends else None
    evidence = _evidence([last, last_send, facts.stall.record], ctx.config.max_evidence)
    return Finding(
        "consumer-stopped",
        Severity.FAIL,
        "consumer stopped mid-task",
        detail,
        evidence,
        _FIX_STOPPED,
    )


def _cpu_timing_findings(facts: _Facts, ctx: _Context) -> list[Finding]:
    cfg = ctx.config
    reasons: list[str] = []
    records: list[_Record] = []
    if facts.init_wh is not None and facts.init_wh.value is not None:
        limit = cfg.init_wh_baseline_s * cfg.cpu_factor
        if facts.init_wh.value > limit:
            reasons.append(
                f"init_wh took {facts.init_wh.value:.1f} s (normal ~{cfg.init_wh_baseline_s:g} s"
                f" on a GPU, flagged above {limit:g} s)"
            )
            records.append(facts.init_wh.record)
    if facts.first_batch is not None and facts.first_batch_s is not None:
        limit = cfg.first_batch_baseline_s * cfg.cpu_factor
        if facts.first_batch_s > limit:
            reasons.append(
                f"the first batch took {facts.first_batch_s:.1f} s (normal "
                f"~{cfg.first_batch_baseline_s:g} s, flagged above {limit:g} s)"
            )
            records.append(facts.first_batch.record)
    if not reasons:
        return []
    detail = "Timings far above normal suggest CPU inference: " + "; ".join(reasons) + "."
    return [
        Finding(
            "cpu-fallback-suspected",
            Severity.WARN,
            "CPU fallback suspected",
            detail,
            _evidence(records, cfg.max_evidence),
            _FIX_CPU_FALLBACK,
        )
    ]


def _is_empty_error(record: _Record) -> bool:
    return record.is_error and (
        not record.msg.strip() or bool(_EMPTY_EXCEPTION_INFO.search(record.msg))
    )


def _exception_line(record: _Record) -> Evidence | None:
    """The traceback's last exception line after a record, if one follows it."""
    for line in reversed(record.continuation):
        if _TRACEBACK_EXCEPTION.match(_STDERR_PREFIX.sub("", line.text).strip()):
            return line
    return None


def _empty_error_finding(records: Sequence[_Record], cfg: AnalyzerConfig) -> list[Finding]:
    empty = [r for r in records if _is_empty_error(r)]
    if not empty:
        return []
    evidence = list(_evidence(empty, cfg.max_evidence))
    exceptions = [e for e in (_exception_line(r) for r in empty) if e is not None]
    evidence = sorted(evidence + exceptions, key=lambda e: e.line)[: cfg.max_evidence]
    detail = f"{len(empty)} ERROR line(s) carry no message, so the log does not say what failed"
    if exceptions:
        names = sorted({e.text.split(":")[0].split()[-1] for e in exceptions})
        detail += f"; the traceback after them names {', '.join(names)}"
    return [
        Finding(
            "empty-error-message",
            Severity.WARN,
            "error logged with an empty message",
            detail + ".",
            tuple(evidence),
            _FIX_EMPTY_ERROR,
        )
    ]


def _outcome_findings(facts: _Facts, ctx: _Context) -> list[Finding]:
    cfg = ctx.config
    if facts.state is TaskState.FAILED:
        failures = [
            i.record
            for i in facts.items
            if i.event.kind is EventKind.TASK_FAILED or i.record.is_error
        ]
        message = next((r.msg for r in failures if r.msg.strip()), "(no message)")
        fix = next((f for rx, f in _KNOWN_FAILURES if rx.search(message)), None)
        return [
            Finding(
                "task-failed",
                Severity.FAIL,
                "task failed",
                f"The task failed: {_clip(message, 200)}",
                _evidence(failures, cfg.max_evidence),
                (fix,) if fix else _FIX_FAILED_DEFAULT,
            )
        ]
    if facts.state is not TaskState.NEVER_FINISHED:
        return []
    last = facts.last
    detail = (
        f"No completion and no error for this task by the end of the log. Its last line "
        f"(line {last.line}, {_hms(last.time)}) is {facts.silent_s:.0f} s before the end of the log"
    )
    max_idx = max((i.value for i in facts.sends if i.value is not None), default=None)
    if max_idx is not None and facts.total_frames:
        detail += (
            f"; the producer had reached current_idx {max_idx:g} of {facts.total_frames} "
            f"frames ({100 * max_idx / facts.total_frames:.0f}%)"
        )
    hung = facts.silent_s >= cfg.stall_after_s
    if not hung:
        detail += "; the log may have been captured while the task was still running"
    last_event = facts.items[-1].record if facts.items else None
    return [
        Finding(
            "task-never-finished",
            Severity.FAIL if hung else Severity.WARN,
            "task never finished",
            detail + ".",
            _evidence([facts.first, last_event, last], cfg.max_evidence),
            _FIX_NEVER_FINISHED,
        )
    ]


def _task_findings(facts: _Facts, ctx: _Context) -> tuple[Finding, ...]:
    findings = _consumer_findings(facts, ctx)
    findings += _cpu_timing_findings(facts, ctx)
    findings += _empty_error_finding(facts.records, ctx.config)
    if not any(f.severity is Severity.FAIL for f in findings):
        # Only when no specific cause was named: the outcome alone is the finding.
        findings += _outcome_findings(facts, ctx)
    if facts.state is TaskState.FINISHED and not findings:
        duration = (facts.last.time - facts.first.time).total_seconds()
        detail = f"Finished in {duration:.1f} s"
        if facts.fps is not None:
            detail += f" with the consumer at {facts.fps:.1f} frames/s"
        findings.append(
            Finding(
                "task-healthy",
                Severity.OK,
                "task finished normally",
                detail + ".",
                _evidence([facts.first, facts.last], ctx.config.max_evidence),
                ("Nothing to do.",),
            )
        )
    return tuple(findings)


def _task_report(builder: _TaskBuilder, ctx: _Context) -> TaskReport:
    facts = _facts(builder, ctx)
    first, last = facts.first, facts.last
    max_idx = max((i.value for i in facts.sends if i.value is not None), default=None)
    return TaskReport(
        task_id=facts.task_id,
        first_ts=first.time,
        last_ts=last.time,
        first_line=min(r.line for r in facts.records),
        last_line=max(r.line for r in facts.records),
        duration_s=(last.time - first.time).total_seconds(),
        state=facts.state,
        events=tuple(i.event for i in facts.items),
        sends=len(facts.sends),
        max_current_idx=int(max_idx) if max_idx is not None else None,
        takes=len(facts.of(EventKind.TAKE)),
        completions=len(facts.of(EventKind.BATCH_DONE, EventKind.PROGRESS)),
        throughput_fps=facts.fps,
        batches_per_s=facts.batches_per_s,
        init_wh_s=facts.init_wh.value if facts.init_wh else None,
        findings=_task_findings(facts, ctx),
    )


def _log_findings(
    stats: _ReadStats, service: Sequence[_Item], tasks: Sequence[TaskReport], cfg: AnalyzerConfig
) -> tuple[Finding, ...]:
    findings: list[Finding] = []
    if stats.provider_lines:
        findings.append(
            Finding(
                "cpu-fallback-providers",
                Severity.FAIL,
                "onnxruntime fell back to the CPU",
                f"onnxruntime could not use CUDA ({len(stats.provider_lines)} line(s) shown): "
                "sessions created after this run on CPUExecutionProvider, many times slower.",
                tuple(stats.provider_lines),
                _FIX_CPU_FALLBACK,
            )
        )
    findings += _empty_error_finding([i.record for i in service], cfg)
    if not tasks:
        findings.append(
            Finding(
                "no-tasks",
                Severity.WARN,
                "no task found in the log",
                "No line names a task (`[<code>]...`, `任务:<code>`, a job_id), so there is no "
                "timeline to check.",
                (),
                (
                    "Pass the log that covers the failing task: HeyGem's dh.log, or "
                    "`docker logs <container> > dh.log 2>&1` for the generation container.",
                ),
            )
        )
    return tuple(findings)


# --- public API -----------------------------------------------------------------------
def analyze_log(path: Path, config: AnalyzerConfig | None = None) -> LogReport:
    """Analyse one HeyGem ``dh.log`` or heygem JSON log file.

    Raises ``InputNotFound`` when the file does not exist or cannot be read and
    ``InvalidOption`` when it holds no line of either format.
    """
    config = config or AnalyzerConfig()
    path = Path(path)
    _check_file(path)
    stats = _ReadStats()
    try:
        attribution = _attribute(_read_records(path, stats, config.max_evidence))
    except OSError as exc:
        raise InputNotFound(
            f"cannot read log file {path}: {exc.strerror or exc}",
            hint="check the file's permissions, or copy it somewhere readable",
        ) from exc
    if stats.format is None or attribution.end_time is None:
        raise InvalidOption(
            f"{path} has no HeyGem or heygem JSON log lines ({stats.total_lines} lines read)",
            hint="expected HeyGem lines like `[2025-03-18 10:21:33,412] [process.py[line:108]] "
            "[INFO] [msg]` or one JSON object per line with `ts` and `message`; pass dh.log "
            "or `docker logs <container> > dh.log 2>&1`",
        )
    _LOG.debug(
        "%s: %s format, %d records, %d tasks",
        path,
        stats.format,
        attribution.records,
        len(attribution.tasks),
    )
    ctx = _Context(config, attribution.end_time, stats.format, tuple(attribution.service))
    tasks = tuple(_task_report(b, ctx) for b in attribution.tasks.values() if b.records)
    return LogReport(
        path=str(path),
        format=stats.format,
        total_lines=stats.total_lines,
        records=attribution.records,
        tasks=tasks,
        findings=_log_findings(stats, attribution.service, tasks, config),
        service_events=tuple(i.event for i in attribution.service),
    )


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputNotFound(
            f"log file not found: {path}",
            hint="pass the path of HeyGem's dh.log, or save the container log first with "
            "`docker logs <container> > dh.log 2>&1`",
        )
    if path.is_dir():
        raise InvalidOption(
            f"{path} is a directory, expected a log file",
            hint="pass the log file itself, e.g. <dir>/dh.log",
        )


_REPEATED = (EventKind.SEND, EventKind.TAKE, EventKind.BATCH_DONE, EventKind.PROGRESS)
_MAX_TIMELINE_ROWS = 40


def format_log_report(report: LogReport) -> str:
    """Human-readable report: per task a compact timeline, then findings with evidence."""
    count = len(report.tasks)
    lines = [
        f"{report.path}: {report.format} log, {report.total_lines} lines, {count} "
        f"task{'s' if count != 1 else ''} -> {report.worst_severity.value.upper()}"
    ]
    for task in report.tasks:
        lines += ["", *_format_task(task)]
    if report.findings:
        lines += ["", "Log-wide findings:"]
        for finding in report.findings:
            lines += _format_finding(finding, indent="  ")
    return "\n".join(lines) + "\n"


def _fmt_rate(value: float | None, unit: str) -> str:
    return f"{value:.1f} {unit}" if value is not None else "n/a"


def _format_task(task: TaskReport) -> list[str]:
    counts = []
    if task.sends:
        idx = f" (max current_idx {task.max_current_idx})" if task.max_current_idx else ""
        counts.append(f"sends {task.sends}{idx}")
    if task.sends or task.takes:
        counts.append(f"takes {task.takes}")
    counts += [
        f"completions {task.completions}",
        f"throughput {_fmt_rate(task.throughput_fps, 'fps')}",
    ]
    if task.init_wh_s is not None:
        counts.append(f"init_wh {task.init_wh_s:.1f} s")
    lines = [
        f"Task {task.task_id} [{task.state.value}] {task.first_ts:%Y-%m-%d %H:%M:%S} -> "
        f"{task.last_ts:%H:%M:%S} ({task.duration_s:.1f} s, lines {task.first_line}-"
        f"{task.last_line})",
        "  " + " | ".join(counts),
        "  timeline:",
    ]
    lines += [f"    {row}" for row in _timeline_rows(task.events)]
    lines.append("  findings:")
    for finding in task.findings:
        lines += _format_finding(finding, indent="    ")
    return lines


def _timeline_rows(events: Sequence[LogEvent]) -> list[str]:
    """One row per event, except repeated kinds (sends, takes...) get one summary row."""
    groups: dict[EventKind, list[LogEvent]] = {}
    order: list[LogEvent | EventKind] = []
    for event in events:
        if event.kind in _REPEATED:
            if event.kind not in groups:
                groups[event.kind] = []
                order.append(event.kind)
            groups[event.kind].append(event)
        else:
            order.append(event)
    rows: list[str] = []
    for entry in order[:_MAX_TIMELINE_ROWS]:
        if isinstance(entry, LogEvent):
            rows.append(
                f"{_hms(entry.time)}  L{entry.line:<6} {entry.kind.value:<15} {entry.detail}"
            )
            continue
        group = groups[entry]
        first, last = group[0], group[-1]
        where = f"L{first.line}-{last.line}" if len(group) > 1 else f"L{first.line}"
        rows.append(
            f"{_hms(first.time)}  {where:<7} {entry.value + ' x' + str(len(group)):<15} "
            f"until {_hms(last.time)}; last: {last.detail}"
        )
    if len(order) > _MAX_TIMELINE_ROWS:
        rows.append(f"... {len(order) - _MAX_TIMELINE_ROWS} more events")
    return rows


def _format_finding(finding: Finding, indent: str) -> list[str]:
    wrap = textwrap.TextWrapper(
        width=100, initial_indent=indent + "  ", subsequent_indent=indent + "  "
    )
    lines = [f"{indent}{finding.severity.value.upper():<4} {finding.title} [{finding.id}]"]
    lines += wrap.wrap(finding.detail)
    if finding.evidence:
        lines.append(f"{indent}  evidence:")
        lines += [f"{indent}    L{e.line}: {e.text}" for e in finding.evidence]
    lines.append(f"{indent}  fix:")
    for step in finding.fix:
        lines += textwrap.wrap(
            step, width=100, initial_indent=f"{indent}    - ", subsequent_indent=f"{indent}      "
        )
    return lines


# --- helpers --------------------------------------------------------------------------
def _worst(severities: Iterable[Severity]) -> Severity:
    return max(severities, key=lambda s: s.rank, default=Severity.OK)


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, 3)
    return value
