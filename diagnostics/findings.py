"""The one result type of every diagnosis, its renderers and its exit-code rule.

``heygem-diagnose env``, ``log``, ``ps``, ``run-probe`` and ``regress`` (and the web page)
all answer with a ``Report`` of ``Finding``s: what was found (id, severity, title), the
evidence that shows it, and what to do. One text renderer and one JSON shape; one rule for
the exit code: 0 when nothing failed, 1 when a finding fails (or warns, with ``strict``),
2 is reserved for "could not run at all" and decided by the CLI edge.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_COULD_NOT_RUN = 2


class Severity(StrEnum):
    """How much a finding matters. INFO describes; OK was checked and is fine; WARN is
    advice or a possible problem; FAIL is a problem the evidence shows."""

    INFO = "info"
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Severity.INFO: 0, Severity.OK: 1, Severity.WARN: 2, Severity.FAIL: 3}


def worst(severities: Iterable[Severity]) -> Severity:
    """The most serious severity (OK for none)."""
    return max(severities, key=_RANK.__getitem__, default=Severity.OK)


@dataclass(frozen=True)
class Finding:
    """One thing a diagnosis found."""

    id: str  # stable, for machines and tests: "shm", "queue-full", "zombie"...
    severity: Severity
    title: str  # one line a person reads first
    evidence: Sequence[str] = ()  # the lines (log lines, readings) that show it
    fix: str | None = None  # what to do about it
    subject: str | None = None  # what it is about: a task id, a pid, a scenario

    def __post_init__(self) -> None:
        object.__setattr__(self, "evidence", tuple(self.evidence))  # frozen, hashable

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "severity": self.severity.value,
            "title": self.title,
            "evidence": list(self.evidence),
            "fix": self.fix,
            "subject": self.subject,
        }


@dataclass(frozen=True)
class Report:
    """What one diagnosis found, plus the facts it was based on."""

    tool: str  # "env", "log", "ps", "run-probe", "regress"
    title: str  # the headline: "heygem environment doctor"
    findings: tuple[Finding, ...]
    # Tool-specific facts for machines (a log's tasks, a tree's processes...): JSON-ready.
    details: Mapping[str, Any] = field(default_factory=dict)
    # Tool-specific text shown between the headline and the findings (a timeline, a table).
    body: tuple[str, ...] = ()

    @property
    def worst(self) -> Severity:
        return worst(f.severity for f in self.findings)

    def exit_code(self, *, strict: bool = False) -> int:
        """1 when a finding fails (or warns, with ``strict``), else 0."""
        bad = {Severity.FAIL, Severity.WARN} if strict else {Severity.FAIL}
        return EXIT_PROBLEMS if self.worst in bad else EXIT_OK

    def by_id(self, finding_id: str) -> list[Finding]:
        return [f for f in self.findings if f.id == finding_id]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "title": self.title,
            "worst": self.worst.value,
            "exit_code": self.exit_code(),
            "findings": [f.to_dict() for f in self.findings],
            **_jsonable(dict(self.details)),
        }


def render_text(report: Report, *, max_evidence: int = 10) -> str:
    """The human view: headline with the verdict, the body, then one block per finding."""
    lines = [f"{report.title}: {report.worst.value.upper()}"]
    lines += list(report.body)
    for finding in report.findings:
        about = f" [{finding.subject}]" if finding.subject else ""
        lines.append(f"[{finding.severity.value.upper():4}] {finding.id}{about}: {finding.title}")
        shown: Sequence[str] = finding.evidence[:max_evidence]
        lines += [f"         {line}" for line in shown]
        if len(finding.evidence) > max_evidence:
            lines.append(f"         ... {len(finding.evidence) - max_evidence} more (see --json)")
        if finding.fix:
            lines.append(f"    fix: {finding.fix}")
    return "\n".join(lines)


def render_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    """Plain JSON values from dataclasses, enums, paths and tuples in ``details``."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, StrEnum):
        return value.value
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
