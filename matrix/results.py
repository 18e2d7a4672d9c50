"""One JSON line per cell: the record type, appending, reading; and the fingerprints.

The file only grows (runs append), so a report takes the latest record of each cell.
A line that does not parse (a run killed mid-write) is skipped with a warning rather than
losing the whole file.

The golden-regression fingerprints of a package combination do not depend on its runtime
cells (workers, /dev/shm), so they are taken once per combination and stored beside the
results file, one JSON file each (``results.jsonl`` -> ``results.fingerprints/<id>.json``,
replaced by the next run of that combination): a ~35 KB record would bloat every cell line,
and a file per results file keeps two matrices' fingerprints apart. Standard library only.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from matrix.cells import Cell, Packages, Runtime

__all__ = [
    "SCHEMA",
    "CellResult",
    "Fingerprint",
    "Outcome",
    "append_results",
    "fingerprints_dir",
    "latest_by_cell",
    "read_fingerprints",
    "read_results",
    "write_fingerprint",
]

log = logging.getLogger(__name__)

SCHEMA = 1


class Outcome(StrEnum):
    OK = "ok"
    STALLED = "stalled"
    CRASHED = "crashed"
    ERROR = "error"  # the run could not be judged: bad option, probe error, harness error
    INSTALL_FAILED = "install-failed"
    UNAVAILABLE = "unavailable"  # this machine cannot set the cell up (e.g. not root)

    @property
    def comparable(self) -> bool:
        """Did the cell run, so its outcome says something about the libraries?"""
        return self not in (Outcome.INSTALL_FAILED, Outcome.UNAVAILABLE)


# Worst first: the outcome a cell gets when several of its steps failed.
SEVERITY: tuple[Outcome, ...] = (
    Outcome.INSTALL_FAILED,
    Outcome.UNAVAILABLE,
    Outcome.CRASHED,
    Outcome.STALLED,
    Outcome.ERROR,
    Outcome.OK,
)


def worst(outcomes: Iterable[Outcome]) -> Outcome:
    return min(outcomes, key=SEVERITY.index, default=Outcome.OK)


@dataclass(frozen=True)
class StepResult:
    """One step of a cell: the generation probe or the HeyGem-sized DataLoader load."""

    outcome: Outcome
    cause: str | None = None
    evidence: tuple[str, ...] = ()
    seconds: float = 0.0
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": str(self.outcome),
            "cause": self.cause,
            "evidence": list(self.evidence),
            "seconds": self.seconds,
            "detail": dict(self.detail),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StepResult:
        return cls(
            Outcome(data["outcome"]),
            data.get("cause"),
            tuple(data.get("evidence", ())),
            float(data.get("seconds", 0.0)),
            dict(data.get("detail", {})),
        )


@dataclass(frozen=True)
class CellResult:
    cell_id: str
    packages_id: str
    torch: str
    ort: str
    flavour: str
    workers: int
    shm: str
    outcome: Outcome
    cause: str | None  # classified, e.g. "shared memory exhausted (SIGBUS)"
    evidence: tuple[str, ...]  # the lines that back the cause
    failed_step: str | None  # "install", "namespace", "doctor", "probe", "load" or None
    fps: float | None  # generation throughput of the probe
    providers_requested: tuple[str, ...]
    providers_used: tuple[str, ...]
    cpu_fallback: bool
    versions: Mapping[str, str | None]  # what was really installed, read in the cell
    doctor: Mapping[str, Any]  # {"worst": ..., "status": {id: status}, "evidence": {...}}
    steps: Mapping[str, StepResult]  # "probe", "load"
    duration_s: float  # this cell's wall time (doctor + probe + load)
    install_s: float | None  # the package combination's install time, None: reused
    started: str  # ISO 8601, UTC
    host: str
    session: str | None = None
    tags: tuple[str, ...] = ()
    schema: int = SCHEMA

    @classmethod
    def for_cell(cls, cell: Cell, outcome: Outcome, **values: Any) -> CellResult:
        """A record of ``cell``; fields a short run did not reach take their defaults."""
        record: dict[str, Any] = {
            "cell_id": cell.id,
            "packages_id": cell.packages.id,
            "torch": cell.packages.torch,
            "ort": cell.packages.ort,
            "flavour": cell.packages.flavour,
            "workers": cell.runtime.workers,
            "shm": cell.runtime.shm,
            "outcome": outcome,
            "cause": None,
            "evidence": (),
            "failed_step": None,
            "fps": None,
            "providers_requested": (),
            "providers_used": (),
            "cpu_fallback": False,
            "versions": {},
            "doctor": {},
            "steps": {},
            "duration_s": 0.0,
            "install_s": None,
            "started": "",
            "host": os.uname().nodename,
            "tags": cell.tags,
        }
        record.update(values)
        return cls(**record)

    @property
    def runtime_id(self) -> str:
        return f"w{self.workers}-shm{self.shm}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = str(self.outcome)
        data["steps"] = {name: step.to_dict() for name, step in self.steps.items()}
        for key in ("evidence", "providers_requested", "providers_used", "tags"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellResult:
        """Needs the coordinates and the outcome; everything else has a default (so
        hand-written files stay short), and keys added by later versions are ignored."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        tags = tuple(values.pop("tags", ()))
        packages = Packages(
            str(values.pop("torch")),
            str(values.pop("ort")),
            str(values.pop("flavour")),
            quick="quick" in tags,
        )
        cell = Cell(packages, Runtime(int(values.pop("workers")), str(values.pop("shm"))))
        values["steps"] = {
            name: StepResult.from_dict(step) for name, step in values.get("steps", {}).items()
        }
        for key in ("evidence", "providers_requested", "providers_used"):
            values[key] = tuple(values.get(key, ()))
        return cls.for_cell(cell, Outcome(values.pop("outcome")), tags=tags or cell.tags, **values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)


