"""Reading: the bytes of a log file -> records, whatever layout the log comes in.

A *record* is one log call: a timestamp, a level and a message. HeyGem writes them as
``[ts] [file.py[line:N]] [LEVEL] [msg]`` (``y_utils/logger.py``; the console copy has no
milliseconds, the file copy has ``,ms``), some builds and forks drop the source field
(``[ts] [LEVEL] [msg]``) or use ``ts-[logger]-file.py[line:N]-LEVEL: msg``, Python's
``ts - name - LEVEL - msg`` or loguru's ``ts | LEVEL | where - msg``; onnxruntime writes
``ts [E:onnxruntime:...] msg`` to stderr; heygem's own ``--log-json`` writes one JSON object
per line. Anything may stand before the record: ``docker logs -t`` (RFC 3339 UTC with
nanoseconds), ``docker compose logs`` (``name-1  | ``), both, or a log viewer's copy. A line
that is not a record (a traceback, a ``print``, ffmpeg's stderr) continues the record
before it in the same stream.

Damage is parsed around and counted, never fatal: NUL bytes (a rotated file), other control
bytes, bytes that are not text in the file's encoding, records glued together on one line
(two processes writing at once, a ``print(..., end="")``), records cut short. Only a file
that cannot be opened, or holds no record at all, is an error.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import json
import re
import shutil
import sys
import tempfile
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO, cast

from heygem.errors import InputNotFound, InvalidOption

__all__ = ["Damage", "Line", "LogText", "Record", "parse_time", "read_log"]

TS = r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d{1,9})?(?:Z|[+-]\d{2}:?\d{2}(?!\d))?"
_LEVEL = r"(?i:DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL)"

# Layouts, tried at each place a timestamp starts (``match(text, pos)``).
_BRACKET = re.compile(
    rf"\[(?P<ts>{TS})\]\s*(?:\[(?P<src>[^\[\]]*(?:\[line:\s*\d+\])?[^\[\]]*)\]\s*)?"
    rf"\[(?P<level>{_LEVEL})\]\s?"
)
_SELF_LOGGER = re.compile(
    rf"(?P<ts>{TS})-\[[^\]]*\]-(?P<src>[^\s\[]+(?:\[line:\s*\d+\])?)-(?P<level>{_LEVEL}):\s?"
)
_DASHED = re.compile(rf"(?P<ts>{TS})\s+-\s+(?:(?P<src>\S+)\s+-\s+)?(?P<level>{_LEVEL})\s+-\s?")
_PIPED = re.compile(
    rf"(?P<ts>{TS})\s*\|\s*(?P<level>{_LEVEL})\s*\|\s*(?:(?P<src>[\w.<>]+:[\w.<>]+:\d+)\s+-\s)?"
)
_ORT = re.compile(rf"(?P<ts>{TS})\s+\[(?P<level>[EWIVF]):onnxruntime:[^\]]*\]\s?")
# Last resort: a timestamp, at most three words (a logger, a file), then a level word.
_GENERIC = re.compile(
    rf"\[?(?P<ts>{TS})\]?\s*(?:[\[(]?(?P<src>[A-Za-z_][\w.\-/@]{{0,40}}(?:\[line:\s*\d+\])?)"
    rf"[\])]?\s*[-|:,]?\s*){{0,3}}?[\[(<]?(?P<level>{_LEVEL})[\])>]?(?:\s*[-|:]\s?|\s+)"
)
_BRACKET_LAYOUTS = (_BRACKET, _GENERIC)
_PLAIN_LAYOUTS = (_SELF_LOGGER, _DASHED, _PIPED, _ORT, _GENERIC)
_ORT_LEVELS = {"E": "ERROR", "W": "WARNING", "I": "INFO", "V": "DEBUG", "F": "CRITICAL"}

_CANDIDATE = re.compile(r"\[?\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}")
_PREFIX_TS = re.compile(TS)
_PREFIX_NAME = re.compile(r"(?:^|\s)([A-Za-z_][\w.\-]*)\s*\|")
_PREFIX_BRACKET_NAME = re.compile(r"^\[([A-Za-z_][\w./\-]*)\]\s")
# What stands before continuation lines in a prefixed log: docker -t, compose, a viewer.
_CONTINUATION_PREFIX = re.compile(
    rf"^(?:\[(?P<pod>[A-Za-z_][\w./\-]*/[\w./\-]*)\]\s)?(?:{TS}\s+)?"
    rf"(?:(?P<name>[A-Za-z_][\w.\-]*)\s+\|\s?)?(?:{TS}(?:\s*\|\s?|\s+))?"
)
# A prefix at the end of a glued record's text: it belongs to the next record.
_TRAILING_PREFIX = re.compile(
    rf"(?:(?:{TS}\s+)?[A-Za-z_][\w.\-]*\s+\|\s?(?:{TS}\s*(?:\|\s?)?)?|{TS}\s+)$"
)
_HEADER_FRAGMENT = re.compile(r"\[\d{4}-\d")  # a HeyGem record that starts and never ends
_BARE_TIME = re.compile(rf"^\[?{TS}\]?$")  # a timestamp and nothing else: the rest was cut
# A HeyGem header without its level and message: [ts] [file.py[line:N]]
_HEADER_ONLY = re.compile(rf"^\[{TS}\](?:\s*\[[^\[\]]*(?:\[[^\[\]]*\])?\])*\s*$")
_TIME_FRAGMENT = re.compile(r"^\d{4}-\d{1,2}(?:-\d{0,2}(?:[ T][\d:.,]*)?)?Z?$")  # a cut prefix
_ANSI = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # not TAB, LF, CR
_FRACTION = re.compile(r"([.,])(\d{1,9})")

# HeyGem's own words, for a log without timestamps (a console copy of messages only).
_HEYGEM_MESSAGE = re.compile(
    r"^\s*(?:>>>\s*)?\[[\w.\-]{1,80}\]\s*(?:->|任务|init_wh|视频|数字人)|发送数据大小|发送完成数据大小"
    r"|audio_transfer get|drivered_video\s*(?:\(Ping-Pong\)\s*)?>|任务\s*[:：]|耗时|init_wh result"
    r"|队列满|get_aud_feat|TransDhTask init|进程启动"
)
_FAILURE_WORDS = re.compile(r"失败|异常|队列满|Error\b|error:")
_UNTIMED_CLOCK = datetime(2000, 1, 1)
_MAX_UNTIMED = 200_000
_MAX_LINE = 20_000  # characters looked at per line: a megabyte of junk is still one line
_MAX_CONTINUATION = 60  # lines kept after a record: a traceback's tail names the error
_MAX_EXAMPLES = 5
_SNIFF_BYTES = 256 * 1024


@dataclass(frozen=True)
class Line:
    """A physical line of the file (1-based) and its cleaned text."""

    number: int
    text: str


@dataclass(frozen=True)
class Record:
    """One log call, in whichever layout it was written."""

    line: int
    time: datetime  # the line's own wall-clock time, as written (no time zone)
    level: str  # DEBUG, INFO, WARNING, ERROR, CRITICAL
    message: str
    text: str  # the record as written (cleaned), for evidence
    stream: str = ""  # the container/service a prefixed log names, "" without prefixes
    source: str | None = None  # the `file.py[line:N]` field, when the layout has one
    continuation: tuple[Line, ...] = ()  # following lines that are not records
    data: Mapping[str, Any] | None = None  # the object, for heygem's JSON log lines

    @property
    def is_error(self) -> bool:
        return self.level in ("ERROR", "CRITICAL")


@dataclass(frozen=True)
class Damage:
    """Lines that were not clean text, counted by kind (a line can be of several kinds)."""

    lines: int = 0  # physical lines with any damage
    nul: int = 0
    control: int = 0
    invalid_text: int = 0  # bytes that do not decode in the file's encoding
    glued: int = 0  # a line holding more than one record
    cut: int = 0  # a record cut short
    examples: tuple[Line, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "lines": self.lines,
            "nul": self.nul,
            "control": self.control,
            "invalid_text": self.invalid_text,
            "glued": self.glued,
            "cut": self.cut,
            "examples": [f"L{e.number}: {e.text}" for e in self.examples],
        }


@dataclass(frozen=True)
class LogText:
    """A log file read into records."""

    path: Path
    format: str  # "heygem" (text records) or "json" (heygem's --log-json)
    encoding: str
    total_lines: int
    records: tuple[Record, ...]
    other_lines: int  # lines that are neither records nor damage (tracebacks, prints)
    damage: Damage
    prefixes: tuple[str, ...]  # what stood before the records: "docker-timestamp", "stream"
    timed: bool = True  # False: no line had a timestamp; record times only order them


def parse_time(text: str) -> datetime | None:
    """A timestamp in any of the layouts' forms, as wall-clock time (zone dropped)."""
    if "," in text or len(text) > 26:  # fromisoformat wants "." and at most 6 digits
        text = _FRACTION.sub(lambda m: "." + m[2][:6], text, count=1)
    try:
        time = datetime.fromisoformat(text)
    except ValueError:
        return None
    return time.replace(tzinfo=None)


