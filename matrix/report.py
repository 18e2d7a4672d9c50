"""Render matrix results: Markdown and a self-contained HTML page.

``python -m matrix.report [RESULTS.jsonl ...] [-o DIR] [selection options]`` writes
``DIR/report.md`` and ``DIR/report.html``: a heat-map (package combination x runtime
setting, coloured by outcome), outcome counts per combination, and for each hypothesis
from the HeyGem reports a verdict backed by the cells: pairs of cells that differ only in
that setting, and whether the outcome differs between them. The latest record of each
cell counts (results files only grow).

"Numeric drift between versions" compares the package combinations' golden-regression
fingerprints (stored beside each results file by ``run_cell``) with
``diagnostics.regress.drift_table``: per step, the largest difference between any two
combinations against the regression tolerance. That needs numpy and opencv, imported only
then; everything else is standard library, and without them the section says why it is
empty.
"""

from __future__ import annotations

import argparse
import html
import logging
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NoReturn

from heygem.providers import uses_gpu
from matrix.cells import (
    Cell,
    Packages,
    Runtime,
    Selection,
    SelectionError,
    add_selection_arguments,
    selection_from_namespace,
)
from matrix.results import (
    CellResult,
    Fingerprint,
    Outcome,
    latest_by_cell,
    read_fingerprints,
    read_results,
)

__all__ = [
    "HYPOTHESES",
    "Drift",
    "MatrixReport",
    "Verdict",
    "VerdictStatus",
    "build_report",
    "main",
    "render_html",
    "render_markdown",
]

log = logging.getLogger("matrix.report")

DEFAULT_RESULTS = Path("matrix-results/results.jsonl")
DEFAULT_OUTPUT = Path("matrix-results/report")


# --- hypotheses and verdicts ----------------------------------------------------------
@dataclass(frozen=True)
class Hypothesis:
    id: str
    title: str  # the change operators made, as the verdict names it
    claim: str  # what the HeyGem reports say
    axis: str | None = None  # "workers", "ort", "torch", "shm", "flavour"
    before: str = ""
    after: str = ""


HYPOTHESES: tuple[Hypothesis, ...] = (
    Hypothesis(
        "workers",
        "num_workers 4 -> 0",
        "lowering the DataLoader num_threads from 4 to 0 fixes the queue-full stall",
        "workers",
        "4",
        "0",
    ),
    Hypothesis(
        "ort",
        "ORT 1.18 -> 1.16",
        "downgrading onnxruntime(-gpu) from 1.18 to 1.16 fixes it",
        "ort",
        "1.18",
        "1.16",
    ),
    Hypothesis(
        "torch",
        "torch 2.4 -> 2.1",
        "downgrading torch from 2.4.1 to 2.1.2 fixes it",
        "torch",
        "2.4",
        "2.1",
    ),
    Hypothesis(
        "shm",
        "shm 64 MB -> 2 GB",
        "raising Docker's /dev/shm from 64 MB to 2 GB fixes it",
        "shm",
        "64m",
        "2g",
    ),
    Hypothesis(
        "env",
        "env vars not propagated",
        "OMP/MKL thread variables do not reach the spawned worker processes",
    ),
    Hypothesis(
        "gpu",
        "GPU unused",
        "the GPU stays idle: onnxruntime silently runs on the CPU",
        "flavour",
        "cpu",
        "gpu",
    ),
)


class VerdictStatus(StrEnum):
    CHANGES = "changes the outcome"
    NO_CHANGE = "does not change the outcome"
    OBSERVED = "observed"
    NOT_OBSERVED = "not observed"
    INCONCLUSIVE = "inconclusive"
    NOT_TESTED = "not tested"


@dataclass(frozen=True)
class Verdict:
    hypothesis: Hypothesis
    status: VerdictStatus
    headline: str  # "shm 64 MB -> 2 GB changes the outcome on this machine"
    detail: str  # "in 1 of 2 comparable pairs (fixes 1)"
    evidence: tuple[str, ...]  # the cells behind it

    @property
    def summary(self) -> str:
        return f"{self.headline} {self.detail}".strip()


def _coordinate(result: CellResult, axis: str) -> str:
    return str(getattr(result, axis))


def _matches(axis: str, wanted: str, actual: str) -> bool:
    if axis in ("torch", "ort"):  # "2.4" stands for 2.4.x
        return actual == wanted or actual.startswith(wanted + ".")
    return actual == wanted


_AXES = ("torch", "ort", "flavour", "workers", "shm")


