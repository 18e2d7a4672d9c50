"""Automation: tests, lint, typecheck (more sessions join as the project grows).

Run ``nox -l`` to list sessions. Sessions reuse their virtualenvs with ``-R``.
"""

from __future__ import annotations

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
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session(tags=["ci"])
def typecheck(session: nox.Session) -> None:
    _install_project(session)
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (pytest-benchmark): JSON + Markdown summary in bench-results/.

    ``nox -s bench -- --compare bench-results/baseline.json`` flags regressions by ratio.
    """
    _install_project(session)
    compare: list[str] = []
    args = list(session.posargs)
    if "--compare" in args:
        at = args.index("--compare")
        compare = ["--compare", args[at + 1]]
        del args[at : at + 2]
    session.run("mkdir", "-p", "bench-results", external=True)
    session.run("pytest", "benchmarks", "-p", "no:cacheprovider",
                "--benchmark-json=bench-results/latest.json", *args)
    session.run("python", "-m", "benchmarks.summary", "bench-results/latest.json",
                "-o", "bench-results/summary.md", *compare)
