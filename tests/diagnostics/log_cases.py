"""Hand-written logs with their expected verdicts: one check for every such set."""

from __future__ import annotations

from pathlib import Path

from diagnostics.findings import Report, Severity
from diagnostics.logs import analyze_log, task_verdicts

# file: (exit code, {task: verdict}, other finding ids that must be there)
Case = tuple[int, dict[str, str], set[str]]


def check_case(path: Path, case: Case) -> Report:
    """The log's verdicts, exit code and findings are the expected ones; a healthy log has
    nothing about a task above INFO/OK; no line counts as damaged."""
    exit_code, verdicts, others = case

    report = analyze_log(path)

    assert task_verdicts(report) == verdicts
    assert report.exit_code() == exit_code
    assert others <= {f.id for f in report.findings}
    assert report.details["damage"]["lines"] == 0
    if exit_code == 0:
        assert not [
            f for f in report.findings if f.subject and f.severity in (Severity.WARN, Severity.FAIL)
        ]
    return report
