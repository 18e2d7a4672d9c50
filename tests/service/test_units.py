"""Small pieces: worker cancel bookkeeping, job options, Prometheus text."""

from __future__ import annotations

import pytest

from heygem.config import FaultInjection, GenerateOptions
from heygem.errors import InvalidOption
from service.metrics import Counter, Histogram, Metrics
from service.worker import _Control, job_options


def test_cancel_before_the_job_starts_is_not_lost() -> None:
    control = _Control()
    control.cancel("early")  # arrived while the job was still queued in the worker
    assert control.begin("early").is_set()
    control.end()
    running = control.begin("next")
    control.cancel("some-other-job")
    assert not running.is_set()
    control.cancel()  # Stop: whatever runs
    assert running.is_set()


def test_job_options_apply_overrides_and_parse_faults(tmp_path) -> None:  # type: ignore[no-untyped-def]
    base = GenerateOptions(cache_dir=tmp_path)
    assert job_options(base, {}) is base
    options = job_options(base, {"preset": "ultrafast", "fault": "generate:slow:0.5"})
    assert options.preset == "ultrafast"
    assert options.fault == FaultInjection("generate", "slow", 0.5)
    with pytest.raises(InvalidOption):
        job_options(base, {"crf": 99})


def test_prometheus_text() -> None:
    counter = Counter("x_total", "help")
    counter.inc(reason='a"b\\c\nd')
    assert list(counter.render())[-1] == 'x_total{reason="a\\"b\\\\c\\nd"} 1'
    hist = Histogram("h_seconds", "help", buckets=(1.0, 2.0))
    for value in (0.5, 1.5, 3.0):
        hist.observe(value, stage="s")
    lines = list(hist.render())
    assert 'h_seconds_bucket{stage="s",le="1"} 1' in lines
    assert 'h_seconds_bucket{stage="s",le="2"} 2' in lines
    assert 'h_seconds_bucket{stage="s",le="+Inf"} 3' in lines
    assert 'h_seconds_sum{stage="s"} 5' in lines and 'h_seconds_count{stage="s"} 3' in lines


def test_cpu_fallback_and_fps_are_counted() -> None:
    metrics = Metrics()
    metrics.job_succeeded(
        {
            "timings": {"total": 2.0, "stream": 1.5},
            "stage_seconds": {"generate": 1.0},
            "cpu_fallback": True,
            "frames": 50,
            "providers_requested": ["CUDAExecutionProvider"],
            "providers_used": ["CPUExecutionProvider"],
        },
        queued_seconds=0.1,
    )
    text = metrics.render()
    assert "heygem_cpu_fallbacks_total 1" in text
    assert 'heygem_generation_fps_bucket{le="25"} 1' in text
    assert metrics.mean_job_seconds() == 2.0
