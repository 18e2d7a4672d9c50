"""What every rule sees: the configuration, the log read, its task timeline."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property

from diagnostics.logs.config import AnalyzerConfig
from diagnostics.logs.events import Event, EventKind
from diagnostics.logs.reading import Line, LogText, Record
from diagnostics.logs.tasks import Timeline

__all__ = ["Context", "evidence", "hms", "short"]


@dataclass(frozen=True)
class Context:
    config: AnalyzerConfig
    log: LogText
    timeline: Timeline
    position: dict[int, int]  # id(record) -> its index in log.records

    def around(self, record: Record, before: int = 6) -> list[Record]:
        """The records just before ``record`` in its stream, and itself."""
        index = self.position.get(id(record))
        if index is None:
            return [record]
        found = [record]
        for other in reversed(self.log.records[max(0, index - 40) : index]):
            if other.stream == record.stream:
                found.insert(0, other)
                if len(found) > before:
                    break
        return found

    @cached_property
    def provider_events(self) -> list[Event]:
        every = [*self.timeline.service, *(e for t in self.timeline.tasks for e in t.events)]
        return [e for e in every if e.kind is EventKind.PROVIDER_FAILURE]

    @property
    def timed(self) -> bool:
        """False for a log without timestamps: its order holds, its durations do not."""
        return self.log.timed

    def at(self, record: Record) -> str:
        """Where a line is, for a title: its time, or its line for an untimed log."""
        return f"at {hms(record.time)}" if self.timed else f"at line {record.line}"

    @property
    def provider_texts(self) -> list[str]:
        """What onnxruntime said when it could not use CUDA (the advice reads versions)."""
        texts: list[str] = []
        for event in self.provider_events:
            texts.append(event.record.message)
            texts += [line.text for line in event.record.continuation]  # multi-line errors
        return texts


def evidence(items: Iterable[Record | Line | None], limit: int) -> tuple[str, ...]:
    seen: dict[int, str] = {}
    for item in items:
        if item is None:
            continue
        if isinstance(item, Record):
            seen.setdefault(item.line, f"L{item.line}: {item.text}")
        else:
            seen.setdefault(item.number, f"L{item.number}: {item.text}")
    return tuple(text for _, text in sorted(seen.items())[:limit])


def hms(time: datetime) -> str:
    return time.strftime("%H:%M:%S.%f")[:-3] if time.microsecond else time.strftime("%H:%M:%S")


def short(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
