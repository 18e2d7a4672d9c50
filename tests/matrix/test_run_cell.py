"""Running cells: arguments, step supervision, unavailable cells, and one real run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from matrix.cells import Packages, SelectionError, parse_selection
from matrix.report import VerdictStatus, build_report
from matrix.results import Outcome, fingerprints_dir, read_fingerprints, read_results
from matrix.run_cell import (
    FINGERPRINT_SCENARIOS,
    CellOptions,
    in_private_shm,
    lost_batch_line,
    parse_args,
    run_cells,
    run_step,
    shm_unavailable_reason,
    version_mismatches,
)

PROJECT = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0


def test_parse_args():
    options = parse_args(
        [
            "--packages",
            "torch2.4.1-ort1.18.0-gpu",
            "--shm",
            "64m",
            "--seconds",
            "2",
            "--results",
            "r.jsonl",
        ]
    )
    assert options.packages == Packages("2.4.1", "1.18.0", "gpu")
    assert [c.id for c in options.selection.cells(options.packages)] == [
        "torch2.4.1-ort1.18.0-gpu-w0-shm64m",
        "torch2.4.1-ort1.18.0-gpu-w4-shm64m",
    ]
    assert options.seconds == 2.0 and options.log_dir == Path("logs")
    assert options.fingerprint and options.fingerprint_scenarios == ("video", "seeded-batch")
    options = parse_args(["--packages", "here", "--fingerprint-scenarios", "all"])
    assert options.fingerprint_scenarios == ()  # the child runs every scenario
    options = parse_args(
        ["--packages", "here", "--fingerprint-scenarios", "still, long", "--no-fingerprint"]
    )
    assert options.fingerprint_scenarios == ("still", "long") and not options.fingerprint
    with pytest.raises(SelectionError, match="unknown package combination"):
        parse_args(["--packages", "torch9-ort9-cpu"])
    with pytest.raises(SelectionError, match="unknown tag"):
        parse_args(["--packages", "torch2.4.1-ort1.18.0-gpu", "--tag", "nope"])


def test_version_mismatches_catch_an_upgraded_pin():
    packages = Packages("2.4.1", "1.18.0", "gpu")
    good = {"torch": "2.4.1+cu121", "onnxruntime-gpu": "1.18.0", "numpy": "1.26.4"}
    assert version_mismatches(packages, good) == []
    bad = {**good, "numpy": "2.1.0", "onnxruntime": "1.22.0"}
    problems = version_mismatches(packages, bad)
    assert any("numpy 2.1.0" in p for p in problems)
    assert any("onnxruntime 1.22.0 is installed too" in p for p in problems)


def test_private_shm_command_passes_the_size_as_an_argument():
    command = in_private_shm("64m", ["python", "-c", "print('$HOME')"])
    assert command[:3] == ["unshare", "--mount", "sh"]
    assert command[5:] == ["64m", "python", "-c", "print('$HOME')"]


def test_a_hung_step_is_killed_at_its_timeout(tmp_path: Path):
    started = time.monotonic()
    run = run_step(
        ["sh", "-c", "echo started >&2; sleep 60"],
        timeout=0.5,
        log_path=tmp_path / "step.log",
        env=os.environ,
    )
    assert run.returncode is None and time.monotonic() - started < 10
    assert run.stderr_tail == ("started",)


def test_what_a_step_leaves_running_is_counted_and_killed(tmp_path: Path):
    run = run_step(
        ["sh", "-c", 'sleep 60 & echo \'{"outcome": "ok"}\''],
        timeout=30,
        log_path=tmp_path / "step.log",
        env=os.environ,
    )
    assert run.returncode == 0 and run.json() == {"outcome": "ok"}
    assert run.leftover == 1


def test_cells_are_unavailable_without_a_private_shm(tmp_path: Path):
    options = CellOptions(
        packages=Packages("2.13.0", "1.16.3", "cpu", quick=True),
        selection=parse_selection(["--workers", "4"]),
        results=tmp_path / "results.jsonl",
        fingerprint=False,
    )
    records = run_cells(options, shm_check=lambda: "not root: no mount namespace")
    assert [r.outcome for r in records] == [Outcome.UNAVAILABLE] * 2
    assert records[0].evidence == ("not root: no mount namespace",)
    assert read_results(tmp_path / "results.jsonl") == records
    assert not fingerprints_dir(tmp_path / "results.jsonl").exists()


@pytest.mark.parametrize(
    ("scenarios", "timeout", "error", "tail"),
    [
        (("nope",), 120.0, "exit 2", "unknown regression scenario nope"),
        (FINGERPRINT_SCENARIOS, 0.05, "timed out after 0.05 s", None),
    ],
)
def test_a_failed_fingerprint_is_recorded_and_the_cells_still_run(
    tmp_path: Path, scenarios, timeout, error, tail
):
    results = tmp_path / "results.jsonl"
    options = CellOptions(
        packages=Packages("2.13.0", "1.16.3", "cpu", quick=True),
        selection=parse_selection(["--workers", "0"]),
        results=results,
        fingerprint_scenarios=scenarios,
        fingerprint_timeout=timeout,
    )
    records = run_cells(options, shm_check=lambda: "not root: no mount namespace")
    assert len(records) == 2 and read_results(results) == records
    [fingerprint] = read_fingerprints(results)
    assert fingerprint.packages_id == "torch2.13.0-ort1.16.3-cpu" and not fingerprint.ok
    assert fingerprint.record is None and (fingerprint.error or "").endswith(error)
    if tail:
        assert any(tail in line for line in fingerprint.tail), fingerprint.tail
    assert (tmp_path / "logs" / "torch2.13.0-ort1.16.3-cpu" / "fingerprint.log").is_file()


def test_a_stalled_load_names_the_lost_batch(tmp_path: Path):
    log = tmp_path / "load.log"
    log.write_text(
        "$ python -m matrix.load_probe\nTraceback (most recent call last):\n"
        '  File "multiprocessing/queues.py", line 244, in _feed\n'
        "RuntimeError: unable to allocate shared memory(shm) for file "
        "</torch_5998_2>: No space left on device (28)\n"
    )
    assert (lost_batch_line(log) or "").startswith("RuntimeError: unable to allocate shared")
    log.write_text("UserWarning: This DataLoader will create 4 worker processes\n")
    assert lost_batch_line(log) is None
    assert lost_batch_line(tmp_path / "missing.log") is None


@pytest.mark.skipif(not IS_ROOT, reason="needs root for a private /dev/shm")
def test_shm_namespace_is_available_as_root():
    assert shm_unavailable_reason() is None


@pytest.mark.slow
def test_real_cells_in_this_environment(tmp_path: Path):
    """A tiny probe and load through the real CLI: workers 0 and 2 with a 2 GB /dev/shm,
    and (as root) workers 2 with 64 MB, where the HeyGem-sized batches do not fit; and the
    combination's fingerprints (default scenarios), taken once."""
    results = tmp_path / "results.jsonl"
    runtimes = ["--workers", "0,2", "--shm", "2g,64m" if IS_ROOT else "2g"]
    command = [
        sys.executable,
        "-m",
        "matrix.run_cell",
        "--packages",
        "here",
        "--results",
        str(results),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--seconds",
        "1",
        "--load-batches",
        "8",
        "--no-warm-up",
        "--doctor-only",
        "shm",
        "--doctor-only",
        "thread-env",
        *runtimes,
    ]
    if IS_ROOT:
        command += ["--tag", "shm-2g,workers-2"]  # skips w0 at 64m: time
    done = subprocess.run(
        command, cwd=PROJECT, capture_output=True, text=True, timeout=240, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    cells = {r.runtime_id: r for r in read_results(results)}
    assert set(cells) == (
        {"w0-shm2g", "w2-shm2g", "w2-shm64m"} if IS_ROOT else {"w0-shm2g", "w2-shm2g"}
    )
    for runtime_id in ("w0-shm2g", "w2-shm2g"):
        cell = cells[runtime_id]
        assert cell.outcome is Outcome.OK, (cell.cause, cell.evidence)
        assert cell.fps and cell.fps > 0
        assert cell.providers_used == ("CPUExecutionProvider",) and not cell.cpu_fallback
        assert cell.steps["load"].detail["batches"] == 8
        assert cell.doctor["status"]["thread-env"] == "ok"
        assert cell.versions["torch"] and cell.duration_s > 0
    [fingerprint] = read_fingerprints(results)
    assert fingerprint.ok, (fingerprint.error, fingerprint.tail)
    assert fingerprint.packages_id == cells["w0-shm2g"].packages_id
    record = fingerprint.record or {}
    assert record["label"] == fingerprint.packages_id and record["frames"] is False
    assert set(record["scenarios"]) == set(FINGERPRINT_SCENARIOS)
    assert record["environment"]["versions"]["torch"] == cells["w0-shm2g"].versions["torch"]
    if IS_ROOT:
        small = cells["w2-shm64m"]
        # A full /dev/shm either kills a worker (crashed) or loses a batch to ENOSPC in a
        # worker's queue feeder, which hangs the loader (stalled): both name shared memory.
        assert small.outcome in (Outcome.CRASHED, Outcome.STALLED)
        assert small.failed_step == "load"
        assert small.cause and "shared memory exhausted" in small.cause
        assert small.steps["probe"].outcome is Outcome.OK  # 128 px crops fit in 64 MB
        assert small.doctor["status"]["shm"] == "fail"  # the doctor predicted it
        shm = next(v for v in build_report(cells.values()).verdicts if v.hypothesis.id == "shm")
        assert shm.status is VerdictStatus.CHANGES
