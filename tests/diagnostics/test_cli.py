"""`heygem-diagnose` end to end, in process: exit codes, text and JSON, real probe runs
(healthy, hung, SIGBUS-killed worker, never-started consumer) on tiny generated inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from diagnostics.cli import main
from diagnostics.probe import (
    OUTCOME_OF_KIND,
    Outcome,
    ProbeDeadlineExceeded,
    classify_error,
    leftover_children,
)
from heygem.errors import (
    CAUSES,
    FailureCause,
    NoFaceFound,
    PipelineStalled,
    ProviderUnavailable,
    StageCrashed,
)

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
TINY = ["--size", "256x256", "--seconds", "1.5"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    code, out, _ = run(capsys, *argv, "--json")
    return code, json.loads(out)


def assert_one_line_error(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("heygem-diagnose") and "error:" in lines[0]
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0]


# --- top level ------------------------------------------------------------------------
def test_help_starts_without_torch() -> None:
    code = (
        "import sys, diagnostics.cli as c; c.build_parser().format_help(); "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'av', 'cv2') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.stdout.strip() == "[]"


def test_version_help_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--version")
    assert code == 0 and "heygem-harness" in out
    code, out, _ = run(capsys, "run-probe", "--help")
    assert code == 0 and "--fault" in out and "Exit 0 only for a healthy run" in out
    code, _, err = run(capsys)
    assert code == 2
    assert_one_line_error(err, "COMMAND")
    code, _, err = run(capsys, "run-probe", "--fault", "nowhere:hang")
    assert code == 2
    assert_one_line_error(err, "nowhere")
    code, _, err = run(capsys, "run-probe", "--size", "255x255")  # odd: H.264 4:2:0 refuses
    assert code == 2
    assert_one_line_error(err, "255x255")


# --- env ------------------------------------------------------------------------------
def test_env_json_has_every_probe(capsys: pytest.CaptureFixture[str]) -> None:
    from diagnostics.doctor import PROBES

    code, data = run_json(capsys, "env", "--num-workers", "1")
    assert [r["id"] for r in data["findings"]] == list(PROBES)
    assert code == (1 if data["worst"] == "fail" else 0)


def test_env_unknown_probe_cannot_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "env", "--only", "no-such-probe")
    assert code == 2
    assert_one_line_error(err, "no-such-probe")


# --- log ------------------------------------------------------------------------------
def test_log_names_the_consumer_that_never_started(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "log", str(FIXTURES / "incident_queue_full.log"))
    assert code == 1
    assert "[FAIL] consumer-never-started [20251109172931]" in out
    assert "the consumer never took an item" in out
    code, data = run_json(capsys, "log", str(FIXTURES / "incident_queue_full.log"))
    assert code == 1 and data["worst"] == "fail" and data["exit_code"] == 1
    assert data["findings"][0]["subject"] == "20251109172931"


def test_log_healthy_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "log", str(FIXTURES / "healthy_gpu_v100.log"))
    assert code == 0 and out.startswith("HeyGem log healthy_gpu_v100.log: OK")
    assert "slower than real time" in out  # information, not a problem


def test_log_with_a_warning_only_exits_0(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "dh.log"
    text = (FIXTURES / "healthy_gpu_v100.log").read_text("utf-8")
    log.write_text(text.split("[2025-03-18 12:52:48,104]")[0], "utf-8")  # still running

    code, out, _ = run(capsys, "log", str(log))

    assert code == 0 and "[WARN] task-running [1002]" in out


def test_log_without_any_record_is_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "dh.log"
    log.write_text("nothing that looks like a log\n", "utf-8")

    code, out, err = run(capsys, "log", str(log))

    assert code == 2 and out == ""
    assert_one_line_error(err, "holds no log record")


def test_log_read_from_a_pipe_reports_as_the_file_does(capsys: pytest.CaptureFixture[str]) -> None:
    """`docker logs -t X 2>&1 | heygem-diagnose log -`: the same findings as the saved file."""
    fixture = FIXTURES / "incident_queue_full.log"
    _, from_file = run_json(capsys, "log", str(fixture))
    piped = subprocess.run(
        [sys.executable, "-m", "diagnostics.cli", "--json", "log", "-"],
        input=fixture.read_bytes(),
        capture_output=True,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert piped.returncode == 1, piped.stderr
    from_pipe = json.loads(piped.stdout)
    assert from_pipe["findings"] == from_file["findings"]
    assert from_pipe["title"] == "HeyGem log <stdin>"


def test_log_missing_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = run(capsys, "log", str(tmp_path / "dh.log"))
    assert code == 2 and out == ""
    assert_one_line_error(err, "not found", "dh.log")


# --- ps -------------------------------------------------------------------------------
def test_ps_of_this_process(capsys: pytest.CaptureFixture[str]) -> None:
    code, data = run_json(capsys, "ps", "--pid", str(os.getpid()))
    (report,) = data["reports"]
    assert os.getpid() in [p["pid"] for p in report["processes"]]
    ours = {f"pid {p['pid']}" for p in report["processes"]}
    # Orphans of unrelated programs on this machine would be real findings, not ours.
    foreign = [f for f in data["findings"] if f["id"] == "orphan" and f["subject"] not in ours]
    assert code == (0 if len(foreign) == len(data["findings"]) == 0 else 1)
    assert len(foreign) == len(data["findings"])


def test_ps_unknown_pid_and_nothing_found(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "ps", "--pid", "999999999")
    assert code == 2
    assert_one_line_error(err, "999999999")
    code, out, _ = run(capsys, "ps", "--pattern", "no-such-process-7f3a9c")
    assert code == 0 and "no no-such-process-7f3a9c processes found" in out


# --- run-probe ------------------------------------------------------------------------
def test_every_failure_cause_has_a_description_and_a_kind_with_an_outcome() -> None:
    # Adding a FailureCause means saying what it is and what kind it is, in one row.
    assert set(CAUSES) == set(FailureCause)
    assert all(cause.description and cause.kind in OUTCOME_OF_KIND for cause in FailureCause)


def test_classification_is_a_lookup_of_the_cause_not_of_the_message() -> None:
    # The message says SIGBUS, the cause says killed: the cause decides.
    killed = StageCrashed("worker 9 died: SIGBUS", stage="load", cause=FailureCause.KILLED)
    assert classify_error(killed) == (
        Outcome.CRASHED,
        FailureCause.KILLED,
        "a process was killed (SIGKILL) (stage 'load')",
    )
    shm = StageCrashed("anything", stage="load", cause=FailureCause.SHM_EXHAUSTED)
    assert classify_error(shm)[:2] == (Outcome.CRASHED, FailureCause.SHM_EXHAUSTED)
    raised = StageCrashed("x", stage="load", cause=FailureCause.WORKER_RAISED)
    assert classify_error(raised)[2] == ("the data loading code raised in a worker (stage 'load')")
    assert classify_error(PipelineStalled("stuck", stage="compose")) == (
        Outcome.STALLED,
        FailureCause.NO_PROGRESS,
        "a stage made no progress (stage 'compose')",
    )
    assert classify_error(ProbeDeadlineExceeded("late"))[2].startswith("no answer")
    assert classify_error(ProviderUnavailable("cpu"))[:2] == (
        Outcome.ERROR,
        FailureCause.CPU_FALLBACK,
    )
    assert classify_error(NoFaceFound("none"))[0] is Outcome.BAD_INPUT
    assert classify_error(ValueError("x")) == (
        Outcome.ERROR,
        FailureCause.INTERNAL,
        "unexpected ValueError",
    )


def test_invalid_probe_options_cannot_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "run-probe", *TINY, "--fault", "load:sigbus")  # needs workers
    assert code == 2
    assert_one_line_error(err, "sigbus")


def probe(
    capsys: pytest.CaptureFixture[str], cache: Path, *argv: str
) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    code, data = run_json(capsys, "run-probe", *TINY, "--cache-dir", str(cache), *argv)
    return code, data, time.monotonic() - started


def test_probe_ok(capsys: pytest.CaptureFixture[str], shared_cache: Path, tmp_path: Path) -> None:
    kept = tmp_path / "probe.mp4"
    code, data, _ = probe(capsys, shared_cache, "--keep-output", str(kept))
    assert code == 0, data["evidence"]
    assert data["outcome"] == "ok" and data["healthy"] and data["cause"] is None
    assert data["frames"] > 0 and data["fps"] > 0
    assert data["providers_used"] and not data["cpu_fallback"]
    assert data["leftover_children"] == 0
    assert {"python", "numpy", "torch", "onnxruntime", "av"} <= data["versions"].keys()
    assert data["output"] == str(kept) and kept.stat().st_size > 0


@pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")  # ORT's own notice
def test_probe_cpu_fallback_is_a_problem(
    capsys: pytest.CaptureFixture[str], shared_cache: Path
) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA is available here: nothing falls back")
    code, data, _ = probe(capsys, shared_cache, "--device", "cuda")
    assert code == 1
    assert data["outcome"] == "ok" and not data["healthy"] and data["cause_id"] == "cpu-fallback"
    assert [f["id"] for f in data["findings"] if f["severity"] == "fail"] == ["cpu-fallback"]
    assert data["cpu_fallback"] and "CUDAExecutionProvider" in data["providers_requested"]
    assert data["providers_used"] == ["CPUExecutionProvider"]


def test_probe_hang_is_stalled_in_generate(
    capsys: pytest.CaptureFixture[str], shared_cache: Path
) -> None:
    code, data, wall = probe(
        capsys, shared_cache, "--fault", "generate:hang:30", "--stall-timeout", "2"
    )
    assert code == 1
    assert data["outcome"] == "stalled"
    assert data["evidence"]["stage"] == "generate" and "generate" in data["cause"]
    assert wall < 10.0
    assert data["leftover_children"] == 0


def test_probe_sigbus_is_shared_memory(
    capsys: pytest.CaptureFixture[str], shared_cache: Path
) -> None:
    code, data, _ = probe(capsys, shared_cache, "--fault", "load:sigbus", "--num-workers", "1")
    assert code == 1
    assert data["outcome"] == "crashed"
    assert data["cause_id"] == "shm-exhausted" and "shared memory" in data["cause"]
    assert "SIGBUS" in data["evidence"]["message"]
    assert data["evidence"]["stage"] == "load" and "shm" in data["evidence"]["hint"]
    assert data["leftover_children"] == 0, data["leftover_detail"]


def test_probe_never_started_consumer_in_text(
    capsys: pytest.CaptureFixture[str], shared_cache: Path
) -> None:
    code, out, _ = run(
        capsys,
        "run-probe",
        *TINY,
        "--cache-dir",
        str(shared_cache),
        "--fault",
        "generate:never_start",
        "--stall-timeout",
        "2",
    )
    assert code == 1
    assert out.splitlines()[0] == "heygem probe: FAIL"
    (run_line,) = [line for line in out.splitlines() if line.startswith("[FAIL] run")]
    assert "stalled: consumer never started or died (stage 'generate')" in run_line
    assert "leftover" not in out  # no child left behind: no such finding


def test_probe_outer_deadline_catches_a_silent_watchdog(
    capsys: pytest.CaptureFixture[str], shared_cache: Path
) -> None:
    # The watchdog allows 60 s of silence, the probe only 3 s in total: the probe answers.
    code, data, wall = probe(
        capsys,
        shared_cache,
        "--fault",
        "generate:hang:30",
        "--stall-timeout",
        "60",
        "--timeout",
        "3",
    )
    assert code == 1
    assert data["outcome"] == "stalled" and "watchdog did not fire" in data["cause"]
    assert wall < 15.0


def test_leftover_children_counts_new_zombies() -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        left = leftover_children(before, grace=0.5)  # running, or a zombie until waited
        assert any(f"pid {child.pid}" in d for d in left)
    finally:
        child.wait()
    assert not [d for d in leftover_children(before, grace=0.0) if f"pid {child.pid}" in d]
