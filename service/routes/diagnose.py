"""Diagnosis for the page's Diagnose tab: the environment doctor, the live worker
processes, a HeyGem ``dh.log`` analysis, and the latest matrix and benchmark reports.

Each answers with the one diagnosis shape (``diagnostics.findings.Report.to_dict()``:
tool, title, worst, findings with evidence and fixes, plus the tool's details). The
doctor, the processes and the reports show the server's internals (versions, paths,
command lines) and need an admin key (``require_admin``); analysing a log someone uploads
shows only that log.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Request, UploadFile
from pydantic import BaseModel, ConfigDict, Field

from service.deps import AdminDep, ClientDep, ServicesDep
from service.errors import CLIENT_NAMES_KEY
from service.media import store_stream
from service.models import ErrorResponse, WorkerStatus
from service.web.state import WebDep

router = APIRouter(prefix="/v1/diagnose", tags=["diagnose"])

LOG_MAX_BYTES = 64 * 1024 * 1024  # weeks of dh.log; cut a bigger one to the incident
REPORT_MAX_CHARS = 256 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 413, 422, 500)
}


class FindingInfo(BaseModel):
    id: str
    severity: str = Field(description="info, ok, warn or fail")
    title: str
    evidence: list[str]
    fix: str | None = None
    subject: str | None = None


class Diagnosis(BaseModel):
    """``diagnostics.findings.Report`` as JSON: the tool's own details sit beside these."""

    model_config = ConfigDict(extra="allow")

    tool: str
    title: str
    worst: str = Field(description="the most serious severity found")
    exit_code: int
    findings: list[FindingInfo]


class DoctorAnswer(BaseModel):
    report: Diagnosis
    checked_at: datetime
    seconds: float = Field(description="how long the doctor took")


class ProcessesAnswer(BaseModel):
    workers: list[WorkerStatus] = Field(description="the executor's view of its workers")
    report: Diagnosis = Field(description="`heygem-diagnose ps` of this server's process tree")


class ReportFile(BaseModel):
    name: str = Field(description="the file, relative to where reports are looked for")
    modified: datetime
    markdown: str
    truncated: bool


class ReportsAnswer(BaseModel):
    looked_in: str
    matrix: ReportFile | None = Field(default=None, description="latest `nox -s matrix_report`")
    benchmarks: ReportFile | None = Field(default=None, description="latest `nox -s bench`")


@router.get(
    "/doctor",
    response_model=DoctorAnswer,
    responses=_ERRORS,
    summary="The environment doctor's report (heygem-diagnose env), admin only",
)
def doctor(
    web: WebDep, caller: AdminDep, refresh: Annotated[bool, Query()] = False
) -> DoctorAnswer:
    run = web.tools.doctor(refresh)
    return DoctorAnswer(
        report=Diagnosis.model_validate(run.report),
        checked_at=datetime.fromtimestamp(run.finished_at, UTC),
        seconds=round(run.seconds, 2),
    )


@router.get(
    "/processes",
    response_model=ProcessesAnswer,
    responses=_ERRORS,
    summary="This server's processes: states, CPU, RSS, shared memory, zombies; admin only",
)
def processes(services: ServicesDep, caller: AdminDep) -> ProcessesAnswer:
    from dataclasses import asdict

    from diagnostics.inspect import inspect_process_tree, process_report

    tree = inspect_process_tree(os.getpid(), cpu_interval=0.2)
    report = process_report([tree])
    return ProcessesAnswer(
        workers=[WorkerStatus(**asdict(w)) for w in services.executor.workers()],
        report=Diagnosis.model_validate(report.to_dict()),
    )


@router.post(
    "/log",
    response_model=Diagnosis,
    responses=_ERRORS,
    summary="Analyse an uploaded HeyGem dh.log (heygem-diagnose log): findings and task timelines",
)
def analyse_log(
    services: ServicesDep,
    caller: ClientDep,
    request: Request,
    file: Annotated[UploadFile, File(description="HeyGem's dh.log, or `docker logs -t` output")],
) -> Diagnosis:
    from diagnostics.logs import analyze_log

    client_name = Path(file.filename or "").name[:200] or "the log"
    with tempfile.TemporaryDirectory(dir=services.settings.data_dir, prefix="log-") as tmp:
        path = Path(tmp) / (_SAFE_NAME.sub("_", client_name)[:100] or "dh.log")
        request.scope[CLIENT_NAMES_KEY] = {str(path): client_name, tmp: "the upload"}
        store_stream(file.file, path, max_bytes=LOG_MAX_BYTES, what=client_name)
        text = json.dumps(analyze_log(path).to_dict(), ensure_ascii=False)
        data = json.loads(services.redactor.text(text, request.scope[CLIENT_NAMES_KEY]))
    return Diagnosis.model_validate(data)


@router.get(
    "/reports",
    response_model=ReportsAnswer,
    responses=_ERRORS,
    summary="The latest version-matrix report and benchmark summary, if present; admin only",
)
def reports(services: ServicesDep, caller: AdminDep) -> ReportsAnswer:
    root = services.settings.reports_dir or Path.cwd()
    matrix = sorted(
        root.glob("matrix-results/*/report.md"), key=lambda p: p.stat().st_mtime, reverse=True
    )
    bench = root / "bench-results" / "summary.md"
    return ReportsAnswer(
        looked_in=str(root),
        matrix=_report_file(matrix[0], root) if matrix else None,
        benchmarks=_report_file(bench, root) if bench.is_file() else None,
    )


def _report_file(path: Path, root: Path) -> ReportFile:
    text = path.read_text(encoding="utf-8", errors="replace")
    return ReportFile(
        name=str(path.relative_to(root)),
        modified=datetime.fromtimestamp(path.stat().st_mtime, UTC),
        markdown=text[:REPORT_MAX_CHARS],
        truncated=len(text) > REPORT_MAX_CHARS,
    )
