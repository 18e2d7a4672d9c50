"""Golden regression: did an upgrade of onnxruntime, torch, librosa or opencv change the
output, by how much, and in which step?

``record_run`` runs the fixed generated scenarios (``regress_scenarios``) through the real
pipeline and fingerprints each step (``regress_run``): the generated inputs, mel
features and voice activity, face regions per template frame, generator outputs on a
seeded batch and on the scenario's own crops, composited frames (sampled mouth crops and
reduced frames, plus a per-frame change track), and the muxed file's frame count,
durations and A/V sync. ``check`` compares a fresh run with a stored golden record by the
per-metric tolerances of ``regress_metrics`` and names the first step that drifted.

The matrix calls ``fingerprint_environment_run`` in every cell and renders
``drift_table`` over the cells' records: the largest difference per step between any two
library combinations. Performance is not judged here: ``python -m benchmarks.summary
new.json --compare baseline.json`` does that by ratio.

A golden directory holds ``regress.json`` and the sampled frames as PNG files
(``frames/``), small enough to commit (well under 1 MB).
"""

from __future__ import annotations

import base64
import json
import logging
import math
import platform
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from diagnostics.findings import Finding, Report, Severity
from diagnostics.probes.versions import installed_versions
from diagnostics.regress_metrics import Comparison, compare_step, decode_png
from diagnostics.regress_scenarios import (
    DEFAULT_GOLDEN,
    GOLDEN_OPTIONS,
    STEPS,
    Perturbation,
    select_scenarios,
)
from heygem.config import BackendName, DeviceName
from heygem.errors import InputNotFound, InvalidOption, MediaUnreadable, OutputNotWritable

__all__ = [
    "DEFAULT_GOLDEN",
    "CheckReport",
    "check",
    "check_report",
    "compare_records",
    "drift_table",
    "fingerprint_environment_run",
    "format_drift_table",
    "golden_size",
    "load_golden",
    "record_report",
    "record_run",
    "write_golden",
]

log = logging.getLogger(__name__)

SCHEMA = 1
KIND = "heygem-regress"
RECORD_FILE = "regress.json"
FRAMES_DIR = "frames"
# Distributions whose versions explain drift (metadata only, no imports).
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "scipy": ("scipy",),
    "librosa": ("librosa",),
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "onnx": ("onnx",),
    "opencv": ("opencv-python-headless", "opencv-python"),
    "av": ("av",),
    "heygem-harness": ("heygem-harness",),
}


# --- records --------------------------------------------------------------------------
def library_versions() -> dict[str, str | None]:
    return installed_versions(_DISTRIBUTIONS)


