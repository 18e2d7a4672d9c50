"""Checks on the quick matrix subset's real results, as CI produces them:

    nox -s matrix_quick -- --results matrix-results/ci.jsonl
    nox -s matrix_report -- matrix-results/ci.jsonl -o matrix-results/ci-report
    MATRIX_RESULTS=matrix-results/ci.jsonl MATRIX_REPORT=matrix-results/ci-report \\
        python -m pytest tests/matrix/test_ci_report.py

Skipped unless MATRIX_RESULTS names a results file (the default test run has none). The
combinations' fingerprints are read from beside it (``ci.fingerprints/``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from diagnostics.regress_scenarios import STEPS
from matrix.cells import QUICK_PACKAGES, Selection
from matrix.report import VerdictStatus, build_report
from matrix.results import Outcome, read_fingerprints, read_results
from matrix.run_cell import FINGERPRINT_SCENARIOS

RESULTS = os.environ.get("MATRIX_RESULTS")
REPORT = os.environ.get("MATRIX_REPORT")

pytestmark = pytest.mark.skipif(
    not RESULTS, reason="MATRIX_RESULTS not set (CI sets it after `nox -s matrix_quick`)"
)


@pytest.fixture(scope="module")
def report():
    assert RESULTS is not None
    return build_report(read_results(Path(RESULTS)), [RESULTS], read_fingerprints(Path(RESULTS)))


def test_every_quick_cell_ran(report):
    expected = {c.id for c in Selection().select(QUICK_PACKAGES)}
    assert {r.cell_id for r in report.results} >= expected
    quick = [r for r in report.results if r.cell_id in expected]
    assert not [r.cell_id for r in quick if r.outcome is Outcome.INSTALL_FAILED]
    if os.geteuid() == 0:
        assert not [r.cell_id for r in quick if r.outcome is Outcome.UNAVAILABLE]
    else:
        assert all(r.outcome is Outcome.UNAVAILABLE for r in quick)


def test_cells_ran_the_pinned_versions(report):
    for r in report.results:
        if not r.outcome.comparable:
            continue
        assert (r.versions["torch"] or "").startswith(r.torch), r.cell_id
        assert r.versions["onnxruntime"] == r.ort, r.cell_id
        assert (r.versions["numpy"] or "").startswith("1."), r.cell_id


def test_outcomes_are_explained(report):
    for r in report.results:
        if r.outcome is Outcome.OK:
            assert r.fps and r.fps > 0, r.cell_id
            assert r.providers_used == ("CPUExecutionProvider",), r.cell_id
            assert not r.cpu_fallback, r.cell_id
        else:
            assert r.cause and r.evidence and r.failed_step, r.cell_id


def test_doctor_prediction_agrees_with_the_load(report):
    """The doctor's /dev/shm verdict for the HeyGem-sized batch matches what happened. A
    full /dev/shm crashes the load or, when the worker's queue feeder loses the batch,
    stalls it (a race): either way the cause names shared memory."""
    for r in report.results:
        if not r.outcome.comparable or "shm" not in r.doctor.get("status", {}):
            continue
        load = r.steps["load"]
        shm_failure = load.outcome in (Outcome.CRASHED, Outcome.STALLED) and (
            "shared memory" in (load.cause or "")
        )
        assert shm_failure == (r.doctor["status"]["shm"] == "fail"), (r.cell_id, load.cause)


def test_verdicts_are_backed_by_cells(report):
    verdicts = {v.hypothesis.id: v for v in report.verdicts}
    if os.geteuid() == 0:
        for hypothesis in ("workers", "ort", "shm"):
            assert verdicts[hypothesis].status in (
                VerdictStatus.CHANGES,
                VerdictStatus.NO_CHANGE,
            ), hypothesis
            assert verdicts[hypothesis].evidence
        # On 2 cores with 4 workers, 512x512 batches do not fit Docker's 64 MB default.
        assert verdicts["shm"].status is VerdictStatus.CHANGES
    assert verdicts["env"].status is not VerdictStatus.NOT_TESTED


def test_every_combination_was_fingerprinted(report):
    """Fingerprints depend on neither root nor /dev/shm: every quick combination has them."""
    quick = {p.id: p for p in QUICK_PACKAGES}
    taken = {f.packages_id: f for f in report.drift.fingerprints}
    assert set(taken) >= set(quick)
    for packages_id, packages in quick.items():
        fingerprint = taken[packages_id]
        assert fingerprint.ok, (packages_id, fingerprint.error, fingerprint.tail)
        record = fingerprint.record or {}
        assert record["label"] == packages_id
        assert set(record["scenarios"]) == set(FINGERPRINT_SCENARIOS)
        assert record["environment"]["versions"]["onnxruntime"] == packages.ort
        assert fingerprint.seconds < 120, packages_id  # a few seconds expected


def test_numeric_drift_between_the_ort_versions(report):
    """The video scenario runs every regression step; the matrix's ORT versions agree within
    the regression tolerances (the README says so: a failure here is a real output change)."""
    steps = [row["step"] for row in report.drift.rows]
    assert steps == list(STEPS)
    packages = set(report.packages)
    for row in report.drift.rows:
        assert row["identical"] or set(row["between"]) <= packages, row
        assert not row["exceeds"], row


@pytest.mark.skipif(not REPORT, reason="MATRIX_REPORT not set")
def test_rendered_report(report):
    assert REPORT is not None
    markdown = (Path(REPORT) / "report.md").read_text(encoding="utf-8")
    page = (Path(REPORT) / "report.html").read_text(encoding="utf-8")
    for r in report.results:
        assert r.cell_id in markdown and r.cell_id in page
    for verdict in report.verdicts:
        assert verdict.headline in markdown
    drift_md = markdown.split("## Numeric drift between versions\n", 1)[1].split("\n## ")[0]
    drift_html = page.split("<h2>Numeric drift between versions</h2>", 1)[1].split("<h2>")[0]
    assert "No drift table" not in drift_md and "No drift table" not in drift_html
    for row in report.drift.rows:
        assert f"| {row['step']} |" in drift_md and f"<td>{row['step']}</td>" in drift_html