def _context(result: CellResult, axis: str) -> str:
    """The coordinates a pair shares, e.g. 'torch 2.4.1, ORT 1.18.0 cpu, workers 4'."""
    parts = []
    if axis != "torch":
        parts.append(f"torch {result.torch}")
    if axis not in ("ort", "flavour"):
        parts.append(f"ORT {result.ort} {result.flavour}")
    elif axis == "flavour":
        parts.append(f"ORT {result.ort}")
    else:
        parts.append(result.flavour)
    if axis != "workers":
        parts.append(f"workers {result.workers}")
    if axis != "shm":
        parts.append(f"shm {result.shm}")
    return ", ".join(parts)


def _state(result: CellResult) -> str:
    text = str(result.outcome)
    if result.cause and result.outcome is not Outcome.OK:
        text += f" ({result.cause})"
    elif result.cpu_fallback:
        text += " (CPU fallback)"
    return text


def _pairs(
    results: Iterable[CellResult], hypothesis: Hypothesis
) -> list[tuple[CellResult, CellResult]]:
    """Cells identical in every other axis, one with ``before``, one with ``after``."""
    axis = hypothesis.axis
    assert axis is not None
    groups: dict[tuple[str, ...], dict[str, CellResult]] = defaultdict(dict)
    for result in results:
        key = tuple(_coordinate(result, a) for a in _AXES if a != axis)
        value = _coordinate(result, axis)
        for side, wanted in (("before", hypothesis.before), ("after", hypothesis.after)):
            if _matches(axis, wanted, value):
                groups[key][side] = result
    return [(g["before"], g["after"]) for g in groups.values() if len(g) == 2]


def axis_verdict(results: Sequence[CellResult], hypothesis: Hypothesis) -> Verdict:
    pairs = _pairs(results, hypothesis)
    comparable = [(b, a) for b, a in pairs if b.outcome.comparable and a.outcome.comparable]
    skipped = len(pairs) - len(comparable)
    axis = hypothesis.axis or ""
    lines = [
        f"{_context(b, axis)}: {hypothesis.before} {_state(b)} -> {hypothesis.after} {_state(a)}"
        for b, a in comparable
    ]
    if skipped:
        lines.append(f"{skipped} pair(s) not comparable (install-failed or unavailable cells)")
    title = hypothesis.title
    if not pairs:
        return Verdict(
            hypothesis,
            VerdictStatus.NOT_TESTED,
            f"{title}: not tested",
            "(no two cells differ only in this setting)",
            (),
        )
    if not comparable:
        return Verdict(
            hypothesis,
            VerdictStatus.INCONCLUSIVE,
            f"{title}: inconclusive",
            "(no pair where both cells ran)",
            tuple(lines),
        )
    changed = [(b, a) for b, a in comparable if b.outcome is not a.outcome]
    if not changed:
        counts = Counter(str(b.outcome) for b, _ in comparable)
        same = ", ".join(f"{o} x{n}" for o, n in sorted(counts.items()))
        return Verdict(
            hypothesis,
            VerdictStatus.NO_CHANGE,
            f"{title} does not change the outcome on this machine",
            f"({len(comparable)} comparable pairs, same outcome on both sides: {same})",
            tuple(lines),
        )
    fixed = sum(a.outcome is Outcome.OK for _, a in changed)
    broken = sum(b.outcome is Outcome.OK for b, _ in changed)
    direction = [
        f"{verb} {n}"
        for verb, n in (
            ("fixes", fixed),
            ("breaks", broken),
            ("moves between failures", len(changed) - fixed - broken),
        )
        if n
    ]
    changed_lines = tuple(
        line for (b, a), line in zip(comparable, lines, strict=False) if b.outcome is not a.outcome
    )
    return Verdict(
        hypothesis,
        VerdictStatus.CHANGES,
        f"{title} changes the outcome on this machine",
        f"in {len(changed)} of {len(comparable)} comparable pairs ({', '.join(direction)})",
        changed_lines + tuple(line for line in lines if line not in changed_lines),
    )


def env_verdict(results: Sequence[CellResult], hypothesis: Hypothesis) -> Verdict:
    checked = [r for r in results if "thread-env" in r.doctor.get("status", {})]
    title = hypothesis.title
    if not checked:
        return Verdict(
            hypothesis,
            VerdictStatus.NOT_TESTED,
            f"{title}: not tested",
            "(no cell ran the doctor's thread-env check)",
            (),
        )
    bad = [r for r in checked if r.doctor["status"]["thread-env"] in ("fail", "warn")]
    if not bad:
        sample: list[str] = next(
            (
                lines[:1]
                for r in checked
                if (lines := r.doctor.get("evidence", {}).get("thread-env"))
            ),
            [],
        )
        return Verdict(
            hypothesis,
            VerdictStatus.NOT_OBSERVED,
            f"{title}: not observed",
            f"- the thread variables the cells set reached spawn and forkserver "
            f"children in all {len(checked)} cells, so they explain no outcome here",
            tuple(sample),
        )
    outcomes = Counter(str(r.outcome) for r in bad)
    return Verdict(
        hypothesis,
        VerdictStatus.OBSERVED,
        f"{title}: observed",
        f"in {len(bad)} of {len(checked)} cells (their outcomes: "
        f"{', '.join(f'{o} x{n}' for o, n in sorted(outcomes.items()))})",
        tuple(
            f"{r.cell_id}: {line}"
            for r in bad
            for line in r.doctor.get("evidence", {}).get("thread-env", [])[:2]
        ),
    )