def record_run(
    scenarios: Sequence[str] | None = None,
    *,
    backend: BackendName = "onnxruntime",
    device: DeviceName = "cpu",
    perturb: Perturbation | None = None,
    label: str | None = None,
    workdir: Path | None = None,
    on_scenario: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the scenarios and return the record (JSON-ready, sampled frames inline)."""
    from diagnostics.regress_run import RunSettings, run_fingerprints

    names = select_scenarios(list(scenarios) if scenarios else None)
    settings = RunSettings(backend=backend, device=device)
    results, info = run_fingerprints(
        names, settings, perturb=perturb, workdir=workdir, on_scenario=on_scenario
    )
    return {
        "schema": SCHEMA,
        "kind": KIND,
        "label": label,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {"generator": GOLDEN_OPTIONS.generator, "backend": backend, "device": device},
        "environment": {
            "versions": library_versions(),
            "platform": platform.platform(),
            "providers": list(info.used),
        },
        "perturbation": None
        if perturb is None
        else {"step": perturb.step, "amount": perturb.amount},
        "frames": True,  # sampled composite frames included (see fingerprint_environment_run)
        "scenarios": results,
    }


def fingerprint_environment_run(
    scenarios: Sequence[str] | None = None,
    *,
    backend: BackendName = "onnxruntime",
    device: DeviceName = "cpu",
    label: str | None = None,
    frames: bool = True,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """The golden fingerprints of this environment, for a version-matrix cell to store.

    ``label`` names the cell in ``drift_table``. ``frames=False`` drops the sampled PNGs
    (~100 KB of base64) and keeps the per-frame change track and hashes, for compact
    results files; ``drift_table`` then compares composites by those alone.
    """
    record = record_run(scenarios, backend=backend, device=device, label=label, workdir=workdir)
    if not frames:
        record["frames"] = False
        for steps in record["scenarios"].values():
            steps.get("composite", {}).pop("frames", None)
    return record


def _iter_images(record: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file stem, image dict) of every sampled frame in the record."""
    for scenario, steps in record["scenarios"].items():
        for frame in steps.get("composite", {}).get("frames", []):
            for part in ("mouth", "full"):
                if frame.get(part) is not None:
                    yield f"{scenario}-{frame['index']:04d}-{part}", frame[part]


def check_golden_dir(directory: Path) -> None:
    """Fail before the scenarios run (tens of seconds) if ``directory`` cannot hold a
    golden record."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".heygem-write-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputNotWritable(
            f"cannot write a golden record to {str(directory)!r}: {exc.strerror or exc}",
            hint="pass --out a directory you can create and write, e.g. ~/heygem-golden",
        ) from exc


def write_golden(directory: Path, record: Mapping[str, Any]) -> Path:
    """Write ``regress.json`` + ``frames/*.png``; replaces a previous golden there."""
    try:
        return _write_golden(directory, record)
    except OSError as exc:  # disk full, permissions changed meanwhile
        raise OutputNotWritable(
            f"writing the golden record to {str(directory)!r} failed: {exc.strerror or exc}",
            hint="free space or fix the directory's permissions, then record again",
        ) from exc


def _write_golden(directory: Path, record: Mapping[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    frames_dir = directory / FRAMES_DIR
    if frames_dir.is_dir():
        for old in frames_dir.glob("*.png"):  # only our own files: stale frames must go
            old.unlink()
    frames_dir.mkdir(exist_ok=True)
    stored = json.loads(json.dumps(record))  # a deep copy the caller does not see change
    for stem, image in _iter_images(stored):
        name = f"{FRAMES_DIR}/{stem}.png"
        (directory / name).write_bytes(base64.b64decode(image.pop("png")))
        image["file"] = name
    target = directory / RECORD_FILE
    tmp = target.with_suffix(".json.part")
    tmp.write_text(_dumps(stored) + "\n", encoding="utf-8")
    tmp.replace(target)
    return target


def golden_size(directory: Path) -> tuple[int, int]:
    """(files, bytes) of a golden directory: it is committed, so it must stay small."""
    files = [directory / RECORD_FILE, *sorted((directory / FRAMES_DIR).glob("*.png"))]
    present = [f for f in files if f.is_file()]
    return len(present), sum(f.stat().st_size for f in present)


def load_golden(directory: Path) -> dict[str, Any]:
    """A golden directory (or a regress.json) as a record with its frames inline."""
    path = directory / RECORD_FILE if directory.is_dir() else directory
    if not path.is_file():
        raise InputNotFound(
            f"no golden record at {str(path)!r}",
            hint="record one first: heygem-diagnose regress record --out DIR",
        )
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MediaUnreadable(
            f"golden record {str(path)!r} is unreadable: {exc}",
            hint="re-record it with `regress record`",
        ) from exc
    if record.get("kind") != KIND or record.get("schema") != SCHEMA:
        raise MediaUnreadable(
            f"{str(path)!r} is not a schema-{SCHEMA} regression record",
            hint="re-record it with this version: `regress record`",
        )
    for _, image in _iter_images(record):
        if "file" in image:
            frame = path.parent / image.pop("file")
            try:
                image["png"] = base64.b64encode(frame.read_bytes()).decode("ascii")
            except OSError as exc:
                raise InputNotFound(
                    f"golden frame {str(frame)!r} is missing: {exc}",
                    hint="restore the golden directory or re-record it",
                ) from exc
    return record


def _dumps(record: Any) -> str:
    """Indented JSON with lists of plain values on one line: small and diffable."""
    text = json.dumps(record, indent=1, ensure_ascii=False)
    scalar = r'(?:-?[\d.eE+-]+|null|true|false|"[^"\\\[\]{},]*")'
    pattern = re.compile(r"\[\s*(" + scalar + r"(?:\s*,\s*" + scalar + r")*)\s*\]")
    return pattern.sub(lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)


# --- comparing ------------------------------------------------------------------------
def _load_image(image: Mapping[str, Any]) -> Any:
    return decode_png(image["png"])


def compare_records(golden: Mapping[str, Any], current: Mapping[str, Any]) -> list[Comparison]:
    """Findings for every scenario both records hold, in step order."""
    # A record stored without its sampled frames is compared by everything else.
    skip = (
        frozenset()
        if golden.get("frames", True) and current.get("frames", True)
        else (frozenset({"frames"}))
    )
    comparisons: list[Comparison] = []
    for scenario, steps in golden["scenarios"].items():
        now = current["scenarios"].get(scenario)
        if now is None:
            continue
        for step in STEPS:
            if step in steps:
                comparisons += compare_step(
                    scenario, step, steps[step], now.get(step, {}), _load_image, skip
                )
    return comparisons


@dataclass(frozen=True)
class StepSummary:
    step: str
    worst: Comparison | None  # the comparison with the highest severity (None: step not run)
    regressions: int
    metrics: int
    identical: bool  # every metric of every scenario bit-for-bit the same

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "ok": self.regressions == 0,
            "regressions": self.regressions,
            "metrics": self.metrics,
            "identical": self.identical,
            "worst": None if self.worst is None else self.worst.to_dict(),
        }


@dataclass(frozen=True)
class CheckReport:
    golden_path: str
    golden: Mapping[str, Any]  # the golden's created/settings/environment (no scenarios)
    current: Mapping[str, Any]
    comparisons: tuple[Comparison, ...]
    updated: bool = False
    steps: tuple[StepSummary, ...] = field(init=False)

    def __post_init__(self) -> None:
        summaries = []
        for step in STEPS:
            mine = [f for f in self.comparisons if f.step == step]
            worst = max(mine, key=lambda f: f.severity, default=None)
            summaries.append(
                StepSummary(
                    step,
                    worst,
                    sum(not f.ok for f in mine),
                    len(mine),
                    bool(mine) and all(f.identical for f in mine),
                )
            )
        object.__setattr__(self, "steps", tuple(summaries))

    @property
    def regressions(self) -> tuple[Comparison, ...]:
        return tuple(f for f in self.comparisons if not f.ok)

    @property
    def ok(self) -> bool:
        return not self.regressions

    @property
    def first_drift(self) -> Comparison | None:
        """The worst regression of the earliest step that has one."""
        for summary in self.steps:
            if summary.regressions:
                return summary.worst
        return None

    def version_changes(self) -> dict[str, list[str | None]]:
        old = self.golden.get("environment", {}).get("versions", {})
        new = self.current.get("environment", {}).get("versions", {})
        return {
            k: [old.get(k), new.get(k)]
            for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)
        }

    def to_dict(self) -> dict[str, Any]:
        first = self.first_drift
        return {
            "ok": self.ok,
            "first_drift": None if first is None else first.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
            "regressions": [f.to_dict() for f in self.regressions],
            "version_changes": self.version_changes(),
            "golden": {"path": self.golden_path, **self.golden},
            "current": dict(self.current),
            "updated": self.updated,
            "comparisons": [f.to_dict() for f in self.comparisons],
        }


def _header(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: record.get(k) for k in ("created", "label", "settings", "environment", "perturbation")
    }


def check(
    golden_dir: Path,
    scenarios: Sequence[str] | None = None,
    *,
    perturb: Perturbation | None = None,
    update: bool = False,
    workdir: Path | None = None,
    on_scenario: Callable[[str], None] | None = None,
) -> CheckReport:
    """Run the golden's scenarios (or the given subset) with its settings and compare.

    ``update`` then writes this run as the new golden (a deliberate re-record)."""
    if update and perturb is not None:
        raise InvalidOption(
            "--update with --perturb would record a deliberately broken golden",
            hint="drop one of the two",
        )
    golden = load_golden(golden_dir)
    names = select_scenarios(list(scenarios) if scenarios else None)
    missing = [n for n in names if n not in golden["scenarios"]]
    if scenarios and missing:
        raise InvalidOption(
            f"the golden record has no scenario {', '.join(missing)}",
            hint="record it: heygem-diagnose regress record --scenario NAME",
        )
    names = tuple(n for n in names if n in golden["scenarios"])
    settings = golden.get("settings", {})
    current = record_run(
        names,
        backend=settings.get("backend", "onnxruntime"),
        device=settings.get("device", "cpu"),
        perturb=perturb,
        workdir=workdir,
        on_scenario=on_scenario,
    )
    comparisons = compare_records(golden, current)
    if update:
        write_golden(golden_dir, _merged(golden, current))
    return CheckReport(
        str(golden_dir), _header(golden), _header(current), tuple(comparisons), updated=update
    )


def _merged(golden: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The new golden: this run, keeping scenarios it did not run from the old one."""
    merged = dict(current)
    merged["scenarios"] = {**golden["scenarios"], **current["scenarios"]}
    return merged


# --- the matrix view ------------------------------------------------------------------
def _labels(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each record's label, else the library versions that differ between the records."""
    versions = [r.get("environment", {}).get("versions", {}) for r in records]
    keys = sorted({k for v in versions for k in v if len({str(w.get(k)) for w in versions}) > 1})
    labels = []
    for i, (record, v) in enumerate(zip(records, versions, strict=True)):
        text = record.get("label") or " ".join(f"{k} {v.get(k)}" for k in keys)
        labels.append(text or f"record {i + 1}")
    return labels


def drift_table(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per step, the largest difference between any two records (e.g. matrix cells).

    One row per step, in pipeline order: the metric with the highest severity over all
    pairs, its difference and tolerance, the two records (labels) it is between, and
    whether every record agreed bit-for-bit on that step.
    """
    labels = _labels(records)
    worst: dict[str, tuple[Comparison, str, str]] = {}
    identical: dict[str, bool] = {}
    for i, first in enumerate(records):
        for j in range(i + 1, len(records)):
            for comparison in compare_records(first, records[j]):
                identical[comparison.step] = identical.get(comparison.step, True) and (
                    comparison.identical
                )
                best = worst.get(comparison.step)
                if best is None or comparison.severity > best[0].severity:
                    worst[comparison.step] = (comparison, labels[i], labels[j])
    rows = []
    for step in STEPS:
        if step not in worst:
            continue
        comparison, a, b = worst[step]
        shown = comparison.to_dict()
        rows.append(
            {
                "step": step,
                "scenario": comparison.scenario,
                "metric": comparison.metric,
                "difference": shown["difference"],
                "limit": comparison.limit,
                "unit": comparison.unit,
                "severity": shown["severity"],
                "exceeds": not comparison.ok,
                "identical": identical[step],
                "between": [a, b],
                "note": comparison.note,
            }
        )
    return rows


# --- text -----------------------------------------------------------------------------
def _describe(f: Comparison) -> str:
    if f.difference is None:
        value = "missing" if math.isinf(f.severity) else "differs"
    elif f.unit in ("dB", "ssim"):
        value = f"{f.difference:.4g} {f.unit} (min {f.limit:g})"
    else:
        value = f"max |diff| {f.difference:.3g} {f.unit} (tolerance {f.limit:g})".replace("  ", " ")
    note = f"; {f.note}" if f.note else ""
    return f"{f.scenario} {f.metric}: {value}{note}"


def _versions_line(header: Mapping[str, Any]) -> str:
    versions = header.get("environment", {}).get("versions", {})
    keys = ("torch", "onnxruntime", "librosa", "opencv", "numpy", "av")
    return ", ".join(f"{k} {versions.get(k)}" for k in keys if k in versions)


def check_report(report: CheckReport) -> Report:
    """The check as findings: one per step that ran (ok, or the drift with its metrics)."""
    first = report.first_drift
    if report.ok:
        verdict = "PASS - every step within tolerance"
    else:
        verdict = f"REGRESSION - first drift in step '{first.step}'" if first else "REGRESSION"
    body = [
        f"  {verdict}",
        f"  golden: {report.golden_path} (recorded {report.golden.get('created')}; "
        f"{_versions_line(report.golden)})",
        f"  now:    {_versions_line(report.current)}",
    ]
    changes = report.version_changes()
    if changes:
        body.append(
            "  changed: "
            + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changes.items() if k != "python")
        )
    perturb = report.current.get("perturbation")
    if perturb:
        body.append(f"  rehearsal: {perturb['step']} perturbed by {perturb['amount']:g}")
    if report.updated:
        body.append(f"  golden updated: {report.golden_path}")
    findings = []
    for summary in report.steps:
        if summary.worst is None:
            continue
        if not summary.regressions:
            title = (
                f"identical ({summary.metrics} metrics)"
                if summary.identical
                else f"within tolerance; worst: {_describe(summary.worst)}"
            )
            findings.append(Finding("step", Severity.OK, title, subject=summary.step))
            continue
        drifted = [f for f in report.regressions if f.step == summary.step]
        findings.append(
            Finding(
                "drift",
                Severity.FAIL,
                f"{summary.regressions} of {summary.metrics} metrics out of tolerance",
                [_describe(f) for f in drifted],
                None
                if report.updated
                else "intended? re-record with: heygem-diagnose regress check --update",
                subject=summary.step,
            )
        )
    return Report("regress", "heygem regress check", tuple(findings), report.to_dict(), tuple(body))


def record_report(directory: Path, record: Mapping[str, Any]) -> Report:
    files, size = golden_size(directory)
    body = [
        f"  scenarios: {', '.join(record['scenarios'])}",
        f"  stored: {files} files, {size / 1024:.0f} KiB in {directory}",
        f"  environment: {_versions_line(record)}; providers "
        f"{', '.join(record['environment']['providers'])}",
        f"  check later with: heygem-diagnose regress check --golden {directory}",
    ]
    recorded = Finding("recorded", Severity.OK, f"recorded {len(record['scenarios'])} scenario(s)")
    details = {
        "golden": str(directory),
        "scenarios": list(record["scenarios"]),
        "files": files,
        "bytes": size,
        "environment": record["environment"],
    }
    return Report("regress", "heygem regress record", (recorded,), details, tuple(body))


def format_drift_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Markdown table of ``drift_table`` rows, for the matrix report."""
    lines = ["| step | largest difference | tolerance | between | |", "|---|---|---|---|---|"]
    for row in rows:
        diff = row["difference"]
        if row["identical"]:
            lines.append(f"| {row['step']} | identical | | | ok |")
            continue
        shown = "differs" if diff is None else f"{diff:.3g} {row['unit']}".strip()
        lines.append(
            f"| {row['step']} | {row['scenario']} {row['metric']}: {shown} | "
            f"{row['limit']:g} | {' vs '.join(row['between'])} | "
            f"{'exceeds' if row['exceeds'] else 'ok'} |"
        )
    return "\n".join(lines)
