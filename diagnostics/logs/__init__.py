"""Read a HeyGem ``dh.log`` (or heygem's own ``--log-json`` log) and name what went wrong.

The package follows the analysis: ``reading`` (bytes -> records, every layout and prefix,
damage counted), ``events`` (what a HeyGem line means), ``tasks`` (which lines belong to
which task, how each ended), then the rules judged by HeyGem's mechanics (``config`` holds
its numbers): ``pace`` (batch cost, consumer pace, queue waits), ``verdicts`` (one per
task), ``causes`` (why a task failed, from the lines around it), ``rules`` (every finding),
``advice`` (fixes from the versions the log quotes), and ``render`` (the one ``Report``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from diagnostics.findings import Report
from diagnostics.logs.config import AnalyzerConfig
from diagnostics.logs.events import classify
from diagnostics.logs.reading import read_log
from diagnostics.logs.render import TaskResult, build_report
from diagnostics.logs.rules import Context, log_findings, pace, task_findings
from diagnostics.logs.tasks import build_timeline

__all__ = ["AnalyzerConfig", "analyze_log", "task_verdicts"]

_LOG = logging.getLogger(__name__)


def analyze_log(path: Path, config: AnalyzerConfig | None = None) -> Report:
    """Analyse one log file.

    Raises ``InputNotFound`` when the file does not exist or cannot be read, and
    ``InvalidOption`` when it holds no log record at all (the CLI's exit 2). Everything
    else, damage included, is a finding.
    """
    config = config or AnalyzerConfig()
    log = read_log(Path(path))
    events = [event for record in log.records for event in classify(record)]
    timeline = build_timeline(log.records, events)
    ctx = Context(config, log, timeline, {id(r): i for i, r in enumerate(log.records)})
    results = []
    for task in timeline.tasks:
        facts = pace(task, ctx) if task.events[0].record.data is None else None
        results.append(TaskResult(task, facts, tuple(task_findings(task, facts, ctx))))
    log_wide = log_findings(ctx, [r.findings for r in results])
    _LOG.debug(
        "%s: %s, %d records, %d tasks", path, log.format, len(log.records), len(timeline.tasks)
    )
    return build_report(log, timeline, results, log_wide)


def task_verdicts(report: Report) -> dict[str, str]:
    """Each task's verdict (its first finding's id: ``task-finished``, ``queue-full``...),
    by task id."""
    verdicts: dict[str, str] = {}
    for finding in report.findings:
        if finding.subject is not None:
            verdicts.setdefault(finding.subject, finding.id)
    return verdicts
