"""Small pieces: worker cancel bookkeeping, step reports, job options, metrics, redaction, the
cache cap."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from heygem.config import FaultInjection, GenerateOptions
from heygem.errors import InvalidOption
from heygem.progress import StepProgress
from service.metrics import Metrics
from service.options import JobOptions, job_options
from service.protocol import FromWorker, Progress
from service.redact import HIDDEN, Redactor
from service.retention import tree_bytes, trim_cache
from service.settings import ServiceSettings
from service.worker import PREPARING_PERCENT, StepReports, _Control
from tests.service.helpers import metric


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


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[Progress] = []

    def send(self, message: FromWorker) -> None:
        assert isinstance(message, Progress)
        self.sent.append(message)


def _frames(step: str, total: int) -> list[StepProgress]:
    """What the pipeline reports for a counted step: every unit, then the last again."""
    reports = [StepProgress(step, i, total) for i in range(1, total + 1)]  # type: ignore[arg-type]
    return [*reports, StepProgress(step, total, total, finished=True)]  # type: ignore[arg-type]


def _once(step: str) -> list[StepProgress]:
    """A step without countable units (a model load or export): its start and its end."""
    return [StepProgress(step, 0, None), StepProgress(step, 1, None, finished=True)]  # type: ignore[arg-type]


def test_a_long_step_sends_one_message_per_percent_and_the_latest_step_is_shown() -> None:
    sent = _Recorder()
    report = StepReports("j", sent)
    audio, load, export = _once("audio_features"), _once("load_model"), _once("export_onnx")
    template = _frames("template", 10_000)
    # As they interleave on a first job: the model export starts while the template is
    # being analysed and hides it until it ends; the audio ends unseen meanwhile.
    for item in [audio[0], load[0], *template[:100], export[0], *template[100:500], audio[1]]:
        report(item)
    for item in [*template[500:3000], export[1], *template[3000:3100], load[1]]:
        report(item)
    for item in [*template[3100:], *_frames("face_features", 10_000), *_frames("generate", 50)]:
        report(item)

    assert len(sent.sent) <= 2 * 102 + 6  # two counted steps, four start/end changes
    assert {(m.phase, m.percent) for m in sent.sent} == {("preparing", PREPARING_PERCENT)}
    shown = [m.step for m in sent.sent]
    assert [s for i, s in enumerate(shown) if i == 0 or shown[i - 1] != s] == [
        "audio_features",
        "load_model",
        "template",
        "export_onnx",
        "template",
        "face_features",
    ]
    back = shown.index("template", shown.index("export_onnx"))  # its last count, at once
    assert sent.sent[back].step_done == 3000 and sent.sent[back].step_total == 10_000
    last = sent.sent[-1]
    assert (last.step, last.step_done, last.step_total) == ("face_features", 10_000, 10_000)
    assert not any(m.step == "generate" for m in sent.sent)  # frames are run_job's own


@given(
    totals=st.lists(st.integers(1, 1500), min_size=1, max_size=4),
    uncounted=st.integers(0, 3),
    rng=st.randoms(use_true_random=False),
)
def test_step_messages_stay_bounded_however_steps_interleave(
    totals: list[int], uncounted: int, rng: random.Random
) -> None:
    names = ["template", "face_features", "audio_features", "load_model"]
    steps = [_frames(names[i], n) for i, n in enumerate(totals)]
    steps += [_once(name) for name in ["export_onnx", "load_model", "audio_features"][:uncounted]]
    sent = _Recorder()
    report = StepReports("j", sent)
    pending = [list(s) for s in steps]
    while any(pending):
        queue = rng.choice([p for p in pending if p])  # the steps' threads, any order
        report(queue.pop(0))
    assert len(sent.sent) <= 104 * len(steps)
    assert all(m.step_total is None or m.step_done <= m.step_total for m in sent.sent)  # type: ignore[operator]
    assert sent.sent[-1].step_done == (sent.sent[-1].step_total or 1)  # all ended: an end shown


def test_job_options_apply_overrides_and_parse_faults(tmp_path: Path) -> None:
    base = GenerateOptions(cache_dir=tmp_path)
    assert job_options(base, {}) is base
    options = job_options(base, {"preset": "ultrafast", "fault": "generate:slow:0.5"})
    assert options.preset == "ultrafast"
    assert options.fault == FaultInjection("generate", "slow", 0.5)
    with pytest.raises(ValueError, match="crf 99 is out of range"):
        job_options(base, {"crf": 99})
    with pytest.raises(ValueError, match="Extra inputs"):
        job_options(base, {"checkpoint": "/etc/passwd"})  # never a per-job option
    with pytest.raises(InvalidOption, match="checkpoint"):
        JobOptions.model_validate({"generator": "wav2lip"}).apply(base)
    with_checkpoint = GenerateOptions(cache_dir=tmp_path, checkpoint=tmp_path / "w.pth")
    assert (
        JobOptions.model_validate({"generator": "wav2lip"}).apply(with_checkpoint).generator
        == "wav2lip"
    )
    with pytest.raises(InvalidOption, match="disabled"):
        JobOptions.model_validate({"fault": "generate:hang"}).apply(base, allow_fault=False)


def test_pipeline_settings_come_from_generate_options(tmp_path: Path) -> None:
    settings = ServiceSettings(data_dir=tmp_path, pipeline={"batch_size": 4, "preset": "fast"})
    options = settings.options
    assert (options.batch_size, options.preset) == (4, "fast")
    assert options.cache_dir == tmp_path / "cache"  # under --data-dir when serving
    assert options.max_audio_seconds == 600.0  # the service's own default
    defaults = GenerateOptions()
    assert (options.crf, options.backend, options.stall_timeout) == (
        defaults.crf,
        defaults.backend,
        defaults.stall_timeout,
    )


def test_the_worker_stall_limit_follows_the_pipeline_watchdog(tmp_path: Path) -> None:
    """Item 10: the pipeline names a stalled stage within its stall_timeout; the pool's
    own heartbeat limit is derived from it (the last resort), not a fixed 60 s."""
    settings = ServiceSettings(data_dir=tmp_path, pipeline={"stall_timeout": 4.0})
    assert settings.effective_worker_stall_timeout == 4.0 + 2 * 1.0 + 5.0
    fixed = ServiceSettings(data_dir=tmp_path, worker_stall_timeout=30.0)
    assert fixed.effective_worker_stall_timeout == 30.0


def test_cpu_fallback_and_fps_are_counted() -> None:
    metrics = Metrics()
    metrics.job_succeeded(
        {
            "timings": {"total": 2.0, "stream": 1.0},
            "stage_seconds": {"generate": 1.0},
            "frames": 50,
            "providers_requested": ["CUDAExecutionProvider"],
            "providers_used": ["CPUExecutionProvider"],
            "cpu_fallback": True,
        },
        queued_seconds=0.1,
    )
    text = metrics.render().decode()
    assert metric(text, "heygem_cpu_fallbacks_total") == 1
    assert metric(text, "heygem_generation_fps_bucket", le="25.0") == 1
    assert metric(text, "heygem_stage_seconds_count", stage="generate") == 1
    assert metric(text, "heygem_step_seconds_count", step="stream") == 1
    assert metrics.mean_job_seconds() == 2.0
    metrics.job_ended("failed", "no-progress")
    text = metrics.render().decode()
    assert metric(text, "heygem_stalls_total", kind="pipeline") == 1
    assert metric(text, "heygem_job_failures_total", cause="no-progress") == 1
    assert Metrics().render() != b""  # a registry per instance, nothing shared


def test_redaction_replaces_known_paths_and_hides_server_ones(tmp_path: Path) -> None:
    data = tmp_path / "data"
    redactor = Redactor([data])
    upload = data / "jobs" / "abc" / "audio.wav"
    message = f"'{upload}' could not be decoded: Invalid data found: '{data}/jobs/abc/x.npy'"
    shown = redactor.text(message, {str(upload): "my voice.wav"})
    assert shown == f"'my voice.wav' could not be decoded: Invalid data found: '{HIDDEN}'"
    assert redactor.text("see /v1/generations/{id}") == "see /v1/generations/{id}"


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_no_server_path_survives_redaction(tail: str) -> None:
    root = Path("/srv/heygem-data")
    shown = Redactor([root]).text(f"error at {root}/jobs/{tail} and '{root}'")
    assert "/srv/heygem-data" not in shown


def test_cache_trim_removes_least_recently_used_entries_first(tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    now = time.time()
    for n, age in enumerate((500, 100, 300, 5)):  # seconds since last use
        entry = templates / f"entry-{n}"
        entry.mkdir(parents=True)
        (entry / "crops.npy").write_bytes(b"\0" * 1000)
        os.utime(entry, (now - age, now - age))
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model.onnx").write_bytes(b"\0" * 5000)  # never trimmed
    removed = trim_cache(tmp_path, 2500, keep_newer_than=now - 60)
    assert [p.name for p in removed] == ["entry-0", "entry-2"]  # oldest use first
    assert sorted(p.name for p in templates.iterdir()) == ["entry-1", "entry-3"]
    # A recently used entry stays even when the cap is still exceeded.
    assert [p.name for p in trim_cache(tmp_path, 0, keep_newer_than=now - 60)] == ["entry-1"]
    assert tree_bytes(templates) == 1000
