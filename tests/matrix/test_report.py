"""Report rendering, hypothesis verdicts and the numeric drift section, from a hand-written
results file and hand-written fingerprint files beside it (fixtures/results.fingerprints/:
ORT 1.16.3 moves the seeded generator output by 1e-4, within tolerance; the -gpu wheel
moves a face region by 2 px, beyond it; one combination failed to fingerprint, one
install-failed combination has none, and one file belongs to no combination of the
results)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from matrix.cells import Cell, Packages, Runtime
from matrix.report import VerdictStatus, build_report, main, render_html, render_markdown
from matrix.results import CellResult, Outcome, read_fingerprints, read_results

FIXTURE = Path(__file__).parent / "fixtures" / "results.jsonl"


@pytest.fixture(scope="module")
def report():
    return build_report(read_results(FIXTURE), [str(FIXTURE)], read_fingerprints(FIXTURE))


def _verdict(report, hypothesis_id):
    return next(v for v in report.verdicts if v.hypothesis.id == hypothesis_id)


def test_fixture_covers_every_outcome(report):
    assert {str(o) for o in Outcome} <= set(report.counts)
    assert report.counts["crashed"] == 3 and report.counts["install-failed"] == 4


def test_latest_record_per_cell_counts(report):
    cell = report.grid[("torch2.4.1-ort1.18.0-cpu", "w4-shm2g")]
    assert cell.outcome is Outcome.OK  # the earlier "error" line was superseded
    assert len(report.results) == 18


def test_heat_map_axes(report):
    assert report.runtimes == ("w0-shm64m", "w0-shm2g", "w4-shm64m", "w4-shm2g")
    assert report.packages[0] == "torch2.1.2-ort1.18.0-cpu"  # full matrix first, by version
    assert report.packages[-1] == "torch2.13.0-ort1.16.3-cpu"  # quick subset last


def test_shm_verdict(report):
    verdict = _verdict(report, "shm")
    assert verdict.status is VerdictStatus.CHANGES
    assert verdict.summary.startswith("shm 64 MB -> 2 GB changes the outcome")
    assert "in 3 of 6 comparable pairs" in verdict.summary
    assert "fixes 2" in verdict.summary and "moves between failures 1" in verdict.summary
    assert any("workers 4: 64m crashed" in line and "-> 2g ok" in line for line in verdict.evidence)


def test_workers_verdict(report):
    verdict = _verdict(report, "workers")
    assert verdict.status is VerdictStatus.CHANGES
    assert "num_workers 4 -> 0 changes the outcome" in verdict.summary
    assert "in 4 of 6 comparable pairs (fixes 4)" in verdict.summary
    assert any("not comparable" in line for line in verdict.evidence)


def test_ort_verdict_no_change(report):
    verdict = _verdict(report, "ort")
    assert verdict.status is VerdictStatus.NO_CHANGE
    assert verdict.summary.startswith("ORT 1.18 -> 1.16 does not change the outcome")
    assert "4 comparable pairs" in verdict.summary


def test_torch_verdict_inconclusive_when_one_side_failed_to_install(report):
    verdict = _verdict(report, "torch")
    assert verdict.status is VerdictStatus.INCONCLUSIVE
    assert "4 pair(s) not comparable" in verdict.evidence[-1]


def test_gpu_verdict(report):
    verdict = _verdict(report, "gpu")
    assert verdict.status is VerdictStatus.OBSERVED
    assert "in 4 of 4 -gpu cells" in verdict.summary
    assert "4 detected and reported as a CPU fallback" in verdict.summary
    assert "NOT flagged" not in verdict.summary
    assert "switching the wheel cpu -> gpu changes the outcome" in verdict.summary
    assert verdict.evidence[0] == "doctor: libcublasLt.so.11 not found by the dynamic loader"


def test_env_verdict(report):
    verdict = _verdict(report, "env")
    assert verdict.status is VerdictStatus.NOT_OBSERVED
    assert "all 12 cells" in verdict.summary
    assert verdict.evidence == ("OMP_NUM_THREADS: parent=2 spawn=2, forkserver=2",)


def test_env_verdict_observed_and_silent_gpu_fallback():
    def record(runtime, **values):
        cell = Cell(Packages("2.1.2", "1.16.3", "gpu"), runtime)
        return CellResult.for_cell(cell, Outcome.OK, **values)

    results = [
        record(
            Runtime(0, "2g"),
            providers_used=("CPUExecutionProvider",),
            doctor={
                "status": {"thread-env": "fail"},
                "evidence": {"thread-env": ["OMP_NUM_THREADS: parent=1 spawn=None"]},
            },
        ),
        record(
            Runtime(4, "2g"),
            providers_used=("CUDAExecutionProvider",),
            doctor={"status": {"thread-env": "ok"}},
        ),
    ]
    report = build_report(results)
    env = _verdict(report, "env")
    assert env.status is VerdictStatus.OBSERVED and "in 1 of 2 cells" in env.summary
    assert "spawn=None" in env.evidence[0]
    gpu = _verdict(report, "gpu")
    assert gpu.status is VerdictStatus.OBSERVED and "1 NOT flagged" in gpu.summary
    assert _verdict(report, "workers").status is VerdictStatus.NO_CHANGE
    for hypothesis in ("ort", "torch", "shm"):
        assert _verdict(report, hypothesis).status is VerdictStatus.NOT_TESTED


def test_markdown(report):
    text = render_markdown(report)
    assert "## Heat-map" in text and "## Hypotheses from the HeyGem reports" in text
    row = next(line for line in text.splitlines() if line.startswith("| torch2.4.1-ort1.18.0-gpu"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1].startswith("✅ ok (CPU fallback) 9.0 fps")
    assert cells[3].startswith("💥 crashed (load: shared memory exhausted")
    assert cells[4].startswith("⏸️ stalled (probe: consumer never started")
    assert "**shm 64 MB -> 2 GB changes the outcome on this machine**" in text
    assert "ERROR: No matching distribution found for torch==2.1.2" in text  # evidence
    assert "| torch2.4.1-ort1.18.0-cpu | 4 | 61.0 |" in text  # install time
    assert "| torch2.4.1-ort1.16.3-cpu | 4 | reused | 107.0 | 6.5 |" in text
    assert "| torch2.13.0-ort1.16.3-cpu | 2 | reused | 0.0 | 1.5 (failed) |" in text


def test_numeric_drift(report):
    drift = report.drift
    assert drift.packages == report.packages  # the extra fingerprint file is left out
    assert [f.packages_id for f in drift.compared] == [
        "torch2.4.1-ort1.16.3-cpu",
        "torch2.4.1-ort1.18.0-cpu",
        "torch2.4.1-ort1.18.0-gpu",
    ]
    assert drift.missing == ("torch2.1.2-ort1.18.0-cpu",)
    rows = {row["step"]: row for row in drift.rows}
    assert list(rows) == ["audio_features", "face_track", "generate", "mux"]
    assert rows["audio_features"]["identical"] and rows["mux"]["identical"]
    generate = rows["generate"]
    assert not generate["identical"] and not generate["exceeds"]
    assert generate["difference"] == pytest.approx(1e-4)
    assert generate["between"] == ["torch2.4.1-ort1.16.3-cpu", "torch2.4.1-ort1.18.0-cpu"]
    assert (
        rows["face_track"]["exceeds"]
        and "torch2.4.1-ort1.18.0-gpu" in (rows["face_track"]["between"])
    )
    assert drift.summary == (
        "3 of 5 combinations fingerprinted; beyond tolerance in "
        "face_track (2 of 4 stages identical)"
    )


def test_numeric_drift_markdown_and_html(report):
    text = render_markdown(report)
    section = text.split("## Numeric drift between versions", 1)[1].split("\n## ", 1)[0]
    assert "scenarios seeded-batch, video" in section
    assert (
        "| torch2.4.1-ort1.16.3-cpu | ok | 6.5 | torch 2.4.1, onnxruntime 1.16.3, numpy 1.26.4"
    ) in section
    assert "| torch2.1.2-ort1.18.0-cpu | not taken (none stored) |" in section
    assert "| torch2.13.0-ort1.16.3-cpu | failed: python -m matrix.fingerprint exit 1 |" in (
        section
    )
    assert "No module named 'cv2'" in section  # the failed step's evidence
    assert (
        "| face_track | video regions: 2 px | 0 | torch2.4.1-ort1.16.3-cpu vs "
        "torch2.4.1-ort1.18.0-gpu | exceeds |"
    ) in section
    assert "| audio_features | identical |" in section
    page = render_html(report)
    html_section = page.split("<h2>Numeric drift between versions</h2>", 1)[1].split("<h2>")[0]
    assert '<td class="exceeds">exceeds</td>' in html_section
    assert html_section.count('<td class="identical">') == 2
    assert "No module named &#x27;cv2&#x27;" in html_section


def test_numeric_drift_needs_two_fingerprinted_combinations(report):
    alone = build_report(report.results, fingerprints=report.drift.compared[:1])
    assert alone.drift.rows == () and "fewer than two" in (alone.drift.note or "")
    assert "No drift table: fewer than two combinations" in render_markdown(alone)
    assert "No drift table: fewer than two combinations" in render_html(alone)


def test_numeric_drift_without_numpy_says_why(report, monkeypatch):
    monkeypatch.setitem(sys.modules, "diagnostics.regress", None)  # import fails
    bare = build_report(report.results, fingerprints=report.drift.fingerprints)
    assert bare.drift.rows == () and (bare.drift.note or "").startswith("not computed")
    assert "No drift table: not computed" in render_markdown(bare)


def test_html_is_self_contained_and_escaped(report):
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched
    assert "<script" not in page  # the evidence text is escaped, not run
    assert "&lt;script &amp; injection&gt;" in page
    assert page.count('class="c"') == len(report.packages) * len(report.runtimes)
    assert "shm 64 MB -&gt; 2 GB changes the outcome on this machine" in page


def test_cli_writes_both_files(tmp_path: Path, capsys):
    assert main([str(FIXTURE), "-o", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "report.md").read_text().startswith("# heygem-harness")
    assert (tmp_path / "out" / "report.html").is_file()
    out = capsys.readouterr().out
    assert "shm 64 MB -> 2 GB changes the outcome" in out
    assert "numeric drift: 3 of 5 combinations fingerprinted; beyond tolerance in face_track" in (
        out
    )


def test_cli_selection_filters_cells(tmp_path: Path):
    assert main([str(FIXTURE), "-o", str(tmp_path), "--flavour", "gpu"]) == 0
    text = (tmp_path / "report.md").read_text()
    assert text.startswith("# heygem-harness") and "4 cells from" in text
    assert "| torch2.4.1-ort1.18.0-cpu |" not in text
    assert "| torch2.4.1-ort1.18.0-gpu | ok | 8.2 |" in text  # its fingerprints alone
    assert "No drift table: fewer than two" in text


def test_cli_errors(tmp_path: Path, capsys):
    assert main([str(tmp_path / "missing.jsonl"), "-o", str(tmp_path)]) == 2
    assert "no results file" in capsys.readouterr().err
    assert main([str(FIXTURE), "--ort", "9.9"]) == 2
