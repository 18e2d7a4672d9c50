"""Installing a package combination: requirements, the reuse stamp, failure as a result."""

from __future__ import annotations

import stat
from pathlib import Path

from matrix.cells import Packages, parse_selection
from matrix.install import failure_records, install, requirements
from matrix.results import Outcome

PROJECT = Path(__file__).resolve().parents[2]


def _fake_python(tmp_path: Path, script: str) -> Path:
    """A 'python' in a venv layout that runs ``script`` instead of pip."""
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\n" + script)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return python


def test_requirements_pin_the_cell_and_keep_the_other_dependencies():
    cpu = requirements(Packages("2.4.1", "1.18.0", "cpu"), PROJECT)
    assert cpu[:3] == ["numpy<2", "torch==2.4.1", "onnxruntime==1.18.0"]
    assert "opencv-python-headless==4.10.0.84" in cpu
    assert any(r.startswith("onnx>=") for r in cpu)  # not pinned: from pyproject
    assert not any(r.startswith(("torch>", "numpy>", "onnxruntime>")) for r in cpu)
    gpu = requirements(Packages("2.4.1", "1.18.0", "gpu"), PROJECT)
    assert "onnxruntime-gpu==1.18.0" in gpu
    assert not any(r.startswith("onnxruntime") and "gpu" not in r for r in gpu)


def test_failed_install_is_recorded_with_pips_last_lines(tmp_path: Path):
    python = _fake_python(
        tmp_path,
        'echo "Collecting torch==2.1.2"\n'
        'echo "ERROR: No matching distribution found for '
        'torch==2.1.2" >&2\nexit 1\n',
    )
    packages = Packages("2.1.2", "1.16.3", "cpu")
    report = install(python, packages, PROJECT, tmp_path / "logs" / "install.log")
    assert not report.ok and report.returncode == 1 and not report.reused
    assert report.tail[-1] == "ERROR: No matching distribution found for torch==2.1.2"
    assert not (tmp_path / "venv" / "matrix-install.json").exists()

    cells = parse_selection(["--shm", "2g"]).cells(packages)
    records = failure_records(cells, report, "matrix(torch2.1.2-ort1.16.3-cpu)")
    assert [r.cell_id for r in records] == [
        "torch2.1.2-ort1.16.3-cpu-w0-shm2g",
        "torch2.1.2-ort1.16.3-cpu-w4-shm2g",
    ]
    assert all(r.outcome is Outcome.INSTALL_FAILED for r in records)
    assert records[0].cause == "pip install failed (exit 1)"
    assert "ERROR: No matching distribution found for torch==2.1.2" in records[0].evidence
    assert records[0].started  # when it failed


def test_a_reused_venv_with_the_same_requirements_skips_pip(tmp_path: Path):
    calls = tmp_path / "calls"
    python = _fake_python(tmp_path, f'echo "$@" >> {calls}\nexit 0\n')
    packages = Packages("2.13.0", "1.16.3", "cpu", quick=True)
    first = install(python, packages, PROJECT, tmp_path / "install.log")
    assert first.ok and not first.reused
    assert len(calls.read_text().splitlines()) == 2  # dependencies, then the project
    assert "--no-deps -e" in calls.read_text().splitlines()[1]
    again = install(python, packages, PROJECT, tmp_path / "install.log")
    assert again.ok and again.reused
    assert len(calls.read_text().splitlines()) == 2
    other = install(
        python, Packages("2.13.0", "1.18.0", "cpu", quick=True), PROJECT, tmp_path / "install.log"
    )
    assert other.ok and not other.reused  # different pins: installs again