STDIN = Path("-")  # the log on standard input: `docker logs -t X 2>&1 | heygem-diagnose log -`
STDIN_SPOOL_BYTES = 64 << 20  # standard input is read once into memory up to this, then disk


def read_log(path: Path) -> LogText:
    """Read ``path`` (``-``: standard input) into records. Raises ``InputNotFound`` when
    the file cannot be opened and ``InvalidOption`` when it is not a log (no record at
    all)."""
    path = Path(path)
    reader = _Reader()
    try:
        with _opened(path) as handle:
            encoding, lines = _decoded_lines(handle)
            for number, text, decode_damage in lines:
                reader.feed(number, text, decode_damage)
    except OSError as exc:
        raise InputNotFound(
            f"cannot read log file {path}: {exc.strerror or exc}",
            hint="check the file's permissions, or copy it somewhere readable",
        ) from exc
    log = reader.finish(Path("<stdin>") if path == STDIN else path, encoding)
    if not log.records:
        damaged = f", {log.damage.lines} of them damaged" if log.damage.lines else ""
        raise InvalidOption(
            f"{'standard input' if path == STDIN else path} holds no log record "
            f"({log.total_lines} lines read{damaged})",
            hint="expected HeyGem lines like `[2025-03-18 10:21:33,412] [process.py[line:108]] "
            "[INFO] [msg]` (with or without the source field, any docker/compose prefix) or "
            "heygem's --log-json lines; pass dh.log or `docker logs -t <container> > dh.log 2>&1`",
        )
    return log


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[BinaryIO]:
    """The log's bytes, seekable (the encoding is sniffed from its head, then it is read
    from the start): a file checked first, standard input copied into a spool."""
    if path != STDIN:
        _check_file(path)
        with path.open("rb") as handle:
            yield handle
        return
    if sys.stdin is None or sys.stdin.isatty():
        raise InvalidOption(
            "`-` reads the log from standard input, and nothing is piped in",
            hint="pipe it: docker logs -t <container> 2>&1 | heygem-diagnose log -",
        )
    with tempfile.SpooledTemporaryFile(max_size=STDIN_SPOOL_BYTES) as spool:
        shutil.copyfileobj(sys.stdin.buffer, spool)
        spool.seek(0)
        yield cast(BinaryIO, spool)  # a binary file, as open("rb") gives


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputNotFound(
            f"log file not found: {path}",
            hint="pass the path of HeyGem's dh.log, or save the container log first with "
            "`docker logs -t <container> > dh.log 2>&1`",
        )
    if path.is_dir():
        raise InvalidOption(
            f"{path} is a directory, expected a log file",
            hint="pass the log file itself, e.g. <dir>/dh.log",
        )