def append_results(path: Path, results: Sequence[CellResult]) -> None:
    """Append records, one line each. One write per line with O_APPEND: two sessions
    appending at once interleave whole lines, never parts of them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        for result in results:
            handle.write(result.to_json() + "\n")
            handle.flush()


def read_results(path: Path) -> list[CellResult]:
    results: list[CellResult] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                results.append(CellResult.from_dict(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "%s:%d: skipped a record that does not parse (%s: %s)",
                    path,
                    number,
                    type(exc).__name__,
                    exc,
                )
    return results


def latest_by_cell(results: Iterable[CellResult]) -> dict[str, CellResult]:
    """The last record of each cell id (later lines win: the file is in run order)."""
    latest: dict[str, CellResult] = {}
    for result in results:
        latest.pop(result.cell_id, None)  # re-insert: keeps dict order = order last run
        latest[result.cell_id] = result
    return latest


# --- fingerprints ---------------------------------------------------------------------
@dataclass(frozen=True)
class Fingerprint:
    """One package combination's golden-regression fingerprints, or why there are none."""

    packages_id: str
    ok: bool
    seconds: float  # wall time of the fingerprint step
    started: str  # ISO 8601, UTC
    scenarios: tuple[str, ...]  # requested (empty: all of them)
    record: Mapping[str, Any] | None = None  # diagnostics.regress record, frames=False
    error: str | None = None  # e.g. "python -m matrix.fingerprint exit 1"
    tail: tuple[str, ...] = ()  # the step's last stderr lines on failure
    host: str = field(default_factory=lambda: os.uname().nodename)
    schema: int = SCHEMA

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scenarios"], data["tail"] = list(self.scenarios), list(self.tail)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fingerprint:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        fingerprint = cls(**values)
        return replace(
            fingerprint, scenarios=tuple(fingerprint.scenarios), tail=tuple(fingerprint.tail)
        )


def fingerprints_dir(results: Path) -> Path:
    """``matrix-results/ci.jsonl`` -> ``matrix-results/ci.fingerprints``."""
    return results.with_name(results.stem + ".fingerprints")


def write_fingerprint(results: Path, fingerprint: Fingerprint) -> Path:
    """Replace the combination's file atomically: a killed run leaves the old one whole."""
    directory = fingerprints_dir(results)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{fingerprint.packages_id}.json"
    tmp = target.with_suffix(".json.part")
    tmp.write_text(
        json.dumps(fingerprint.to_dict(), ensure_ascii=False, sort_keys=True), encoding="utf-8"
    )
    tmp.replace(target)
    return target


def read_fingerprints(results: Path) -> list[Fingerprint]:
    """The fingerprints stored beside a results file (none: an empty list)."""
    found = []
    for path in sorted(fingerprints_dir(results).glob("*.json")):
        try:
            found.append(Fingerprint.from_dict(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning(
                "%s: skipped a fingerprint file that does not parse (%s: %s)",
                path,
                type(exc).__name__,
                exc,
            )
    return found
