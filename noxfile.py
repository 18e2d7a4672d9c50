"""Automation: tests, lint, typecheck (more sessions join as the project grows).

Run ``nox -l`` to list sessions. Sessions reuse their virtualenvs with ``-R``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True

# The CPU build of torch; a bare `torch` requirement pulls a multi-GB CUDA build.
TORCH_CPU = "torch==2.13.0"


def _install_project(session: nox.Session) -> None:
    session.install(TORCH_CPU)
    session.install("-e", ".[dev]")


@nox.session(tags=["ci"])
def tests(session: nox.Session) -> None:
    """The test suite (pass pytest arguments after --)."""
    _install_project(session)
    session.run("pytest", *session.posargs)


@nox.session(tags=["ci"])
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5,<0.18")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(tags=["ci"])
def typecheck(session: nox.Session) -> None:
    _install_project(session)
    session.run("mypy")


BENCH_BASELINE = Path("benchmarks/baseline.json")


def _bench_compare(args: list[str]) -> list[str]:
    """Take ``--compare FILE`` / ``--no-compare`` out of ``args`` (the rest goes to pytest);
    the summary's compare arguments: the committed baseline unless told otherwise."""
    if "--no-compare" in args:
        args.remove("--no-compare")
        return []
    if "--compare" in args:
        at = args.index("--compare")
        compare = args[at : at + 2]
        del args[at : at + 2]
        return compare
    return ["--compare", str(BENCH_BASELINE)] if BENCH_BASELINE.is_file() else []


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (pytest-benchmark): JSON + Markdown summary in bench-results/, compared
    by ratio with the committed benchmarks/baseline.json (the session fails when anything
    got slower than the threshold, 1.25x after normalising by each run's transcode floor).

    ``-- --compare FILE`` compares with another file, ``-- --no-compare`` with none; other
    arguments go to pytest (``-- -k e2e``). The baseline changes only on purpose: to
    refresh it, run ``nox -s bench`` on an idle machine and copy bench-results/latest.json
    over benchmarks/baseline.json in a commit that says why (what got faster or slower and
    that it is intended). The committed file has pytest-benchmark's per-round ``data``
    arrays removed (the comparison reads only min/median/mean); a full copy works as well.
    """
    args = list(session.posargs)
    compare = _bench_compare(args)
    if compare and (len(compare) < 2 or not Path(compare[1]).is_file()):
        # Before the benchmarks run, not after half an hour of them.
        session.error(
            f"bench: --compare needs an existing pytest-benchmark JSON file, got "
            f"{compare[1] if len(compare) > 1 else 'none'}"
        )
    _install_project(session)
    session.run("mkdir", "-p", "bench-results", external=True)
    session.run(
        "pytest",
        "benchmarks",
        "-p",
        "no:cacheprovider",
        "--benchmark-json=bench-results/latest.json",
        *args,
    )
    session.run(
        "python",
        "-m",
        "benchmarks.summary",
        "bench-results/latest.json",
        "-o",
        "bench-results/summary.md",
        *compare,
    )


# --- the version matrix (matrix/; README "Version matrix") ------------------------------
# One session per package combination, each with its own reused virtualenv; the runtime
# axes (num_workers x /dev/shm) run inside it. Select with nox (`-s "matrix(ID)"`,
# `-t ort-1.18.0`, `-k 2.4.1`) or with options after `--` (`-- --ort 1.18.0 --shm 64m`).
sys.path.insert(0, str(Path(__file__).resolve().parent))  # matrix/ is stdlib-only here

from matrix import cells as matrix_cells  # noqa: E402
from matrix import install as matrix_install  # noqa: E402
from matrix import run_cell as matrix_run_cell  # noqa: E402
from matrix.results import append_results  # noqa: E402

MATRIX_RESULTS = "matrix-results/results.jsonl"


def _matrix_params(combos: tuple[matrix_cells.Packages, ...]) -> list[Any]:
    return [nox.param(p, id=p.id, tags=list(p.tags)) for p in combos]


def _run_matrix_cells(session: nox.Session, packages: matrix_cells.Packages) -> None:
    args = ["--packages", packages.id, "--session", session.name, *session.posargs]
    try:
        options = matrix_run_cell.parse_args(args)
    except ValueError as exc:
        session.error(f"matrix: {exc}")
    cells = options.selection.cells(packages)
    if not cells:
        session.skip(f"no cell of {packages.id} is selected")
    python = Path(session.bin) / "python"
    log_file = options.log_dir / packages.id / "install.log"
    session.log(f"installing {packages.id} (log: {log_file})")
    report = matrix_install.install(python, packages, Path.cwd(), log_file)
    if not report.ok:
        append_results(options.results, matrix_install.failure_records(cells, report, session.name))
        session.warn(
            f"install failed after {report.seconds:g} s; recorded as install-failed "
            f"in {options.results}:\n  " + "\n  ".join(report.tail)
        )
        session.skip(f"{packages.id}: install failed (recorded)")
    if not report.reused:
        session.log(f"installed {packages.id} in {report.seconds:g} s")
        args += ["--install-seconds", f"{report.seconds:g}"]
    session.run("python", "-m", "matrix.run_cell", *args)


@nox.session(tags=["matrix"], default=False)
@nox.parametrize("packages", _matrix_params(matrix_cells.FULL_PACKAGES))
def matrix(session: nox.Session, packages: matrix_cells.Packages) -> None:
    """The HeyGem version matrix: torch x onnxruntime x CPU/GPU wheel, 4 runtime cells each.

    ``nox -s matrix -- --ort 1.18.0 --shm 64m`` runs a subset; results are appended to
    matrix-results/results.jsonl, each combination's regression fingerprints go to
    matrix-results/results.fingerprints/ (``-- --fingerprint-scenarios all`` for every
    scenario, ``-- --no-fingerprint`` to keep the stored ones), then ``nox -s matrix_report``.
    """
    _run_matrix_cells(session, packages)


@nox.session(tags=["matrix_quick"], default=False)
@nox.parametrize("packages", _matrix_params(matrix_cells.QUICK_PACKAGES))
def matrix_quick(session: nox.Session, packages: matrix_cells.Packages) -> None:
    """The CI subset: the on-disk CPU torch with both onnxruntime CPU wheels, 4 cells each,
    plus each combination's regression fingerprints."""
    _run_matrix_cells(session, packages)


@nox.session(venv_backend="none", default=False)
def matrix_report(session: nox.Session) -> None:
    """Markdown + self-contained HTML report of the matrix results (matrix-results/report/).

    ``nox -s matrix_report -- RESULTS.jsonl -o DIR --tag quick`` for another file/subset.
    Runs in nox's own interpreter: the numeric drift section needs numpy and opencv there
    (the project's virtualenv has them); without them the section says why it is empty.
    """
    session.run(sys.executable, "-m", "matrix.report", *session.posargs)


@nox.session(tags=["ci"])
def regress(session: nox.Session) -> None:
    """Golden fingerprints: did the output change? `heygem-diagnose regress check` vs tests/golden.

    ``nox -s regress -- --update`` re-records deliberately; other options pass through
    (``-- --scenario still --json``). Performance is compared by ``nox -s bench -- --compare``.
    """
    _install_project(session)
    session.run("heygem-diagnose", "regress", "check", "--golden", "tests/golden", *session.posargs)