# --- bytes -> text ----------------------------------------------------------------------
def _decoded_lines(handle: BinaryIO) -> tuple[str, Iterator[tuple[int, str, tuple[str, ...]]]]:
    """The file's encoding and its lines as text, each with the damage its bytes showed."""
    head = handle.read(_SNIFF_BYTES)
    handle.seek(0)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        # `docker logs > dh.log` in Windows PowerShell 5 writes UTF-16 with a BOM.
        return "utf-16", _utf16_lines(handle)
    encoding = _sniff_encoding(head)
    return encoding, _byte_lines(handle, encoding)


def _sniff_encoding(head: bytes) -> str:
    """UTF-8 unless most non-ASCII lines are not UTF-8 but are GB18030 (a Windows locale)."""
    failing = passing = gbk = 0
    for raw in head.split(b"\n")[:-1]:
        if raw.isascii():
            continue
        try:
            raw.decode("utf-8")
            passing += 1
        except UnicodeDecodeError:
            failing += 1
            try:
                raw.decode("gb18030")
                gbk += 1
            except UnicodeDecodeError:
                pass
    return "gb18030" if failing > passing and gbk == failing and gbk >= 3 else "utf-8"


def _byte_lines(handle: BinaryIO, encoding: str) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    first = True
    for number, raw in enumerate(handle, start=1):
        if first and raw.startswith(codecs.BOM_UTF8):
            raw = raw[len(codecs.BOM_UTF8) :]
        first = False
        damage: tuple[str, ...] = ()
        if b"\x00" in raw:
            raw = raw.replace(b"\x00", b"")
            damage += ("nul",)
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            text = raw.decode(encoding, errors="replace")
            damage += ("invalid_text",)
        yield number, text, damage


