"""The dh.log analyzer names the cause a user would otherwise guess at, with evidence lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from diagnostics.logs import (
    AnalyzerConfig,
    Finding,
    LogReport,
    Severity,
    TaskReport,
    TaskState,
    analyze_log,
    format_log_report,
)
from heygem.errors import InputNotFound, InvalidOption

FIXTURES = Path(__file__).parent / "fixtures"


def _only_task(report: LogReport) -> TaskReport:
    assert len(report.tasks) == 1, [t.task_id for t in report.tasks]
    return report.tasks[0]


def _finding(findings: tuple[Finding, ...], finding_id: str) -> Finding:
    matches = [f for f in findings if f.id == finding_id]
    assert matches, f"no {finding_id!r} in {[f.id for f in findings]}"
    return matches[0]


def _lines(finding: Finding) -> list[int]:
    return [e.line for e in finding.evidence]


def test_consumer_never_took_an_item() -> None:
    report = analyze_log(FIXTURES / "consumer_never_started.log")

    task = _only_task(report)
    assert task.task_id == "1742264493"
    assert (task.sends, task.max_current_idx, task.takes) == (10, 100, 0)
    assert task.state is TaskState.FAILED
    finding = _finding(task.findings, "consumer-never-started")
    assert finding.severity is Severity.FAIL
    assert finding.title == "consumer never started or died"
    # first send, last send, the queue-full error
    assert _lines(finding) == [10, 19, 20]
    assert "60 s after the last put" in finding.detail
    fixes = " ".join(finding.fix)
    for hint in ("heygem-diagnose ps", "--shm-size=2g", "num_workers=0", "onnxruntime-gpu"):
        assert hint in fixes
    assert report.worst_severity is Severity.FAIL


def test_consumer_never_started_cites_its_start_line(tmp_path: Path) -> None:
    start = "[2025-03-18 10:20:52,300] [process.py[line:108]] [INFO] [>>> 数字人图片处理进程启动]\n"
    log = tmp_path / "dh.log"
    log.write_text(start + (FIXTURES / "consumer_never_started.log").read_text("utf-8"), "utf-8")

    finding = _finding(_only_task(analyze_log(log)).findings, "consumer-never-started")

    assert _lines(finding) == [1, 11, 20, 21]
    assert "logged its start (line 1)" in finding.detail


def test_consumer_slower_than_realtime() -> None:
    task = _only_task(analyze_log(FIXTURES / "consumer_slow.log"))

    finding = _finding(task.findings, "consumer-slower-than-realtime")
    assert finding.severity is Severity.FAIL
    assert task.takes == 15
    assert task.throughput_fps == pytest.approx(2.5, rel=0.01)
    assert 61 in _lines(finding)  # the queue-full error
    assert "below the 25 fps video rate" in finding.detail
    assert not any(f.id == "consumer-never-started" for f in task.findings)


def test_realtime_rate_is_configurable() -> None:
    config = AnalyzerConfig(video_fps=2.0)
    task = _only_task(analyze_log(FIXTURES / "consumer_slow.log", config))

    # Fast enough for 2 fps, so the queue filling up means the consumer stopped.
    finding = _finding(task.findings, "consumer-stopped")
    assert _lines(finding)[-1] == 61


def test_cpu_fallback_from_onnxruntime_lines_and_timings() -> None:
    report = analyze_log(FIXTURES / "cpu_fallback.log")

    providers = _finding(report.findings, "cpu-fallback-providers")
    assert providers.severity is Severity.FAIL
    assert _lines(providers) == [2, 3]
    task = _only_task(report)
    assert task.state is TaskState.FINISHED
    assert task.init_wh_s == pytest.approx(131.6)
    timing = _finding(task.findings, "cpu-fallback-suspected")
    assert timing.severity is Severity.WARN
    assert _lines(timing) == [7, 21]  # init_wh line, first batch done
    assert "131.6 s" in timing.detail
    assert any("LD_LIBRARY_PATH" in step for step in timing.fix)


def test_cpu_baseline_is_configurable() -> None:
    config = AnalyzerConfig(init_wh_baseline_s=20.0, first_batch_baseline_s=1.0)
    task = _only_task(analyze_log(FIXTURES / "cpu_fallback.log", config))

    assert not any(f.id == "cpu-fallback-suspected" for f in task.findings)


def test_empty_error_messages() -> None:
    task = _only_task(analyze_log(FIXTURES / "empty_error.log"))

    finding = _finding(task.findings, "empty-error-message")
    assert finding.severity is Severity.WARN
    # `[ERROR] []`, the exception its traceback names, `异常信息:[]`
    assert _lines(finding) == [13, 18, 19]
    assert "_queue.Empty" in finding.detail
    assert task.state is TaskState.FAILED
    assert _finding(task.findings, "task-failed").severity is Severity.FAIL


def test_task_never_finished() -> None:
    report = analyze_log(FIXTURES / "never_finished.log")

    task = _only_task(report)
    assert task.state is TaskState.NEVER_FINISHED
    # docker-compose prefixes and second-resolution timestamps still parse
    assert (task.sends, task.takes) == (30, 30)
    # client polling (/easy/query) is not task activity
    assert task.last_line == 64
    finding = _finding(task.findings, "task-never-finished")
    assert finding.severity is Severity.FAIL
    assert _lines(finding) == [1, 64]
    assert "300 s before the end of the log" in finding.detail
    assert "current_idx 120 of 300 frames" in finding.detail


def test_healthy_task() -> None:
    report = analyze_log(FIXTURES / "healthy.log")

    # `[24] -> chaofen` lines carry frame ids, not task ids
    task = _only_task(report)
    assert task.task_id == "1002"
    assert task.state is TaskState.FINISHED
    assert (task.sends, task.takes, task.completions) == (12, 12, 12)
    assert task.throughput_fps is not None and task.throughput_fps > 25
    assert [f.id for f in task.findings] == ["task-healthy"]
    assert report.findings == ()
    assert report.worst_severity is Severity.OK


def test_failure_message_gets_a_known_fix() -> None:
    report = analyze_log(FIXTURES / "self_logger_failed.log")

    task = _only_task(report)
    assert task.task_id == "71e6b361-29b1-47e1-bfc0-032dd8bbe56e"
    finding = _finding(task.findings, "task-failed")
    assert _lines(finding) == [5]
    assert "no final result" in finding.detail
    assert "restart the service" in finding.fix[0]


def test_json_pipeline_log() -> None:
    report = analyze_log(FIXTURES / "pipeline.jsonl")

    assert report.format == "json"
    tasks = {t.task_id: t for t in report.tasks}
    assert set(tasks) == {"job-ok", "job-stalled"}
    assert [f.id for f in tasks["job-ok"].findings] == ["task-healthy"]
    assert tasks["job-ok"].throughput_fps == pytest.approx(50.0)
    stalled = _finding(tasks["job-stalled"].findings, "consumer-never-started")
    assert 16 in _lines(stalled)
    assert "generate" in stalled.detail
    assert tasks["job-stalled"].state is TaskState.FAILED


def test_non_utf8_bytes_do_not_crash(tmp_path: Path) -> None:
    log = tmp_path / "dh.log"
    log.write_bytes(
        b"[2025-03-18 12:52:07,646] [run.py[line:147]] [INFO] [[1002] -> ffmpeg \xff\xfe]\n"
        b"\x80\x81 garbage from a crashed child\n"
        b"[2025-03-18 12:52:09,000] [run.py[line:147]] [ERROR] [[1002]\xe4\xbb\xbb\xe5]\n"
    )

    task = _only_task(analyze_log(log))

    assert task.task_id == "1002"
    assert task.state is TaskState.FAILED


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputNotFound, match="not found"):
        analyze_log(tmp_path / "nope.log")


@pytest.mark.parametrize("content", ["", "just some prose\nand more\n", "{not json}\n"])
def test_unrecognisable_file(tmp_path: Path, content: str) -> None:
    log = tmp_path / "dh.log"
    log.write_text(content, "utf-8")

    with pytest.raises(InvalidOption) as excinfo:
        analyze_log(log)

    assert excinfo.value.hint is not None and "dh.log" in excinfo.value.hint


def test_to_dict_is_json() -> None:
    report = analyze_log(FIXTURES / "consumer_never_started.log")

    data = json.loads(json.dumps(report.to_dict()))

    assert data["worst_severity"] == "fail"
    task = data["tasks"][0]
    assert task["state"] == "failed"
    assert task["worst_severity"] == "fail"
    assert task["first_ts"] == "2025-03-18T10:21:20.005000"
    assert task["events"][-1] == {
        "time": "2025-03-18T10:22:33.790000",
        "kind": "queue_full",
        "detail": "[1742264493]任务视频驱动队列满，严重阻塞，下游队列异常",
        "line": 20,
    }
    finding = task["findings"][0]
    assert finding["id"] == "consumer-never-started"
    assert [e["line"] for e in finding["evidence"]] == [10, 19, 20]


def test_text_report() -> None:
    text = format_log_report(analyze_log(FIXTURES / "consumer_never_started.log"))

    assert "Task 1742264493 [failed]" in text
    assert "send x10" in text  # the ten sends collapse into one timeline row
    assert "FAIL consumer never started or died [consumer-never-started]" in text
    assert "L20: [2025-03-18 10:22:33,790]" in text
    assert "--shm-size=2g" in text
