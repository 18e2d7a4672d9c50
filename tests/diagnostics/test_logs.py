"""The dh.log analyzer on real and reconstructed HeyGem logs: the verdict a user needs, with
the evidence lines and a fix derived from what the log says.

Fixture sources (tests/diagnostics/fixtures/SOURCES.md): healthy_gpu_v100.log and
real_three_runs.log are verbatim excerpts of a real dh.log (HeyGem-Linux-Python-Hack,
https://github.com/windcloudai/HeyGem-Linux-Python-Hack/blob/9ae9da4204274b2f8ac735e9f105b41a504f9139/log/dh.log);
init_wh_timeout.log quotes HeyGem-Linux-Python-Hack issue 48, restart_mid_task.log Duix-Avatar
issue 302, cuda12_cudnn9.log HeyGem-Linux-Python-Hack issue 54, incident_queue_full.log the
incident line of issue 13; the lines around those quotes are reconstructed from HeyGem's
trans_dh_service.py. The other fixtures are synthetic.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from diagnostics.findings import Finding, Report, Severity
from diagnostics.logs import AnalyzerConfig, analyze_log, task_verdicts
from heygem.errors import InputNotFound, InvalidOption

FIXTURES = Path(__file__).parent / "fixtures"


def _lines(finding: Finding) -> list[int]:
    return [int(m[1]) for e in finding.evidence if (m := re.match(r"L(\d+): ", e))]


def _only(report: Report, finding_id: str, subject: str | None = None) -> Finding:
    found = [f for f in report.findings if f.id == finding_id and f.subject == subject]
    assert len(found) == 1, [(f.id, f.subject) for f in report.findings]
    return found[0]


def _problems(report: Report) -> list[tuple[str, str]]:
    return [
        (f.id, f.severity.value)
        for f in report.findings
        if f.severity in (Severity.WARN, Severity.FAIL)
    ]


def _task(report: Report, label: str) -> dict:
    tasks = {t["label"]: t for t in report.details["tasks"]}
    return tasks[label]


# --- the cases of issue 13 ------------------------------------------------------------------
def test_incident_excerpt_without_source_field_is_read() -> None:
    report = analyze_log(FIXTURES / "incident_queue_full.log")

    assert report.exit_code() == 1
    assert task_verdicts(report) == {"20251109172931": "consumer-never-started"}
    finding = _only(report, "consumer-never-started", "20251109172931")
    assert finding.severity is Severity.FAIL
    # first send, last send, HeyGem's queue-full error
    assert _lines(finding) == [14, 23, 26]
    assert "put 10 batches" in finding.title and "exactly the queue's 10 slots" in finding.title
    assert "60 s after the last put" in finding.title
    task = _task(report, "20251109172931")
    # The quoted line (current_idx:3, no source field) is one of the ten sends.
    assert (task["sends"], task["max_current_idx"], task["takes"]) == (10, 10, 0)
    assert task["longest_queue_wait_fraction"] == pytest.approx(1.0, abs=0.01)


def test_healthy_gpu_log_with_a_warm_up_batch_is_healthy() -> None:
    report = analyze_log(FIXTURES / "healthy_gpu_v100.log")

    assert report.exit_code() == 0
    assert _problems(report) == []
    assert task_verdicts(report) == {"1002": "task-finished"}
    task = _task(report, "1002")
    # By hand from the excerpt: frames 4 -> 148 finished between 12:52:31.071 and 48.098.
    assert task["fps"] == pytest.approx((148 - 4) / (48.098 - 31.071), rel=0.01)
    assert task["warmup_batch_cost_s"] == pytest.approx(6.9486, abs=0.001)
    assert task["steady_batch_cost_s"] == pytest.approx(0.455, abs=0.005)
    # The producer waited for the warm-up batch: from send 44 (24.232) to take 8 (31.116).
    assert task["longest_queue_wait_s"] == pytest.approx(31.116 - 24.232, abs=0.01)
    pace = _only(report, "throughput", "1002")
    assert pace.severity is Severity.INFO and "slower than real time" in pace.title
    assert "warm-up" in _only(report, "batch-cost", "1002").title


def test_damaged_lines_are_damage_not_a_failure() -> None:
    clean = analyze_log(FIXTURES / "healthy_gpu_v100.log")
    damaged = analyze_log(FIXTURES / "damaged_healthy.log")

    assert damaged.exit_code() == 0
    assert _problems(damaged) == []
    assert task_verdicts(damaged) == task_verdicts(clean)
    # Frame ids, not line counts: the lost and glued lines do not change the pace.
    assert _task(damaged, "1002")["fps"] == pytest.approx(_task(clean, "1002")["fps"], rel=1e-6)
    finding = _only(damaged, "damaged-lines")
    assert finding.severity is Severity.INFO
    damage = damaged.details["damage"]
    assert damage["lines"] == 5
    assert damage["nul"] >= 1 and damage["glued"] == 1 and damage["cut"] == 1
    assert damage["invalid_text"] == 2


def test_restart_mid_task_interrupts_it() -> None:
    report = analyze_log(FIXTURES / "restart_mid_task.log")

    task = "7e7f28d2-9910-4fe9-8062-4c4b5f2d34bc"
    assert task_verdicts(report) == {task: "task-interrupted"}
    finding = _only(report, "task-interrupted", task)
    assert "interrupted by a service restart at 10:27:33" in finding.title
    assert "current_idx 24 of 560" in finding.title
    assert _lines(finding)[-1] == 40  # the second `TransDhTask init`
    assert "started 2 times" in _only(report, "service-restarts").title
    assert report.exit_code() == 1


def test_queue_empty_and_task_result_name_the_init_wh_timeout() -> None:
    report = analyze_log(FIXTURES / "init_wh_timeout.log")

    finding = _only(report, "init-wh-timeout", "1004")
    assert finding.title == (
        "task 1004: init_wh did not answer within 10 s (it took 14.0 s; init_wh's own cost "
        "6.9 s): the task failed with an empty message; the init_wh process itself only "
        "started at 17:42:30, after the task was submitted"
    )
    evidence = "\n".join(finding.evidence)
    for shown in (
        "_queue.Empty",
        "task_result = (<Status.error: 3>",
        "init_wh result",
        "异常信息:[]",
    ):
        assert shown in evidence
    assert finding.fix is not None and "10 s" in finding.fix
    assert report.exit_code() == 1


def test_fix_follows_the_cuda_and_cudnn_the_log_requires() -> None:
    report = analyze_log(FIXTURES / "cuda12_cudnn9.log")

    finding = _only(report, "cpu-fallback")
    assert finding.severity is Severity.FAIL
    assert "CUDA 12 + cuDNN 9" in finding.title
    assert _lines(finding) == [6, 7]
    assert finding.fix is not None
    assert "CUDA 12.x and cuDNN 9.x" in finding.fix and "libcudnn.so.9" in finding.fix
    assert "nvidia-cudnn-cu12==9.*" in finding.fix
    assert "CUDA 11" not in finding.fix and "cuDNN 8" not in finding.fix
    # The task finished, on the CPU: its steady cost (not its first batch) says so.
    assert task_verdicts(report)["aea1d55e-348c-11f0-9940-02420a3c0b02"] == "task-finished"
    suspected = _only(report, "cpu-fallback-suspected", "aea1d55e-348c-11f0-9940-02420a3c0b02")
    assert suspected.severity is Severity.WARN and "2.23 s per frame" in suspected.title


def test_cuda_11_soname_gets_cuda_11_advice() -> None:
    report = analyze_log(FIXTURES / "cpu_fallback.log")

    finding = _only(report, "cpu-fallback")
    assert finding.fix is not None and "CUDA 11.x" in finding.fix
    assert "libcublasLt.so.11" in finding.fix and "CUDA 12" not in finding.fix
    task = "5c1f0e2a-7b7e-4f0c-9d55-0c3b1a2f9e11"
    suspected = _only(report, "cpu-fallback-suspected", task)
    assert "131.6 s" in suspected.title and "1.98 s per frame" in suspected.title
    assert _lines(suspected) == [7, 23]  # init_wh, the second batch (not the first)


def test_real_log_with_three_runs_of_one_code() -> None:
    report = analyze_log(FIXTURES / "real_three_runs.log")

    assert task_verdicts(report) == {
        "1002": "task-failed",
        "1002#2": "task-failed",
        "1002#3": "task-finished",
    }
    failed = _only(report, "task-failed", "1002")
    assert "ffmpeg inside the service could not read the input" in failed.title
    assert "format video error" in failed.title
    assert "started 3 times" in _only(report, "service-restarts").title


def test_console_copy_without_timestamps_keeps_order_not_time() -> None:
    report = analyze_log(FIXTURES / "no_timestamps_issue53.log")

    assert report.details["timed"] is False
    task = "aea1d55e-348c-11f0-9940-02420a3c0b02"
    finding = _only(report, "consumer-never-started", task)
    assert "put 10 batches" in finding.title
    assert " s after the last put" not in finding.title  # no clock, no durations
    assert _lines(finding) == [12, 21, 23]
    assert any("init_wh took 110 s" in line for line in finding.evidence)
    # That incident's cause (issue 54 of the same user): onnxruntime on the CPU.
    assert "init_wh took 110.2 s" in _only(report, "cpu-fallback-suspected", task).title
    details = _task(report, task)
    assert details["fps"] is None and details["longest_queue_wait_s"] is None


def test_queue_full_error_alone_is_a_problem_without_a_guess(tmp_path: Path) -> None:
    # Quoted from https://github.com/duixcom/Duix-Avatar/issues/226: the error, then polling.
    log = tmp_path / "dh.log"
    log.write_text(
        "heygem-f2f  | [2025-03-16 22:36:44] [process.py[line:108]] [ERROR] "
        "[[ccebcbe1-27ab-4b10-89e6-b92faa86d507]任务视频驱动队列满，严重阻塞，下游队列异常]\n"
        + "".join(
            f"heygem-f2f  | [2025-03-16 22:58:{s:02d}] [_internal.py[line:96]] [INFO] "
            f'[172.18.0.1 - - [16/Mar/2025 22:58:{s:02d}] "GET /easy/query?code='
            'ccebcbe1-27ab-4b10-89e6-b92faa86d507 HTTP/1.1" 200 -]\n'
            for s in (54, 56, 58)
        ),
        "utf-8",
    )

    report = analyze_log(log)

    finding = _only(report, "queue-full", "ccebcbe1-27ab-4b10-89e6-b92faa86d507")
    assert finding.severity is Severity.FAIL and "took nothing" in finding.title
    assert report.exit_code() == 1


@pytest.mark.parametrize(
    ("said", "wanted", "not_wanted"),
    [
        # onnxruntime 1.19 on Jetson (microsoft/onnxruntime issue 22809)
        (
            "Failed to create CUDAExecutionProvider. Require cuDNN 8.* and CUDA 12.*.",
            ["CUDA 12.x and cuDNN 8.x", "nvidia-cudnn-cu12==8.*"],
            ["CUDA 11", "cuDNN 9"],
        ),
        (
            "Failed to load library libonnxruntime_providers_cuda.so with error: libcufft.so.10: "
            "cannot open shared object file",
            ["CUDA 11.x", "libcufft.so.10"],
            ["CUDA 12"],
        ),
        (  # onnxruntime on Windows names no library: no versions to advise
            "[E:onnxruntime:Default, provider_bridge_ort.cc:1744 onnxruntime::TryGetProviderInfo_"
            'CUDA] FAIL : LoadLibrary failed with error 126 "" when trying to load "C:\\py\\Lib'
            '\\site-packages\\onnxruntime\\capi\\onnxruntime_providers_cuda.dll"',
            ["does not say which CUDA/cuDNN", "heygem-diagnose env"],
            ["CUDA 11", "CUDA 12"],
        ),
        (
            "UserWarning: Specified provider 'CUDAExecutionProvider' is not in available provider "
            "names.Available providers: 'AzureExecutionProvider, CPUExecutionProvider'",
            ["CPU-only `onnxruntime` package", "onnxruntime-gpu"],
            ["CUDA 11", "CUDA 12"],
        ),
    ],
)
def test_cpu_fallback_advice_comes_from_what_onnxruntime_said(
    tmp_path: Path, said: str, wanted: list[str], not_wanted: list[str]
) -> None:
    log = tmp_path / "dh.log"
    log.write_text(
        "[2025-05-20 08:12:50,100] [app_local.py[line:231]] [INFO] [TransDhTask init]\n"
        f"{said}\n",  # printed to stderr: a line of no layout after a record
        "utf-8",
    )

    finding = _only(analyze_log(log), "cpu-fallback")

    assert finding.fix is not None and _lines(finding) == [2]
    for text in wanted:
        assert text in finding.fix
    for text in not_wanted:
        assert text not in finding.fix


# --- the earlier fixtures -------------------------------------------------------------------
def test_consumer_never_took_an_item() -> None:
    report = analyze_log(FIXTURES / "consumer_never_started.log")

    finding = _only(report, "consumer-never-started", "1742264493")
    assert _lines(finding) == [10, 19, 20]
    assert "60 s after the last put" in finding.title
    assert "no consumer start line" in " ".join(finding.evidence)
    assert finding.fix is not None
    for hint in ("heygem-diagnose ps", "--shm-size=2g", "num_workers=0", "onnxruntime-gpu"):
        assert hint in finding.fix
    assert report.exit_code() == 1


def test_consumer_never_started_cites_its_start_line(tmp_path: Path) -> None:
    start = "[2025-03-18 10:20:52,300] [process.py[line:108]] [INFO] [>>> 数字人图片处理进程启动]\n"
    log = tmp_path / "dh.log"
    log.write_text(start + (FIXTURES / "consumer_never_started.log").read_text("utf-8"), "utf-8")

    finding = _only(analyze_log(log), "consumer-never-started", "1742264493")

    assert _lines(finding) == [1, 11, 20, 21]
    assert "logged its start (line 1)" in " ".join(finding.evidence)


def test_consumer_that_stopped_is_not_called_slow() -> None:
    report = analyze_log(FIXTURES / "consumer_slow.log")

    task = "aea1d55e-348c-11f0-9940-02420a3c0b02"
    finding = _only(report, "consumer-stopped", task)
    assert "its last batch (frame 60)" in finding.title and "60 s before" in finding.title
    assert _lines(finding)[-1] == 61
    throughput = _only(report, "throughput", task)
    assert throughput.severity is Severity.INFO
    assert "10.0x slower than real time (25 fps video, assumed)" in throughput.title


def test_real_time_factor_uses_the_configured_video_rate() -> None:
    report = analyze_log(FIXTURES / "consumer_slow.log", AnalyzerConfig(video_fps=30.0))

    throughput = _only(report, "throughput", "aea1d55e-348c-11f0-9940-02420a3c0b02")
    assert "12.0x slower than real time (30 fps video, assumed)" in throughput.title


def test_cpu_thresholds_are_configurable() -> None:
    config = AnalyzerConfig(cpu_frame_cost_s=5.0, cpu_init_wh_s=200.0)
    report = analyze_log(FIXTURES / "cpu_fallback.log", config)

    assert not report.by_id("cpu-fallback-suspected")
    assert report.by_id("cpu-fallback")  # onnxruntime's own words still count


def test_empty_error_message_is_explained_by_its_traceback() -> None:
    report = analyze_log(FIXTURES / "empty_error.log")

    finding = _only(report, "task-failed", "b95fca22-2a6d-4561-bc3b-5f7b77080eb3")
    assert "failed with an empty message" in finding.title
    assert "queue.Empty in trans_dh_service.audio_transfer" in finding.title
    # the `[ERROR] []` record, the traceback's frame and exception, the failure line
    assert _lines(finding) == [13, 15, 18, 19]


def test_task_hung_with_docker_compose_prefixes() -> None:
    report = analyze_log(FIXTURES / "never_finished.log")

    task = "76e64cce-64ba-4de6-95b9-c11c1aee65ba"
    finding = _only(report, "task-hung", task)
    assert "for the last 300 s of the log" in finding.title
    assert "current_idx 120 of 300 frames" in finding.title
    details = _task(report, task)
    assert details["stream"] == "heygem-gen-video"
    # client polling (/easy/query) is not task activity
    assert details["last_line"] == 64
    assert (details["sends"], details["takes"]) == (30, 30)


def test_all_frames_written_is_finished_even_before_the_end_line() -> None:
    report = analyze_log(FIXTURES / "healthy.log")

    assert report.exit_code() == 0
    assert task_verdicts(report) == {"1002": "task-finished"}
    assert "the log ends before its end line" in _only(report, "task-finished", "1002").title


def test_failure_message_gets_a_known_fix() -> None:
    report = analyze_log(FIXTURES / "self_logger_failed.log")

    task = "71e6b361-29b1-47e1-bfc0-032dd8bbe56e"
    finding = _only(report, "task-failed", task)
    assert _lines(finding) == [5]
    assert "no final result" in finding.title
    assert finding.fix is not None and "restart the service" in finding.fix


def test_heygem_json_log() -> None:
    report = analyze_log(FIXTURES / "pipeline.jsonl")

    assert report.details["format"] == "json"
    assert task_verdicts(report) == {
        "job-ok": "task-finished",
        "job-stalled": "consumer-never-started",
    }
    assert "(generate) went at 50.0 frames/s" in _only(report, "throughput", "job-ok").title
    stalled = _only(report, "consumer-never-started", "job-stalled")
    assert 16 in _lines(stalled) and "stage generate" in stalled.title
    assert report.exit_code() == 1


# --- reading --------------------------------------------------------------------------------
_RECORD = "[INFO] [drivered_video >>>>>>>>>>>>>>>>>>>> 发送数据大小:[1], current_idx:3]"


@pytest.mark.parametrize(
    ("line", "stream", "time"),
    [
        (f"[2025-11-09 17:29:40,294] {_RECORD}", "", "17:29:40.294000"),
        (
            f"[2025-11-09 17:29:40.294] [trans_dh_service.py[line:321]] {_RECORD}",
            "",
            "17:29:40.294000",
        ),
        # docker -t: UTC with nanoseconds; the line's own clock is UTC+8 and has no milliseconds
        (f"2025-11-09T09:29:40.294123456Z [2025-11-09 17:29:40] {_RECORD}", "", "17:29:40.294123"),
        (
            f"heygem-gen-video-1  | [2025-11-09 17:29:40,294] {_RECORD}",
            "heygem-gen-video-1",
            "17:29:40.294000",
        ),
        (
            "gen-1  | 2025-11-09T09:29:40.294654321Z "
            f"\x1b[32m[2025-11-09 17:29:40] {_RECORD}\x1b[0m",
            "gen-1",
            "17:29:40.294654",
        ),
    ],
)
def test_layouts_and_prefixes(tmp_path: Path, line: str, stream: str, time: str) -> None:
    log = tmp_path / "dh.log"
    log.write_bytes((line + "\r\n").encode())

    report = analyze_log(log)

    task = report.details["tasks"][0]
    assert task["stream"] == stream
    # The line's own clock; a prefix's clock only adds the sub-seconds a console line lacks.
    assert task["events"][0] == {
        "time": f"2025-11-09T{time}",
        "line": 1,
        "kind": "send",
        "late": False,
        "detail": "drivered_video >>>>>>>>>>>>>>>>>>>> 发送数据大小:[1], current_idx:3",
    }
    assert report.details["damage"]["lines"] == 0


def test_utf16_log_saved_by_powershell(tmp_path: Path) -> None:
    log = tmp_path / "dh.log"
    text = (FIXTURES / "incident_queue_full.log").read_text("utf-8").replace("\n", "\r\n")
    log.write_bytes(text.encode("utf-16"))

    report = analyze_log(log)

    assert report.details["encoding"] == "utf-16"
    assert task_verdicts(report) == {"20251109172931": "consumer-never-started"}


def test_gb18030_log_from_a_chinese_windows_locale(tmp_path: Path) -> None:
    log = tmp_path / "dh.log"
    log.write_bytes((FIXTURES / "incident_queue_full.log").read_text("utf-8").encode("gb18030"))

    report = analyze_log(log)

    assert report.details["encoding"] == "gb18030"
    assert task_verdicts(report) == {"20251109172931": "consumer-never-started"}
    assert report.details["damage"]["lines"] == 0


def test_non_utf8_bytes_do_not_crash(tmp_path: Path) -> None:
    log = tmp_path / "dh.log"
    log.write_bytes(
        b"[2025-03-18 12:52:07,646] [run.py[line:147]] [INFO] [[1002] -> ffmpeg \xff\xfe]\n"
        b"\x80\x81 garbage from a crashed child\n"
        b"[2025-03-18 12:52:09,000] [run.py[line:147]] [ERROR] "
        b"[[1002]\xe4\xbb\xbb\xe5\x8a\xa1\xe6\x89\xa7\xe8\xa1\x8c\xe5\xa4\xb1\xe8\xb4\xa5\xff]\n"
    )

    report = analyze_log(log)

    assert report.details["damage"]["invalid_text"] == 3
    assert task_verdicts(report) == {"1002": "task-failed"}


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputNotFound, match="not found"):
        analyze_log(tmp_path / "nope.log")


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidOption, match="is a directory"):
        analyze_log(tmp_path)


@pytest.mark.parametrize(
    "content", [b"", b"just some prose\nand more\n", b"{not json}\n", b"\x00\x00\x80\xff\n"]
)
def test_file_without_any_record(tmp_path: Path, content: bytes) -> None:
    log = tmp_path / "dh.log"
    log.write_bytes(content)

    with pytest.raises(InvalidOption, match="holds no log record") as excinfo:
        analyze_log(log)

    assert excinfo.value.hint is not None and "dh.log" in excinfo.value.hint


def test_service_log_without_tasks_is_healthy(tmp_path: Path) -> None:
    log = tmp_path / "dh.log"
    lines = (FIXTURES / "restart_mid_task.log").read_text("utf-8").splitlines()[:14]
    log.write_text("\n".join(lines) + "\n", "utf-8")

    report = analyze_log(log)

    assert report.exit_code() == 0
    assert [f.id for f in report.findings] == ["warnings", "no-tasks"]


def test_report_is_json() -> None:
    report = analyze_log(FIXTURES / "consumer_never_started.log")

    data = json.loads(json.dumps(report.to_dict()))

    assert data["worst"] == "fail" and data["exit_code"] == 1
    task = data["tasks"][0]
    assert task["state"] == "stalled" and task["start"] == "2025-03-18T10:21:20.005000"
    assert task["events"][-1] == {
        "time": "2025-03-18T10:22:33.790000",
        "line": 20,
        "kind": "queue_full",
        "late": False,
        "detail": "[1742264493]任务视频驱动队列满，严重阻塞，下游队列异常",
    }
    assert data["findings"][0]["id"] == "consumer-never-started"
    assert data["findings"][0]["subject"] == "1742264493"