def gpu_verdict(results: Sequence[CellResult], hypothesis: Hypothesis) -> Verdict:
    gpu = [
        r
        for r in results
        if r.flavour == "gpu"
        and r.outcome.comparable
        and (r.providers_used or r.providers_requested)
    ]
    title = hypothesis.title
    if not gpu:
        return Verdict(
            hypothesis,
            VerdictStatus.NOT_TESTED,
            f"{title}: not tested",
            "(no -gpu wheel cell ran)",
            (),
        )
    unused = [r for r in gpu if not uses_gpu(r.providers_used)]
    fallback = [r for r in unused if r.cpu_fallback]
    wheel = axis_verdict(results, hypothesis)
    wheel_text = (
        f"; switching the wheel cpu -> gpu {wheel.status}"
        if wheel.status in (VerdictStatus.CHANGES, VerdictStatus.NO_CHANGE)
        else ""
    )
    why = next(
        (
            line
            for r in unused
            for line in r.doctor.get("evidence", {}).get("ort-cuda", [])
            if any(word in line for word in ("cannot find", "not found", "missing"))
        ),
        None,
    )
    if not unused:
        return Verdict(
            hypothesis,
            VerdictStatus.NOT_OBSERVED,
            f"{title}: not observed",
            f"- all {len(gpu)} -gpu cells ran on {gpu[0].providers_used[0]}{wheel_text}",
            wheel.evidence,
        )
    silent = len(unused) - len(fallback)
    detail = (
        f"in {len(unused)} of {len(gpu)} -gpu cells (requested "
        f"{', '.join(unused[0].providers_requested) or 'unknown'}, used "
        f"{', '.join(unused[0].providers_used) or 'unknown'}); "
        + (
            f"{len(fallback)} detected and reported as a CPU fallback"
            + (f", {silent} NOT flagged" if silent else "")
        )
        + wheel_text
    )
    evidence = (
        ((f"doctor: {why}",) if why else ())
        + tuple(
            f"{r.cell_id}: "
            + ("CPU fallback reported" if r.cpu_fallback else "GPU unused, not flagged")
            for r in unused
        )
        + wheel.evidence
    )
    return Verdict(hypothesis, VerdictStatus.OBSERVED, f"{title}: observed", detail, evidence)


def verdicts(results: Sequence[CellResult]) -> list[Verdict]:
    judge: dict[str, Callable[[Sequence[CellResult], Hypothesis], Verdict]] = {
        "env": env_verdict,
        "gpu": gpu_verdict,
    }
    return [judge.get(h.id, axis_verdict)(results, h) for h in HYPOTHESES]


# --- numeric drift --------------------------------------------------------------------
@dataclass(frozen=True)
class Drift:
    """``diagnostics.regress.drift_table`` over the fingerprinted combinations."""

    packages: tuple[str, ...]  # the report's combinations, in its order
    fingerprints: tuple[Fingerprint, ...]  # the newest of each combination that has one
    rows: tuple[Mapping[str, Any], ...]
    note: str | None  # why there are no rows, or None

    @property
    def missing(self) -> tuple[str, ...]:
        """Combinations without stored fingerprints (install failed, or never taken)."""
        taken = {f.packages_id for f in self.fingerprints}
        return tuple(p for p in self.packages if p not in taken)

    @property
    def compared(self) -> tuple[Fingerprint, ...]:
        return tuple(f for f in self.fingerprints if f.ok and f.record)

    @property
    def scenarios(self) -> tuple[str, ...]:
        return tuple(
            dict.fromkeys(s for f in self.compared for s in (f.record or {}).get("scenarios", {}))
        )

    @property
    def summary(self) -> str:
        taken = f"{len(self.compared)} of {len(self.packages)} combinations fingerprinted"
        if not self.rows:
            return f"{taken}; {self.note}"
        over = [str(r["step"]) for r in self.rows if r["exceeds"]]
        same = sum(bool(r["identical"]) for r in self.rows)
        verdict = (
            f"beyond tolerance in {', '.join(over)}" if over else "every stage within tolerance"
        )
        return f"{taken}; {verdict} ({same} of {len(self.rows)} stages identical)"


