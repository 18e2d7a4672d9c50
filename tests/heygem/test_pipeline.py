"""The whole pipeline on generated media, checked the way a user would look at the output."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from heygem.audio.features import frame_count
from heygem.config import GenerateOptions
from heygem.media.audio import decode_audio_mono
from heygem.media.frames import template_index
from heygem.pipeline import Pipeline
from tests.helpers import ffmpeg_gray_frames, read_gray_frames, stream_summary


def _template_gray(template: Path, n_out: int) -> np.ndarray:
    """Template frames in output order (ping-pong), to compare the output against."""
    frames = read_gray_frames(template)
    order = [template_index(i, 25.0, 25.0, len(frames)) for i in range(n_out)]
    return frames[order]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory, speech_wav: Path, template_mp4: Path):
    out = tmp_path_factory.mktemp("out") / "result.mp4"
    options = GenerateOptions(cache_dir=tmp_path_factory.mktemp("c"), batch_size=8)
    result = Pipeline(options).generate(speech_wav, template_mp4, out)
    return result, out


def test_output_has_exact_frames_duration_and_audio(demo_run, speech_wav: Path) -> None:
    result, out = demo_run
    samples = decode_audio_mono(speech_wav).size
    expected = math.ceil(samples * 25 / 16000)
    summary = stream_summary(out)
    assert result.frames == expected == summary["frames"]
    assert summary["fps"] == 25
    assert abs(summary["audio_seconds"] - samples / 16000) < 0.01
    assert result.output == out and out.exists()
    assert not list(out.parent.glob(".*part*")), "temporary files left next to the output"
    assert result.providers_used == ("CPUExecutionProvider",)
    assert set(result.timings) >= {"audio_features", "face_track", "stream", "total"}


def test_pixels_outside_the_mouth_are_unchanged(demo_run, template_mp4: Path) -> None:
    _, out = demo_run
    produced = read_gray_frames(out).astype(np.int16)
    original = _template_gray(template_mp4, len(produced)).astype(np.int16)
    diff = np.abs(produced - original)
    # The head sways across the middle; the left/right margins and top never hold the mouth.
    outside = np.concatenate(
        [diff[:, :, :100].ravel(), diff[:, :, -100:].ravel(), diff[:, :80, :].ravel()]
    )
    assert outside.mean() < 1.5, "background changed beyond re-encoding noise"


def test_mouth_moves_with_speech_and_rests_in_silence(
    demo_run, template_mp4: Path, speech_wav: Path
) -> None:
    from heygem.audio.features import voice_activity

    _, out = demo_run
    produced = read_gray_frames(out).astype(np.float32)
    original = _template_gray(template_mp4, len(produced)).astype(np.float32)
    # The mouth of the 480x360 test template sits around (x 210, y 148).
    change = np.abs(produced - original)[:, 120:180, 170:250].mean(axis=(1, 2))
    wav = decode_audio_mono(speech_wav)
    activity = voice_activity(wav, len(produced), 25.0)
    speech_change = change[activity.active].mean()
    silence_change = change[~activity.active].mean()
    assert speech_change > 3 * silence_change, (speech_change, silence_change)

    # Envelope vs mouth opening: clearly above a control shifted by a second.
    envelope = activity.loudness_db
    aligned = np.corrcoef(envelope, change)[0, 1]
    shifted = np.corrcoef(np.roll(envelope, 25), change)[0, 1]
    assert aligned > 0.4 and aligned > shifted + 0.2, (aligned, shifted)


def test_long_audio_loops_template_and_keeps_last_partial_batch(
    options: GenerateOptions, speech_wav: Path, template_mp4: Path, tmp_path: Path
) -> None:
    # 5 s audio over a 2 s template: ping-pong; batch 7 leaves a partial last batch.
    out = tmp_path / "loop.mp4"
    result = Pipeline(replace(options, batch_size=7)).generate(speech_wav, template_mp4, out)
    assert result.frames % 7 != 0
    assert stream_summary(out)["frames"] == result.frames
    produced = read_gray_frames(out).astype(np.int16)
    original = _template_gray(template_mp4, len(produced)).astype(np.int16)
    # Backgrounds follow the ping-pong order (frame 60 shows template frame 38).
    assert np.abs(produced[:, :, :100] - original[:, :, :100]).mean() < 1.5


def test_short_audio_cuts_template(
    options: GenerateOptions, template_mp4: Path, tmp_path: Path
) -> None:
    from heygem.audio.synth import synth_speech
    from heygem.demo import write_wav

    audio = write_wav(tmp_path / "short.wav", synth_speech(0.9, seed=3))
    out = tmp_path / "short.mp4"
    result = Pipeline(options).generate(audio, template_mp4, out)
    assert result.frames == frame_count(int(0.9 * 16000), 25.0) == stream_summary(out)["frames"]


def test_any_rate_and_layout_and_a_still_image(
    options: GenerateOptions, speech_48k_stereo: Path, still_png: Path, tmp_path: Path
) -> None:
    out = tmp_path / "still.mp4"
    result = Pipeline(options).generate(speech_48k_stereo, still_png, out)
    summary = stream_summary(out)
    assert (result.width, result.height) == (480, 360)  # odd sides trimmed for yuv420p
    assert summary["frames"] == result.frames
    assert abs(summary["audio_seconds"] - 3.0) < 0.08


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")
def test_a_phone_video_stored_sideways_comes_out_as_players_show_it(
    options: GenerateOptions, speech_wav: Path, phone_template: Path, tmp_path: Path
) -> None:
    """Phones store a portrait recording sideways with a display rotation; players turn it
    upright, and so does the job: the face is found and the output stands upright."""
    out = tmp_path / "phone.mp4"
    result = Pipeline(options).generate(speech_wav, phone_template, out)
    assert (result.width, result.height) == (480, 360)
    assert result.faceless_frames == 0
    produced = read_gray_frames(out).astype(np.int16)
    shown = ffmpeg_gray_frames(phone_template, 480, 360)  # what a player shows
    order = [template_index(i, 25.0, 25.0, len(shown)) for i in range(len(produced))]
    diff = np.abs(produced - shown[order].astype(np.int16))
    assert diff[:, :, :100].mean() < 2.0 and diff[:, :80, :].mean() < 2.0


def test_faceless_frames_pass_through_with_a_warning(
    options: GenerateOptions, speech_wav: Path, template_with_gap: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gap.mp4"
    result = Pipeline(options).generate(speech_wav, template_with_gap, out)
    assert result.faceless_frames >= 10
    assert any("no detectable face" in w for w in result.warnings)
    produced = read_gray_frames(out).astype(int)
    original = read_gray_frames(template_with_gap).astype(int)
    assert np.abs(produced[20:35] - original[20:35]).max() <= 2  # the grey card, untouched


def test_template_cache_skips_detection_second_time(
    options: GenerateOptions, speech_wav: Path, template_mp4: Path, tmp_path: Path
) -> None:
    pipeline = Pipeline(options)
    first = pipeline.generate(speech_wav, template_mp4, tmp_path / "a.mp4")
    second = pipeline.generate(speech_wav, template_mp4, tmp_path / "b.mp4")
    assert not first.template_from_cache and second.template_from_cache
    assert second.timings["face_track"] < first.timings["face_track"] / 5


@pytest.mark.parametrize("workers", [2])
def test_dataloader_workers_are_real_processes(
    options: GenerateOptions, speech_wav: Path, template_mp4: Path, tmp_path: Path, workers: int
) -> None:
    import multiprocessing

    out = tmp_path / "workers.mp4"
    opts = replace(options, num_workers=workers, stall_timeout=20.0)
    result = Pipeline(opts).generate(speech_wav, template_mp4, out)
    assert stream_summary(out)["frames"] == result.frames
    assert multiprocessing.active_children() == []  # every worker reaped


def test_torch_backend_matches_onnxruntime(
    options: GenerateOptions, speech_wav: Path, template_mp4: Path, tmp_path: Path
) -> None:
    # Lossless output, so the comparison sees the generators and not the encoder's choices.
    lossless = replace(options, crf=0)
    ort_out, torch_out = tmp_path / "ort.mp4", tmp_path / "torch.mp4"
    Pipeline(lossless).generate(speech_wav, template_mp4, ort_out)
    result = Pipeline(replace(lossless, backend="torch")).generate(
        speech_wav, template_mp4, torch_out
    )
    assert result.providers_used == ("cpu",)
    a = read_gray_frames(ort_out).astype(np.int16)
    b = read_gray_frames(torch_out).astype(np.int16)
    assert np.abs(a - b).max() <= 1 and np.abs(a - b).mean() < 0.01


def test_cancel_leaves_no_output(
    options: GenerateOptions, speech_wav: Path, template_mp4: Path, tmp_path: Path
) -> None:
    import threading

    from heygem.errors import Cancelled

    cancel = threading.Event()
    out = tmp_path / "cancelled.mp4"

    def progress(done: int, total: int) -> None:
        if done == 10:
            cancel.set()

    with pytest.raises(Cancelled):
        Pipeline(options).generate(speech_wav, template_mp4, out, progress=progress, cancel=cancel)
    assert list(tmp_path.glob("*.mp4")) == [] and list(tmp_path.glob(".*")) == []


def test_a_full_disk_is_named_as_such_and_leaves_no_partial_output(
    tmp_path: Path, speech_wav: Path, template_mp4: Path
) -> None:
    # The output directory is a 32 KiB tmpfs in a private mount namespace: the encoder runs
    # out of space after a few frames, for real.
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    full = tmp_path / "full"
    full.mkdir()
    log = tmp_path / "job.jsonl"
    script = (
        f"mount -t tmpfs -o size=32k tmpfs {full} && "
        f"{sys.executable} -m heygem.cli generate -a {speech_wav} -i {template_mp4} "
        f"-o {full}/out.mp4 -q --cache-dir {tmp_path / 'cache'} --log-json {log}; "
        f"code=$?; echo left: $(ls -A {full}); exit $code"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=300
    )
    if "mount:" in proc.stderr or "unshare:" in proc.stderr:
        pytest.skip(f"no private tmpfs here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 22, proc.stderr
    assert "free space" in proc.stderr
    failed = [json.loads(line) for line in log.read_text().splitlines()]
    causes = [e["cause"] for e in failed if e.get("event") == "job_failed"]
    assert causes == ["disk-full"]
    assert proc.stdout.strip() == "left:", "a partial output was left on the full disk"


def test_a_mouth_plan_that_fails_stops_the_decoding_already_started(
    options: GenerateOptions,
    speech_wav: Path,
    template_mp4: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The template starts decoding while the mouth plan is made: when the plan fails,
    the decoding stops with it, and nothing is left behind."""
    import threading

    import heygem.pipeline
    from heygem.errors import InputTooLarge

    def failing_plan(*args: object, **kwargs: object) -> None:
        raise InputTooLarge("rehearsed: the mouth plan failed", hint="nothing to do")

    monkeypatch.setattr(heygem.pipeline, "generator_samples", failing_plan)
    out = tmp_path / "never.mp4"
    with pytest.raises(InputTooLarge, match="rehearsed"):
        Pipeline(options).generate(speech_wav, template_mp4, out)
    assert list(tmp_path.glob("*.mp4")) == [] and list(tmp_path.glob(".*")) == []
    assert not [t for t in threading.enumerate() if t.name.startswith("heygem-decode")]
