"""Install one package combination into its (nox-created) virtualenv.

Two pip runs: the cell's pins together with the project's other dependencies, all under a
constraints file of the same pins (so no dependency can pull numpy 2 or another torch),
then the project itself with ``--no-deps``. A stamp in the virtualenv records what was
installed: a reused virtualenv (``nox -R``) with the same requirements skips pip entirely.
A failed install is a result: the report carries pip's last lines, nothing raises.

Runs in the nox process (standard library only).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from matrix.cells import Cell, Packages
from matrix.results import CellResult, Outcome

__all__ = ["InstallReport", "failure_records", "install", "requirements"]

log = logging.getLogger(__name__)

STAMP = "matrix-install.json"
_TAIL = 15
_PIP_TIMEOUT = 1800.0  # a CUDA torch is ~2.5 GB to fetch
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class InstallReport:
    ok: bool
    seconds: float
    reused: bool  # the stamp matched: nothing installed
    tail: tuple[str, ...] = ()  # pip's last lines on failure
    returncode: int | None = 0
    log_path: Path | None = None


def _name(requirement: str) -> str:
    match = _NAME.match(requirement)
    return match.group(1).lower().replace("_", "-") if match else requirement


def requirements(packages: Packages, project: Path) -> list[str]:
    """The cell's pins plus every other dependency the project declares."""
    pins = list(packages.pins())
    pinned = {_name(p) for p in pins} | {"onnxruntime", "onnxruntime-gpu"}
    with (project / "pyproject.toml").open("rb") as handle:
        declared = tomllib.load(handle)["project"]["dependencies"]
    return pins + [d for d in declared if _name(d) not in pinned]


def _pip(python: Path, args: list[str], log_file: Path) -> tuple[int | None, tuple[str, ...]]:
    command = [str(python), "-m", "pip", "install", "--progress-bar", "off", *args]
    with log_file.open("a", encoding="utf-8") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        try:
            code: int | None = subprocess.run(
                command, stdout=out, stderr=subprocess.STDOUT, timeout=_PIP_TIMEOUT, check=False
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
            out.write(f"pip timed out after {_PIP_TIMEOUT:g} s\n")
    lines = log_file.read_text(encoding="utf-8", errors="replace").splitlines()
    return code, tuple(line for line in lines[-_TAIL:] if line.strip())


def install(python: Path, packages: Packages, project: Path, log_file: Path) -> InstallReport:
    venv = python.parent.parent
    reqs = requirements(packages, project)
    stamp = venv / STAMP
    wanted = {"requirements": reqs, "project": str(project.resolve())}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        log.info("%s: already installed (%s)", packages.id, stamp)
        return InstallReport(ok=True, seconds=0.0, reused=True)
    stamp.unlink(missing_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.write_text("")
    constraints = venv / "matrix-constraints.txt"
    constraints.write_text("\n".join(packages.pins()) + "\n")
    started = time.perf_counter()
    code, tail = _pip(python, ["-c", str(constraints), *reqs], log_file)
    if code == 0:
        code, tail = _pip(
            python, ["-c", str(constraints), "--no-deps", "-e", str(project)], log_file
        )
    seconds = round(time.perf_counter() - started, 1)
    if code != 0:
        return InstallReport(False, seconds, False, tail, code, log_file)
    stamp.write_text(json.dumps(wanted, indent=1))
    return InstallReport(True, seconds, False, (), 0, log_file)


def failure_records(
    cells: tuple[Cell, ...], report: InstallReport, session: str | None
) -> list[CellResult]:
    """One install-failed record per selected cell: the matrix goes on."""
    why = "timed out" if report.returncode is None else f"exit {report.returncode}"
    evidence = report.tail + ((f"full log: {report.log_path}",) if report.log_path else ())
    started = datetime.now(UTC).isoformat(timespec="seconds")
    return [
        CellResult.for_cell(
            cell,
            Outcome.INSTALL_FAILED,
            cause=f"pip install failed ({why})",
            evidence=evidence,
            failed_step="install",
            started=started,
            install_s=report.seconds,
            session=session,
        )
        for cell in cells
    ]
