"""Stalls and dead children become typed errors naming the stage, fast, with nothing left."""

from __future__ import annotations

import multiprocessing
import threading
import time
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from heygem.config import FaultInjection, GenerateOptions
from heygem.errors import PipelineStalled, StageCrashed
from heygem.pipeline import Pipeline
from heygem.runner.channels import Channel
from heygem.runner.monitor import StageMonitor, StageState
from heygem.runner.watchdog import ChildProcess, Watchdog
from tests.helpers import wait_for


def _two_stage(timeout: float = 0.2) -> tuple[StageMonitor, StageMonitor, Channel[int], Watchdog]:
    producer, consumer = StageMonitor("producer"), StageMonitor("consumer")
    channel: Channel[int] = Channel("items", 2, producer, consumer, threading.Event())
    return producer, consumer, channel, Watchdog([producer, consumer], [channel], timeout)


def test_full_queue_and_idle_consumer_is_the_heygem_signature() -> None:
    producer, consumer, channel, watchdog = _two_stage()
    producer.attach()
    consumer.attach()
    channel.put(1)
    channel.put(2)
    producer.set_state(StageState.WAITING_OUTPUT, "put to items", "items")
    consumer.set_state(StageState.WORKING, "starting up")
    wait_for(lambda: watchdog.check() is not None, 5.0, what="the watchdog to fire")
    error = watchdog.check()
    assert isinstance(error, PipelineStalled) and error.stage == "consumer"
    assert "consumer never started or died" in error.message
    assert "items: 2/2 queued, 2 put by producer, 0 taken by consumer" in error.message


def test_starved_consumer_blames_the_producer() -> None:
    producer, consumer, _, watchdog = _two_stage()
    producer.attach()
    consumer.attach()
    producer.set_state(StageState.WORKING, "decoding")
    consumer.set_state(StageState.WAITING_INPUT, "get from items", "items")
    wait_for(lambda: watchdog.check() is not None, 5.0, what="the watchdog to fire")
    error = watchdog.check()
    assert isinstance(error, PipelineStalled) and error.stage == "producer"
    assert "noticed at stage" in error.message or "made no progress" in error.message


def test_dead_worker_is_decoded() -> None:
    watchdog = Watchdog([], [], 10.0, children=lambda: [ChildProcess("load", 42, -7)])
    error = watchdog.check()
    assert isinstance(error, StageCrashed) and error.stage == "load"
    assert "SIGBUS" in error.message and "shared memory" in error.message
    assert error.hint and "--shm-size" in error.hint


def _no_children_left() -> bool:
    """No worker or zombie left (multiprocessing's own resource tracker may stay)."""
    multiprocessing.active_children()
    leftovers = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
            if child.status() == "zombie" or "spawn_main" in cmdline:
                leftovers.append(child)
        except psutil.NoSuchProcess:
            continue
    return not leftovers


@pytest.mark.parametrize(
    ("fault", "error", "stage", "text"),
    [
        (FaultInjection("generate", "hang", 60), PipelineStalled, "generate", "made no progress"),
        (
            FaultInjection("generate", "never_start"),
            PipelineStalled,
            "generate",
            "consumer never started or died",
        ),
        (FaultInjection("load", "crash"), StageCrashed, "load", "injected fault"),
    ],
    ids=["hang", "never-start", "crash"],
)
def test_faults_are_named_quickly_and_the_next_job_works(
    fault: FaultInjection,
    error: type[Exception],
    stage: str,
    text: str,
    options: GenerateOptions,
    speech_wav: Path,
    template_mp4: Path,
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(replace(options, stall_timeout=1.0))
    pipeline.generate(speech_wav, template_mp4, tmp_path / "warm.mp4")  # warm caches
    broken = Pipeline(replace(options, stall_timeout=1.0, fault=fault))
    out = tmp_path / "broken.mp4"
    started = time.monotonic()
    with pytest.raises(error) as caught:
        broken.generate(speech_wav, template_mp4, out)
    assert time.monotonic() - started < 5.0
    assert caught.value.stage == stage and text in caught.value.message  # type: ignore[attr-defined]
    assert not out.exists() and not list(tmp_path.glob(".broken*"))
    assert _no_children_left()
    result = pipeline.generate(speech_wav, template_mp4, tmp_path / "after.mp4")
    assert (tmp_path / "after.mp4").exists() and result.frames == 125


def test_worker_killed_by_sigbus_is_reported_as_shared_memory(
    options: GenerateOptions, speech_wav: Path, template_mp4: Path, tmp_path: Path
) -> None:
    opts = replace(
        options, num_workers=1, stall_timeout=2.0, fault=FaultInjection("load", "sigbus")
    )
    out = tmp_path / "sigbus.mp4"
    with pytest.raises(StageCrashed) as caught:
        Pipeline(opts).generate(speech_wav, template_mp4, out)
    assert caught.value.stage == "load"
    assert "SIGBUS" in caught.value.message or "Bus error" in caught.value.message
    assert caught.value.hint and "shm" in caught.value.hint
    assert not out.exists()
    wait_for(_no_children_left, 5.0, what="every child to be reaped")


def test_worker_killed_is_reported_as_likely_oom(
    options: GenerateOptions, speech_wav: Path, template_mp4: Path, tmp_path: Path
) -> None:
    opts = replace(options, num_workers=1, stall_timeout=2.0, fault=FaultInjection("load", "kill"))
    with pytest.raises(StageCrashed) as caught:
        Pipeline(opts).generate(speech_wav, template_mp4, tmp_path / "killed.mp4")
    assert caught.value.stage == "load"
    assert "SIGKILL" in caught.value.message or "killed by signal: Killed" in caught.value.message
    assert not (tmp_path / "killed.mp4").exists()
    wait_for(_no_children_left, 5.0, what="every child to be reaped")


def test_slow_but_progressing_stage_is_not_a_stall(
    options: GenerateOptions, speech_wav: Path, template_mp4: Path, tmp_path: Path
) -> None:
    # 0.3 s per batch is slow, but each batch is a heartbeat well inside the 1 s deadline.
    opts = replace(options, stall_timeout=1.0, fault=FaultInjection("generate", "slow", 0.3))
    result = Pipeline(opts).generate(speech_wav, template_mp4, tmp_path / "slow.mp4")
    assert result.frames == 125 and (tmp_path / "slow.mp4").exists()
