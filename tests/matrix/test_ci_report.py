"""Checks on the quick matrix subset's real results, as CI produces them:

    nox -s matrix_quick -- --results matrix-results/ci.jsonl
    nox -s matrix_report -- matrix-results/ci.jsonl -o matrix-results/ci-report
    MATRIX_RESULTS=matrix-results/ci.jsonl MATRIX_REPORT=matrix-results/ci-report \\
        python -m pytest tests/matrix/test_ci_report.py

Skipped unless MATRIX_RESULTS names a results file (the default test run has none).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from matrix.cells import QUICK_PACKAGES, Selection
from matrix.report import VerdictStatus, build_report
from matrix.results import Outcome, read_results

RESULTS = os.environ.get("MATRIX_RESULTS")
REPORT = os.environ.get("MATRIX_REPORT")

pytestmark = pytest.mark.skipif(not RESULTS, reason="MATRIX_RESULTS not set (CI sets it "
                                                    "after `nox -s matrix_quick`)")


@pytest.fixture(scope="module")
def report():
    assert RESULTS is not None
    return build_report(read_results(Path(RESULTS)), [RESULTS])


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
    """The doctor's /dev/shm verdict for the HeyGem-sized batch matches what happened."""
    for r in report.results:
        if not r.outcome.comparable or "shm" not in r.doctor.get("status", {}):
            continue
        load = r.steps["load"]
        shm_crash = load.outcome is Outcome.CRASHED and "shared memory" in (load.cause or "")
        assert shm_crash == (r.doctor["status"]["shm"] == "fail"), (r.cell_id, load.cause)


def test_verdicts_are_backed_by_cells(report):
    verdicts = {v.hypothesis.id: v for v in report.verdicts}
    if os.geteuid() == 0:
        for hypothesis in ("workers", "ort", "shm"):
            assert verdicts[hypothesis].status in (VerdictStatus.CHANGES,
                                                   VerdictStatus.NO_CHANGE), hypothesis
            assert verdicts[hypothesis].evidence
        # On 2 cores with 4 workers, 512x512 batches do not fit Docker's 64 MB default.
        assert verdicts["shm"].status is VerdictStatus.CHANGES
    assert verdicts["env"].status is not VerdictStatus.NOT_TESTED


@pytest.mark.skipif(not REPORT, reason="MATRIX_REPORT not set")
def test_rendered_report(report):
    assert REPORT is not None
    markdown = (Path(REPORT) / "report.md").read_text(encoding="utf-8")
    page = (Path(REPORT) / "report.html").read_text(encoding="utf-8")
    for r in report.results:
        assert r.cell_id in markdown and r.cell_id in page
    for verdict in report.verdicts:
        assert verdict.headline in markdown