def _utf16_lines(handle: BinaryIO) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    text_handle = io.TextIOWrapper(handle, encoding="utf-16", errors="replace", newline="")
    for number, text in enumerate(text_handle, start=1):
        damage: tuple[str, ...] = ("invalid_text",) if "\ufffd" in text else ()
        if "\x00" in text:
            text = text.replace("\x00", "")
            damage += ("nul",)
        yield number, text, damage


# --- text -> records ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Header:
    start: int
    end: int  # where the message starts
    time: datetime
    has_fraction: bool
    level: str
    source: str | None
    bracketed: bool  # HeyGem's layout: the message is wrapped in [ ]
    heygem: bool = False  # HeyGem's [ts] [src] [LEVEL] [msg] layout, with or without [msg]


@dataclass
class _Builder:
    """A record while its continuation lines are still coming."""

    line: int
    time: datetime
    level: str
    message: str
    text: str
    stream: str
    source: str | None
    data: Mapping[str, Any] | None = None
    unclosed: bool = False  # bracketed message without its closing "]" so far
    glued: bool = False
    continuation: deque[Line] = field(default_factory=lambda: deque(maxlen=_MAX_CONTINUATION))

    def build(self) -> Record:
        return Record(
            line=self.line,
            time=self.time,
            level=self.level,
            message=self.message,
            text=self.text,
            stream=self.stream,
            source=self.source,
            continuation=tuple(self.continuation),
            data=self.data,
        )


