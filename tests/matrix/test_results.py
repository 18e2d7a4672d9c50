"""Result records: one JSON line per cell, appended, read back tolerantly; and the
per-combination fingerprint files beside them."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from matrix.cells import Cell, Packages, Runtime
from matrix.results import (
    CellResult,
    Fingerprint,
    Outcome,
    StepResult,
    append_results,
    fingerprints_dir,
    latest_by_cell,
    read_fingerprints,
    read_results,
    worst,
    write_fingerprint,
)

CELL = Cell(Packages("2.4.1", "1.18.0", "gpu"), Runtime(4, "64m"))


def _record(outcome: Outcome = Outcome.OK, **values) -> CellResult:
    return CellResult.for_cell(CELL, outcome, **values)


def test_record_round_trips_through_json(tmp_path: Path):
    record = _record(
        Outcome.CRASHED,
        cause="shared memory exhausted (SIGBUS)",
        evidence=("line 1", "line 2"),
        failed_step="load",
        fps=2.5,
        providers_requested=("CUDAExecutionProvider",),
        providers_used=("CPUExecutionProvider",),
        cpu_fallback=True,
        versions={"torch": "2.4.1+cu121", "onnxruntime-gpu": "1.18.0", "numpy": "1.26.4"},
        doctor={"worst": "fail", "status": {"shm": "fail"}},
        steps={
            "probe": StepResult(Outcome.OK, seconds=9.0),
            "load": StepResult(Outcome.CRASHED, "shm", ("x",), 3.0, {"batches": 0}),
        },
        duration_s=12.0,
        install_s=61.5,
        started="2026-11-23T10:00:00+00:00",
    )
    line = record.to_json()
    assert "\n" not in line
    data = json.loads(line)
    assert data["outcome"] == "crashed" and data["cell_id"] == "torch2.4.1-ort1.18.0-gpu-w4-shm64m"
    assert data["steps"]["load"]["outcome"] == "crashed"
    assert CellResult.from_dict(data) == record


def test_append_and_read(tmp_path: Path):
    path = tmp_path / "deep" / "results.jsonl"
    append_results(path, [_record()])
    append_results(path, [_record(Outcome.STALLED, cause="stage 'load' made no progress")])
    records = read_results(path)
    assert [r.outcome for r in records] == [Outcome.OK, Outcome.STALLED]
    assert len(path.read_text().splitlines()) == 2


def test_unparseable_lines_are_skipped_with_a_warning(tmp_path: Path, caplog):
    path = tmp_path / "results.jsonl"
    append_results(path, [_record()])
    with path.open("a") as handle:
        handle.write('{"torch": "2.4.1", "outco\n\n{"outcome": "ok"}\n')
    append_results(path, [_record(Outcome.CRASHED)])
    with caplog.at_level(logging.WARNING, logger="matrix.results"):
        records = read_results(path)
    assert [r.outcome for r in records] == [Outcome.OK, Outcome.CRASHED]
    assert sum("does not parse" in m for m in caplog.messages) == 2


def test_minimal_hand_written_record_gets_defaults():
    record = CellResult.from_dict(
        {
            "torch": "2.1.2",
            "ort": "1.16.3",
            "flavour": "cpu",
            "workers": 0,
            "shm": "2g",
            "outcome": "install-failed",
            "some_future_field": 1,
        }
    )
    assert record.cell_id == "torch2.1.2-ort1.16.3-cpu-w0-shm2g"
    assert record.outcome is Outcome.INSTALL_FAILED and not record.outcome.comparable
    assert record.fps is None and record.steps == {}


def test_latest_record_of_each_cell_wins():
    first, second = _record(Outcome.ERROR), _record(Outcome.OK)
    other = CellResult.for_cell(Cell(CELL.packages, Runtime(0, "2g")), Outcome.OK)
    latest = latest_by_cell([first, other, second])
    assert latest[CELL.id] is second
    assert list(latest) == [other.cell_id, CELL.id]


def test_worst_outcome():
    assert worst([Outcome.OK, Outcome.STALLED, Outcome.CRASHED]) is Outcome.CRASHED
    assert worst([Outcome.OK, Outcome.ERROR]) is Outcome.ERROR
    assert worst([]) is Outcome.OK


def test_fingerprints_live_beside_their_results_file(tmp_path: Path, caplog):
    results = tmp_path / "ci.jsonl"
    assert fingerprints_dir(results) == tmp_path / "ci.fingerprints"
    assert read_fingerprints(results) == []  # none taken yet
    ok = Fingerprint(
        "torch2.13.0-ort1.16.3-cpu",
        True,
        6.2,
        "2026-11-23T10:00:00+00:00",
        ("video", "seeded-batch"),
        record={"kind": "heygem-regress", "scenarios": {}},
    )
    failed = Fingerprint(
        "torch2.13.0-ort1.18.0-cpu",
        False,
        300.0,
        "2026-11-23T10:05:00+00:00",
        (),
        error="timed out after 300 s",
        tail=("loading ...",),
    )
    path = write_fingerprint(results, ok)
    assert path == tmp_path / "ci.fingerprints" / "torch2.13.0-ort1.16.3-cpu.json"
    write_fingerprint(results, failed)
    write_fingerprint(results, failed)  # a re-run replaces the combination's file
    (fingerprints_dir(results) / "broken.json").write_text('{"packages_id": ')
    with caplog.at_level(logging.WARNING, logger="matrix.results"):
        assert read_fingerprints(results) == [ok, failed]
    assert any("broken.json" in m and "does not parse" in m for m in caplog.messages)
    assert not list(fingerprints_dir(results).glob("*.part"))
