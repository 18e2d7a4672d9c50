"""Faults injected from outside the process, as an operator or the kernel would: a
DataLoader worker killed with SIGKILL or stopped with SIGSTOP during a real 720p job with
two workers. The job must end within seconds with a typed error naming the stage and the
cause, leave no process behind and no output file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from heygem.audio.synth import synth_speech
from heygem.demo import iter_template_frames, write_video, write_wav
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

FAULT_DEADLINE = 5.0  # seconds from the fault to the process's exit


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("live-faults")
    return {
        "audio": write_wav(root / "speech.wav", synth_speech(14.0, seed=3)),
        "video": write_video(root / "t720.mp4", iter_template_frames(2.0, size=(1280, 720))),
        "cache": root / "cache",
        "root": root,
    }


class Job:
    """`heygem generate` with two DataLoader workers, watched from outside."""

    def __init__(self, inputs: dict[str, Path], name: str, *extra: str) -> None:
        self.output = inputs["root"] / f"{name}.mp4"
        self.log = inputs["root"] / f"{name}.jsonl"
        command = [
            sys.executable, "-m", "heygem.cli", "generate",
            "-a", str(inputs["audio"]), "-i", str(inputs["video"]), "-o", str(self.output),
            "--num-workers", "2", "--cache-dir", str(inputs["cache"]), "-q",
            "--log-json", str(self.log), *extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        self.tree = psutil.Process(self.process.pid)

    def workers(self) -> list[psutil.Process]:
        found = []
        for child in self.tree.children(recursive=True):
            try:
                command = " ".join(child.cmdline())
            except psutil.Error:
                continue
            if "spawn_main" in command and "resource_tracker" not in command:
                found.append(child)
        return found

    def events(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def wait_until_streaming(self) -> list[psutil.Process]:
        """Both workers up and frames flowing (the job has shown its pace)."""
        wait_for(lambda: len(self.workers()) == 2, 90.0, what="two DataLoader workers")
        wait_for(
            lambda: any(e.get("event") == "stage_progress" for e in self.events()),
            90.0,
            what="the first progress event",
        )
        return self.workers()

    def finish(self, timeout: float = 60.0) -> tuple[int, str, float]:
        started = time.monotonic()
        _, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, err, time.monotonic() - started


def _stop(job: Job) -> None:
    """Whatever happened, leave nothing running (a stopped worker would linger)."""
    try:
        leftovers = job.workers()
    except psutil.NoSuchProcess:
        leftovers = []
    if job.process.poll() is None:
        job.process.kill()
        job.process.wait()
    for process in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize(
    ("fault", "worker", "exit_code", "cause"),
    [
        (signal.SIGKILL, 0, 22, "killed"),
        (signal.SIGKILL, 1, 22, "killed"),
        (signal.SIGSTOP, 0, 21, "process-stopped"),
        (signal.SIGSTOP, 1, 21, "process-stopped"),
    ],
    ids=["kill-worker-0", "kill-worker-1", "stop-worker-0", "stop-worker-1"],
)
def test_a_worker_killed_or_stopped_from_outside_ends_the_job_within_seconds(
    job_inputs: dict[str, Path], fault: signal.Signals, worker: int, exit_code: int, cause: str
) -> None:
    job = Job(job_inputs, f"{fault.name}-{worker}")
    try:
        workers = job.wait_until_streaming()
        pids = [w.pid for w in workers]
        os.kill(pids[worker], fault)
        code, err, seconds = job.finish()
    finally:
        _stop(job)
    assert seconds < FAULT_DEADLINE, f"the job took {seconds:.1f} s to end after the fault"
    assert code == exit_code, err
    assert "stage 'load'" in err and f"worker process {pids[worker]}" in err
    failed = [e for e in job.events() if e.get("event") == "job_failed"]
    assert [(e["stage"], e["cause"]) for e in failed] == [("load", cause)]
    assert not job.output.exists()
    assert not list(job.output.parent.glob(f".{job.output.name}*")), "a partial output was left"
    assert all(_gone(pid) for pid in pids), "a DataLoader worker outlived its job"


def test_a_hang_after_the_pace_is_known_is_caught_well_before_the_stall_timeout(
    job_inputs: dict[str, Path],
) -> None:
    # The generate stage hangs at its third batch; the stall timeout is 30 s, but the stage
    # did each batch in well under a second, so a few times that is the limit.
    env_job = Job(job_inputs, "hang", "--fault", "generate:hang:120", "--stall-timeout", "30")
    started = time.monotonic()
    try:
        code, err, _ = env_job.finish(timeout=90.0)
    finally:
        _stop(env_job)
    total = time.monotonic() - started
    assert code == 21, err
    assert "stage 'generate' made no progress" in err and "longest pause" in err
    stalled = [e for e in env_job.events() if e.get("event") == "stage_stalled"]
    assert [(e["stage"], e["cause"]) for e in stalled] == [("generate", "no-progress")]
    assert total < 30.0, f"caught after {total:.1f} s: the pace was not used"
    assert not env_job.output.exists()