def _drift_rows(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str | None]:
    if len(records) < 2:
        return [], "fewer than two combinations have fingerprints to compare"
    try:
        from diagnostics.regress import drift_table
    except ImportError as exc:
        return [], (
            f"not computed: {exc} (render the report with a Python that has the "
            "project installed, e.g. `.venv/bin/python -m matrix.report`)"
        )
    try:
        return drift_table(records), None
    except Exception as exc:  # a malformed stored record must not cost the whole report
        log.warning("drift table failed", exc_info=True)
        return [], f"not computed: {type(exc).__name__}: {exc}"


def numeric_drift(fingerprints: Iterable[Fingerprint], packages: Sequence[str]) -> Drift:
    """The newest fingerprints of each of ``packages``, and their drift table."""
    newest: dict[str, Fingerprint] = {}
    for fingerprint in sorted(fingerprints, key=lambda f: f.started):
        newest[fingerprint.packages_id] = fingerprint
    taken = tuple(newest[p] for p in packages if p in newest)
    records = [dict(f.record) for f in taken if f.ok and f.record]
    rows, note = _drift_rows(records)
    return Drift(tuple(packages), taken, tuple(rows), note)


# --- the report model -----------------------------------------------------------------
def _shm_bytes(size: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    return int(size[:-1]) * units.get(size[-1], 1) if size[:-1].isdigit() else 0


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


def _packages_key(result: CellResult) -> tuple[object, ...]:
    return (
        "quick" in result.tags,
        _version_key(result.torch),
        _version_key(result.ort),
        result.flavour,
    )


@dataclass(frozen=True)
class MatrixReport:
    results: tuple[CellResult, ...]  # latest per cell, ordered by combination then runtime
    packages: tuple[str, ...]  # heat-map rows
    runtimes: tuple[str, ...]  # heat-map columns
    grid: Mapping[tuple[str, str], CellResult]
    verdicts: tuple[Verdict, ...]
    sources: tuple[str, ...]
    generated: str
    drift: Drift

    @property
    def counts(self) -> Counter[str]:
        return Counter(str(r.outcome) for r in self.results)


def build_report(
    results: Iterable[CellResult],
    sources: Sequence[str] = (),
    fingerprints: Iterable[Fingerprint] = (),
) -> MatrixReport:
    latest = sorted(
        latest_by_cell(results).values(),
        key=lambda r: (_packages_key(r), r.workers, _shm_bytes(r.shm)),
    )
    packages = tuple(dict.fromkeys(r.packages_id for r in latest))
    runtimes = tuple(
        dict.fromkeys(
            r.runtime_id for r in sorted(latest, key=lambda r: (r.workers, _shm_bytes(r.shm)))
        )
    )
    return MatrixReport(
        results=tuple(latest),
        packages=packages,
        runtimes=runtimes,
        grid={(r.packages_id, r.runtime_id): r for r in latest},
        verdicts=tuple(verdicts(latest)),
        sources=tuple(sources),
        generated=datetime.now(UTC).isoformat(timespec="seconds"),
        drift=numeric_drift(fingerprints, packages),
    )


def _cell_of(result: CellResult) -> Cell:
    return Cell(
        Packages(result.torch, result.ort, result.flavour, "quick" in result.tags),
        Runtime(result.workers, result.shm),
    )


# --- rendering: shared pieces ---------------------------------------------------------
_ORDER = [
    str(o)
    for o in (
        Outcome.OK,
        Outcome.STALLED,
        Outcome.CRASHED,
        Outcome.ERROR,
        Outcome.INSTALL_FAILED,
        Outcome.UNAVAILABLE,
    )
]
_SYMBOL = {
    "ok": "✅",
    "stalled": "⏸️",
    "crashed": "💥",
    "error": "❌",
    "install-failed": "📦",
    "unavailable": "➖",
}
_VERDICT_SYMBOL = {
    VerdictStatus.CHANGES: "🔀",
    VerdictStatus.NO_CHANGE: "🟰",
    VerdictStatus.OBSERVED: "👁️",
    VerdictStatus.NOT_OBSERVED: "🚫",
    VerdictStatus.INCONCLUSIVE: "❔",
    VerdictStatus.NOT_TESTED: "⬜",
}


def _label(result: CellResult) -> str:
    text = str(result.outcome)
    if result.outcome is Outcome.OK and result.cpu_fallback:
        text += " (CPU fallback)"
    if result.fps is not None and result.outcome is Outcome.OK:
        text += f" {result.fps:.1f} fps"
    return text


def _short_cause(result: CellResult) -> str:
    if result.outcome is Outcome.OK:
        return ""
    step = f"{result.failed_step}: " if result.failed_step else ""
    return f"{step}{result.cause or ''}"


def _versions(result: CellResult) -> str:
    v = result.versions
    ort = v.get("onnxruntime-gpu") or v.get("onnxruntime")
    names = (
        ("torch", v.get("torch")),
        ("ORT", ort),
        ("numpy", v.get("numpy")),
        ("opencv", v.get("opencv-python-headless")),
        ("librosa", v.get("librosa")),
        ("av", v.get("av")),
    )
    return ", ".join(f"{n} {x}" for n, x in names if x)


def _timings(report: MatrixReport) -> list[tuple[str, int, float | None, float, str]]:
    """(combination, cells, install seconds or None, cell seconds, fingerprint seconds)."""
    taken = {f.packages_id: f for f in report.drift.fingerprints}
    rows = []
    for packages_id in report.packages:
        cells = [r for r in report.results if r.packages_id == packages_id]
        installs = [r.install_s for r in cells if r.install_s]
        fingerprint = taken.get(packages_id)
        fingerprint_s = (
            ""
            if fingerprint is None
            else f"{fingerprint.seconds:.1f}" + ("" if fingerprint.ok else " (failed)")
        )
        rows.append(
            (
                packages_id,
                len(cells),
                max(installs) if installs else None,
                round(sum(r.duration_s for r in cells), 1),
                fingerprint_s,
            )
        )
    return rows


_DRIFT_INTRO = (
    "Golden-regression fingerprints (`heygem-diagnose regress`: CPU, one thread, "
    "lossless output{scenarios}), taken once per package combination "
    "since workers and /dev/shm do not change them. Per stage, in pipeline order: "
    "the largest difference between any two combinations and the regression "
    'tolerance it is judged by; "exceeds" means the output changed between '
    'those versions, "identical" that every combination agreed bit for bit.'
)


def _drift_intro(drift: Drift) -> str:
    scenarios = f"; scenarios {', '.join(drift.scenarios)}" if drift.scenarios else ""
    return _DRIFT_INTRO.format(scenarios=scenarios)


def _fingerprint_versions(fingerprint: Fingerprint) -> str:
    versions = (fingerprint.record or {}).get("environment", {}).get("versions", {})
    names = ("torch", "onnxruntime", "numpy", "opencv", "librosa", "av")
    return ", ".join(f"{n} {versions[n]}" for n in names if versions.get(n))


def _fingerprint_table(drift: Drift) -> list[tuple[str, str, str, str]]:
    """(combination, status, seconds, versions) per combination of the report."""
    taken = {f.packages_id: f for f in drift.fingerprints}
    rows = []
    for packages_id in drift.packages:
        f = taken.get(packages_id)
        rows.append(
            (packages_id, "not taken (none stored)", "", "")
            if f is None
            else (
                packages_id,
                "ok" if f.ok else f"failed: {f.error}",
                f"{f.seconds:.1f}",
                _fingerprint_versions(f),
            )
        )
    return rows


def _drift_status(row: Mapping[str, Any]) -> str:
    return "identical" if row["identical"] else ("exceeds" if row["exceeds"] else "ok")


def _drift_difference(row: Mapping[str, Any]) -> str:
    if row["identical"]:
        return "identical"
    diff = row["difference"]
    shown = "differs" if diff is None else f"{diff:.3g} {row['unit']}".strip()
    note = f" ({row['note']})" if row.get("note") else ""
    return f"{row['scenario']} {row['metric']}: {shown}{note}"


# --- Markdown -------------------------------------------------------------------------
def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(report: MatrixReport) -> str:
    out = ["# heygem-harness version matrix", ""]
    counts = report.counts
    out.append(
        f"{len(report.results)} cells from {', '.join(report.sources) or 'results'}; "
        f"generated {report.generated}. Outcomes: "
        + ", ".join(f"{o} {counts[o]}" for o in _ORDER if counts[o])
        + "."
    )
    out += [
        "",
        "## Heat-map",
        "",
        "Rows: package combinations (torch, onnxruntime version, CPU/GPU wheel); columns: "
        "DataLoader workers and /dev/shm size.",
        "",
    ]
    out.append("| combination | " + " | ".join(report.runtimes) + " |")
    out.append("|---|" + "---|" * len(report.runtimes))
    for packages_id in report.packages:
        row = []
        for runtime_id in report.runtimes:
            result = report.grid.get((packages_id, runtime_id))
            cause = f" ({_short_cause(result)})" if result and _short_cause(result) else ""
            row.append(
                "not run"
                if result is None
                else f"{_SYMBOL[str(result.outcome)]} {_md(_label(result) + cause)}"
            )
        out.append(f"| {packages_id} | " + " | ".join(row) + " |")
    out += [
        "",
        "### Outcomes per combination",
        "",
        "| combination | " + " | ".join(_ORDER) + " |",
        "|---|" + "---:|" * len(_ORDER),
    ]
    for packages_id in report.packages:
        per = Counter(str(r.outcome) for r in report.results if r.packages_id == packages_id)
        out.append(f"| {packages_id} | " + " | ".join(str(per[o] or "") for o in _ORDER) + " |")
    out += ["", "## Hypotheses from the HeyGem reports", ""]
    for verdict in report.verdicts:
        out.append(
            f"- {_VERDICT_SYMBOL[verdict.status]} **{verdict.headline}** "
            f"{verdict.detail}. _HeyGem reports: {verdict.hypothesis.claim}._"
        )
        out += [f"  - {line}" for line in verdict.evidence[:8]]
        if len(verdict.evidence) > 8:
            out.append(f"  - ... {len(verdict.evidence) - 8} more")
    out += ["", *_markdown_drift(report.drift)]
    out += [
        "",
        "## Cells",
        "",
        "| cell | outcome | cause | fps | providers used | doctor | load MiB/s | "
        "seconds | versions |",
        "|---|---|---|---:|---|---|---:|---:|---|",
    ]
    for r in report.results:
        load = r.steps.get("load")
        rate = load.detail.get("mib_per_s") if load else None
        doctor = r.doctor.get("worst") or r.doctor.get("error") or ""
        shm = r.doctor.get("status", {}).get("shm")
        out.append(
            f"| {r.cell_id} | {r.outcome} | {_md(_short_cause(r))} | "
            f"{'' if r.fps is None else f'{r.fps:.1f}'} | "
            f"{', '.join(r.providers_used)}{' (fallback)' if r.cpu_fallback else ''} | "
            f"{doctor}{f' (shm {shm})' if shm else ''} | {rate or ''} | "
            f"{r.duration_s:.1f} | {_md(_versions(r))} |"
        )
    out += [
        "",
        "## Timings",
        "",
        "| combination | cells | install s | cells s | fingerprints s |",
        "|---|---:|---:|---:|---:|",
    ]
    for packages_id, n, install_s, cells_s, fingerprint_s in _timings(report):
        out.append(
            f"| {packages_id} | {n} | {'reused' if install_s is None else install_s} "
            f"| {cells_s} | {fingerprint_s} |"
        )
    troubled = [r for r in report.results if r.outcome is not Outcome.OK or r.cpu_fallback]
    if troubled:
        out += ["", "## Evidence", ""]
        for r in troubled:
            out.append(f"### {r.cell_id}: {_state(r)}")
            out += ["", "```", *r.evidence, "```", ""]
    return "\n".join(out).rstrip() + "\n"


def _markdown_drift(drift: Drift) -> list[str]:
    out = [
        "## Numeric drift between versions",
        "",
        _drift_intro(drift),
        "",
        "| combination | fingerprints | seconds | versions |",
        "|---|---|---:|---|",
    ]
    out += [f"| {' | '.join(_md(c) for c in row)} |" for row in _fingerprint_table(drift)]
    out.append("")
    if drift.rows:
        from diagnostics.regress import format_drift_table  # importable: it made the rows

        out.append(format_drift_table(drift.rows))
    else:
        out.append(f"No drift table: {drift.note}.")
    for f in drift.fingerprints:
        if not f.ok and f.tail:
            out += ["", f"Fingerprints of {f.packages_id}: {f.error}", "", "```", *f.tail, "```"]
    return out


# --- HTML -----------------------------------------------------------------------------
_COLOURS = {
    "ok": "#2e9d4f",
    "ok-fallback": "#b5c934",
    "stalled": "#f0a020",
    "crashed": "#d9302c",
    "error": "#8e44ad",
    "install-failed": "#555",
    "unavailable": "#bbb",
    "not-run": "#fff",
}
_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:4px 8px}
th{background:#f4f4f4;text-align:left}
.heat td.c{color:#fff;text-align:center;min-width:9em;font-weight:600}
.heat td.c small{display:block;font-weight:400;opacity:.9}
.count td.n{text-align:right;min-width:4em}
.legend span{display:inline-block;padding:2px 8px;margin-right:4px;color:#fff;border-radius:3px}
.verdict{border-left:5px solid #999;padding:.4em .8em;margin:.7em 0;background:#fafafa}
.verdict.changes{border-color:#d9302c}.verdict.no-change{border-color:#2e9d4f}
.verdict.observed{border-color:#f0a020}.verdict.not-observed{border-color:#2e9d4f}
.drift td.identical,.drift td.ok{color:#2e9d4f;font-weight:600}
.drift td.exceeds{color:#d9302c;font-weight:600}
pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:12px}
"""


def _colour_key(result: CellResult | None) -> str:
    if result is None:
        return "not-run"
    if result.outcome is Outcome.OK and result.cpu_fallback:
        return "ok-fallback"
    return str(result.outcome)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _background(key: str) -> str:
    """Cell colour; light backgrounds get dark text."""
    dark_text = ";color:#222" if key in ("not-run", "unavailable", "ok-fallback") else ""
    return f"background:{_COLOURS[key]}{dark_text}"


def _heat_cell(result: CellResult | None) -> str:
    key = _colour_key(result)
    style = _background(key)
    if result is None:
        return f'<td class="c" style="{style}">not run</td>'
    tip = "\n".join([_state(result), *result.evidence[:6]])
    detail = _short_cause(result) or (f"{result.fps:.1f} fps" if result.fps else "")
    return (
        f'<td class="c" style="{style}" title="{_e(tip)}">{_e(result.outcome)}'
        f"{' · CPU fallback' if result.cpu_fallback else ''}<small>{_e(detail)}</small></td>"
    )


def _count_cell(count: int, most: int, outcome: str) -> str:
    if not count:
        return '<td class="n"></td>'
    alpha = 0.25 + 0.75 * count / max(most, 1)
    rgb = _COLOURS[outcome].lstrip("#")
    if len(rgb) == 3:  # "#555" -> "555555"
        rgb = "".join(c * 2 for c in rgb)
    r, g, b = (int(rgb[i : i + 2], 16) for i in (0, 2, 4))
    return f'<td class="n" style="background:rgba({r},{g},{b},{alpha:.2f})">{count}</td>'


def render_html(report: MatrixReport) -> str:
    counts = report.counts
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        "<title>heygem-harness version matrix</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>heygem-harness version matrix</h1>",
        f"<p>{len(report.results)} cells from {_e(', '.join(report.sources) or 'results')}"
        f"; generated {_e(report.generated)}. Outcomes: "
        + ", ".join(f"{_e(o)} {counts[o]}" for o in _ORDER if counts[o])
        + ".</p>",
        '<p class="legend">'
        + "".join(
            f'<span style="{_background(k)}">{_e(k.replace("-fallback", " (CPU fallback)"))}</span>'
            for k in _COLOURS
        )
        + "</p>",
        "<h2>Heat-map</h2><p>Rows: package combinations; columns: DataLoader workers and "
        "/dev/shm size. Hover a cell for its cause and evidence.</p>",
        '<table class="heat"><tr><th>combination</th>'
        + "".join(f"<th>{_e(r)}</th>" for r in report.runtimes)
        + "</tr>",
    ]
    for packages_id in report.packages:
        parts.append(
            f"<tr><th>{_e(packages_id)}</th>"
            + "".join(_heat_cell(report.grid.get((packages_id, r))) for r in report.runtimes)
            + "</tr>"
        )
    parts.append(
        '</table><h3>Outcomes per combination</h3><table class="count"><tr>'
        "<th>combination</th>" + "".join(f"<th>{_e(o)}</th>" for o in _ORDER) + "</tr>"
    )
    per_packages = {
        p: Counter(str(r.outcome) for r in report.results if r.packages_id == p)
        for p in report.packages
    }
    most = max((n for c in per_packages.values() for n in c.values()), default=1)
    for packages_id, per in per_packages.items():
        parts.append(
            f"<tr><th>{_e(packages_id)}</th>"
            + "".join(_count_cell(per[o], most, o) for o in _ORDER)
            + "</tr>"
        )
    parts.append("</table><h2>Hypotheses from the HeyGem reports</h2>")
    for verdict in report.verdicts:
        css = verdict.status.name.lower().replace("_", "-")
        items = "".join(f"<li>{_e(line)}</li>" for line in verdict.evidence)
        parts.append(
            f'<div class="verdict {css}"><b>{_e(verdict.headline)}</b> '
            f"{_e(verdict.detail)}.<br><i>HeyGem reports: "
            f"{_e(verdict.hypothesis.claim)}.</i>"
            + (f"<ul>{items}</ul>" if items else "")
            + "</div>"
        )
    parts += _html_drift(report.drift)
    parts.append(
        "<h2>Cells</h2><table><tr><th>cell</th><th>outcome</th><th>cause</th>"
        "<th>fps</th><th>providers used</th><th>doctor</th><th>load MiB/s</th>"
        "<th>seconds</th><th>versions</th></tr>"
    )
    for r in report.results:
        load = r.steps.get("load")
        rate = load.detail.get("mib_per_s") if load else None
        doctor = r.doctor.get("worst") or r.doctor.get("error") or ""
        shm = r.doctor.get("status", {}).get("shm")
        parts.append(
            f'<tr><td>{_e(r.cell_id)}</td><td style="color:#fff;{_background(_colour_key(r))}">'
            f"{_e(_label(r))}</td><td>{_e(_short_cause(r))}</td>"
            f"<td>{'' if r.fps is None else f'{r.fps:.1f}'}</td>"
            f"<td>{_e(', '.join(r.providers_used))}</td>"
            f"<td>{_e(doctor)}{_e(f' (shm {shm})') if shm else ''}</td><td>{rate or ''}</td>"
            f"<td>{r.duration_s:.1f}</td><td>{_e(_versions(r))}</td></tr>"
        )
    parts.append(
        "</table><h2>Timings</h2><table><tr><th>combination</th><th>cells</th>"
        "<th>install s</th><th>cells s</th><th>fingerprints s</th></tr>"
    )
    for packages_id, n, install_s, cells_s, fingerprint_s in _timings(report):
        parts.append(
            f"<tr><td>{_e(packages_id)}</td><td>{n}</td>"
            f"<td>{'reused' if install_s is None else install_s}</td>"
            f"<td>{cells_s}</td><td>{_e(fingerprint_s)}</td></tr>"
        )
    parts.append("</table>")
    troubled = [r for r in report.results if r.outcome is not Outcome.OK or r.cpu_fallback]
    if troubled:
        parts.append("<h2>Evidence</h2>")
        for r in troubled:
            parts.append(
                f"<details><summary>{_e(r.cell_id)}: {_e(_state(r))}</summary>"
                f"<pre>{_e(chr(10).join(r.evidence))}</pre></details>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_drift(drift: Drift) -> list[str]:
    parts = [
        "<h2>Numeric drift between versions</h2>",
        f"<p>{_e(_drift_intro(drift).replace('`', ''))}</p>",
        "<table><tr><th>combination</th><th>fingerprints</th><th>seconds</th>"
        "<th>versions</th></tr>",
    ]
    parts += [
        "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>"
        for row in _fingerprint_table(drift)
    ]
    parts.append("</table>")
    if not drift.rows:
        parts.append(f"<p>No drift table: {_e(drift.note)}.</p>")
    else:
        parts.append(
            '<table class="drift"><tr><th>stage</th><th>largest difference</th>'
            "<th>tolerance</th><th>between</th><th></th></tr>"
        )
        for row in drift.rows:
            limit = "" if row["identical"] else f"{row['limit']:g} {row['unit']}".strip()
            between = "" if row["identical"] else " vs ".join(row["between"])
            status = _drift_status(row)
            parts.append(
                f"<tr><td>{_e(row['step'])}</td><td>{_e(_drift_difference(row))}</td>"
                f"<td>{_e(limit)}</td><td>{_e(between)}</td>"
                f'<td class="{status}">{status}</td></tr>'
            )
        parts.append("</table>")
    for f in drift.fingerprints:
        if not f.ok:
            parts.append(
                f"<details><summary>fingerprints of {_e(f.packages_id)}: "
                f"{_e(f.error)}</summary><pre>{_e(chr(10).join(f.tail))}</pre>"
                "</details>"
            )
    return parts


# --- command line ---------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SelectionError(message)


def write_report(report: MatrixReport, output: Path) -> tuple[Path, Path]:
    output.mkdir(parents=True, exist_ok=True)
    markdown, page = output / "report.md", output / "report.html"
    markdown.write_text(render_markdown(report), encoding="utf-8")
    page.write_text(render_html(report), encoding="utf-8")
    return markdown, page


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    parser = _Parser(prog="python -m matrix.report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "results",
        nargs="*",
        type=Path,
        metavar="RESULTS.jsonl",
        help=f"results files (default {DEFAULT_RESULTS})",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"output directory ({DEFAULT_OUTPUT})",
    )
    add_selection_arguments(parser)
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
        selection: Selection = selection_from_namespace(args)
    except SelectionError as exc:
        print(f"matrix.report: error: {exc}", file=sys.stderr)
        return 2
    paths: list[Path] = args.results or [DEFAULT_RESULTS]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(
            f"matrix.report: error: no results file {', '.join(missing)} (run `nox -s "
            "matrix` or `nox -s matrix_quick` first)",
            file=sys.stderr,
        )
        return 2
    results = [r for p in paths for r in read_results(p) if selection.matches(_cell_of(r))]
    fingerprints = [f for p in paths for f in read_fingerprints(p)]
    report = build_report(results, [str(p) for p in paths], fingerprints)
    markdown, page = write_report(report, args.output)
    print(f"{len(report.results)} cells: {markdown} and {page}")  # CLI output
    for verdict in report.verdicts:
        print(f"  {verdict.summary}")
    print(f"  numeric drift: {report.drift.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