class _Reader:
    """Turns decoded lines into records, counting damage on the way."""

    def __init__(self) -> None:
        self.builders: list[_Builder] = []
        self.last_in_stream: dict[str, _Builder] = {}
        self.last: _Builder | None = None
        self.total_lines = 0
        self.other_lines = 0
        self.json_records = 0
        self.damaged: dict[str, set[int]] = {}
        self.examples: list[Line] = []
        self.prefix_kinds: set[str] = set()
        self.untimed: list[Line] = []  # lines before any record: a log may have no timestamps

    # -- damage ---------------------------------------------------------------------------
    def damage(self, kind: str, number: int, text: str) -> None:
        seen = any(number in lines for lines in self.damaged.values())
        self.damaged.setdefault(kind, set()).add(number)
        if not seen and len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(Line(number, _clip(repr(text)[1:-1], 160)))

    # -- lines ----------------------------------------------------------------------------
    def feed(self, number: int, text: str, decode_damage: tuple[str, ...]) -> None:
        self.total_lines = number
        text = text.rstrip("\r\n")[:_MAX_LINE]
        original = text
        for kind in decode_damage:
            self.damage(kind, number, original)
        if "\x1b" in text:
            text = _ANSI.sub("", text)
        if _CONTROL.search(text):
            self.damage("control", number, original)
            text = _CONTROL.sub("", text)
        if "\r" not in text:
            self.feed_part(number, text)
            return
        # A bare CR is a terminal rewrite (progress bars): each part is its own line.
        for part in text.split("\r"):
            if part.strip():
                self.feed_part(number, part)

    def feed_part(self, number: int, text: str) -> None:
        stripped = text.lstrip()
        if stripped.startswith("{") and self.feed_json(number, stripped):
            return
        headers = self.headers(text)
        if not headers:
            self.feed_other(number, text)
            return
        if len(headers) > 1:
            self.damage("glued", number, text)
        start = 0
        for index, header in enumerate(headers):
            # A glued record keeps its own prefix: it ends the text of the one before.
            prefix = text[start : header.start]
            if index > 0:
                own = _TRAILING_PREFIX.search(prefix)
                prefix = own[0] if own else ""
            stream, header = self.read_prefix(prefix, header, number)
            if index + 1 < len(headers):
                end = headers[index + 1].start
                trailing = _TRAILING_PREFIX.search(text, header.end, end)
                if trailing is not None:
                    end = trailing.start()
            else:
                end = len(text)
            self.add_record(number, text[header.start : end], header, stream, index > 0, prefix)
            start = end

    def headers(self, text: str) -> list[_Header]:
        """Every record header on the line, left to right."""
        found: list[_Header] = []
        position = 0
        for candidate in _CANDIDATE.finditer(text):
            if candidate.start() < position:
                continue
            header = _match_header(text, candidate.start())
            if header is not None:
                found.append(header)
                position = header.end
        return found

    def read_prefix(self, prefix: str, header: _Header, number: int) -> tuple[str, _Header]:
        """The stream a prefix names, and the header with the prefix clock's sub-seconds."""
        if not prefix.strip():
            return "", header
        if _HEADER_FRAGMENT.search(prefix):
            self.damage("cut", number, prefix)
            self.damage("glued", number, prefix)
            return "", header
        name = _PREFIX_NAME.search(prefix) or _PREFIX_BRACKET_NAME.search(prefix)
        stream = name[1] if name else ""
        if stream:
            self.prefix_kinds.add("stream")
        stamp = _PREFIX_TS.search(prefix)
        if stamp is None:
            return stream, header
        self.prefix_kinds.add("docker-timestamp")
        return stream, _refined(header, stamp[0])

    def add_record(
        self, number: int, text: str, header: _Header, stream: str, glued: bool, prefix: str
    ) -> None:
        message = text[header.end - header.start :]
        unclosed = False
        if header.bracketed:
            message = message.rstrip()
            if message.endswith("]") and message.count("[") < message.count("]"):
                message = message[:-1]
            else:
                unclosed = True  # no closing bracket of its own (yet): cut, or continued
        elif header.heygem and not message.strip():
            unclosed = True  # HeyGem writes "[msg]" even for an empty message: cut short
        self.close_last(stream)
        builder = _Builder(
            line=number,
            time=header.time,
            level=header.level,
            message=message.strip(),
            text=_clip(text.strip()),
            stream=stream,
            source=header.source,
            unclosed=unclosed,
            glued=glued or bool(prefix and _HEADER_FRAGMENT.search(prefix)),
        )
        self.builders.append(builder)
        self.last_in_stream[stream] = builder
        self.last = builder

    def close_last(self, stream: str) -> None:
        """A record whose bracketed message never closed, before a new record: cut short."""
        previous = self.last_in_stream.get(stream)
        if previous is not None and previous.unclosed and not previous.glued:
            self.damage("cut", previous.line, previous.text)
            previous.unclosed = False

    def feed_other(self, number: int, text: str) -> None:
        """A line that is no record: the continuation of one, or a record cut short."""
        stream = ""
        prefix = _CONTINUATION_PREFIX.match(text)
        if prefix is not None and prefix.end():
            stream = prefix["name"] or prefix["pod"] or ""
            text = text[prefix.end() :]
        body = text.strip()
        if not body:
            return
        if (
            _TIME_FRAGMENT.match(body)
            or _BARE_TIME.match(body)
            or _HEADER_ONLY.match(body)
            or (_HEADER_FRAGMENT.match(body) and body.count("[") > body.count("]"))
        ):
            self.damage("cut", number, text)
            return
        owner = self.last_in_stream.get(stream) or self.last
        if owner is None:
            self.other_lines += 1
            if len(self.untimed) < _MAX_UNTIMED:
                self.untimed.append(Line(number, _clip(body, _MAX_LINE)))
            return
        if owner.unclosed and body.endswith("]"):
            owner.unclosed = False
        owner.continuation.append(Line(number, _clip(body)))
        self.other_lines += 1

    def feed_json(self, number: int, text: str) -> bool:
        try:
            data = json.loads(text)
        except ValueError:
            return False
        if not isinstance(data, dict) or not isinstance(data.get("ts"), int | float):
            return False
        if not isinstance(data.get("message"), str) and not isinstance(data.get("event"), str):
            return False
        try:
            time = datetime.fromtimestamp(float(data["ts"]), tz=UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            return False
        level = _level(str(data.get("level") or "INFO"))
        builder = _Builder(
            line=number,
            time=time,
            level=level,
            message=str(data.get("message") or ""),
            text=_clip(text),
            stream="",
            source=str(data.get("logger")) if data.get("logger") else None,
            data=data,
        )
        self.builders.append(builder)
        self.last_in_stream[""] = builder
        self.last = builder
        self.json_records += 1
        return True

    def finish(self, path: Path, encoding: str) -> LogText:
        for stream in list(self.last_in_stream):
            self.close_last(stream)
        timed = bool(self.builders)
        if not timed:
            self.read_untimed()
        damaged_lines = set().union(*self.damaged.values()) if self.damaged else set()
        counts = {kind: len(lines) for kind, lines in self.damaged.items()}
        damage = Damage(
            lines=len(damaged_lines),
            nul=counts.get("nul", 0),
            control=counts.get("control", 0),
            invalid_text=counts.get("invalid_text", 0),
            glued=counts.get("glued", 0),
            cut=counts.get("cut", 0),
            examples=tuple(self.examples),
        )
        records = tuple(b.build() for b in self.builders)
        text_records = len(records) - self.json_records
        return LogText(
            path=path,
            format="json" if self.json_records > text_records else "heygem",
            encoding=encoding,
            total_lines=self.total_lines,
            records=records,
            other_lines=self.other_lines,
            damage=damage,
            prefixes=tuple(sorted(self.prefix_kinds)),
            timed=timed,
        )

    def read_untimed(self) -> None:
        """A console copy without timestamps (HeyGem's messages only): its HeyGem lines become
        records in file order, on a clock that only orders them; nothing is timed from it."""
        known = [line for line in self.untimed if _HEYGEM_MESSAGE.search(line.text)]
        if len(known) < 2:
            return
        known_numbers = {line.number for line in known}
        self.other_lines = 0
        for line in self.untimed:
            if line.number not in known_numbers:
                if self.last is not None:
                    self.last.continuation.append(line)
                self.other_lines += 1
                continue
            level = "ERROR" if _FAILURE_WORDS.search(line.text) else "INFO"
            builder = _Builder(
                line=line.number,
                time=_UNTIMED_CLOCK + timedelta(seconds=line.number),
                level=level,
                message=line.text,
                text=line.text,
                stream="",
                source=None,
            )
            self.builders.append(builder)
            self.last = builder


def _refined(header: _Header, stamp: str) -> _Header:
    """A second-resolution line (HeyGem's console copy) timed by the prefix's clock.

    ``docker logs -t`` stamps UTC with nanoseconds while the line says local time: the two
    clocks differ by a whole zone offset (rounded to 15 minutes), which is added back, so
    the log's own clock stays the one every duration is measured on.
    """
    prefix_time = parse_time(stamp)
    if prefix_time is None or header.has_fraction:
        return header
    quarter = 15 * 60
    delta = (header.time - prefix_time).total_seconds()
    refined = prefix_time + timedelta(seconds=round(delta / quarter) * quarter)
    if abs((refined - header.time).total_seconds()) >= 1.0:
        return header
    return replace(header, time=refined)


def _match_header(text: str, position: int) -> _Header | None:
    layouts = _BRACKET_LAYOUTS if text.startswith("[", position) else _PLAIN_LAYOUTS
    for layout in layouts:
        match = layout.match(text, position)
        if match is None:
            continue
        time = parse_time(match["ts"])
        if time is None:  # an impossible date: not this layout (or damage)
            return None
        end = match.end()
        bracketed = layout is _BRACKET and text.startswith("[", end)
        if bracketed:
            end += 1
        source = match.groupdict().get("src")
        return _Header(
            start=position,
            end=end,
            time=time,
            has_fraction=len(match["ts"]) > 20 and match["ts"][19] in ".,",
            level=_level(match["level"]),
            source=source.strip() if source else None,
            bracketed=bracketed,
            heygem=layout is _BRACKET,
        )
    return None


def _level(text: str) -> str:
    text = text.upper()
    if len(text) == 1:
        return _ORT_LEVELS.get(text, "INFO")
    return {"WARN": "WARNING", "FATAL": "CRITICAL"}.get(text, text)


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
