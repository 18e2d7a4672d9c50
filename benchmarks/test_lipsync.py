"""The embedded generator's cost per frame and its lip-sync quality, in one table.

Two 720p templates: the bundled portrait (a still face: the geometric jaw move renders
every voiced frame) and a talking template (the portrait generated speaking other audio:
retrieval of its own mouths, the graph only where the voice asks for more). Each warm job
(template cache filled) is timed against the transcode floor in the same rounds; the
output's sync score (``diagnostics.syncscore``) is recorded with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from benchmarks.support import (
    MAIN,
    Media,
    Pipelines,
    frames_for,
    pedantic_paired,
    rounds,
    run_floor,
    run_job,
)
from diagnostics.syncscore import sync_score
from heygem.audio.synth import synth_speech
from heygem.demo import write_wav
from heygem.resources import ThreadBudget

TARGET_RATIO = 1.5  # whole 720p job, warm template cache, vs decode + x264 veryfast


def _talking_template(media: Media, pipelines: Pipelines) -> Path:
    """The portrait speaking other audio (seed 11): a template whose mouth really moves."""
    path = media.root / f"talking-{MAIN}.mp4"
    if not path.exists():
        seconds = media.audio_seconds("short")
        speech = write_wav(media.root / "talking-speech.wav", synth_speech(seconds, seed=11))
        pipelines.get().generate(speech, media.template(MAIN), path)
    return path


@pytest.mark.benchmark(group="lipsync")
@pytest.mark.parametrize("template", ["still", "talking"])
def test_rewrite_cost_and_sync(
    benchmark: Any, media: Media, pipelines: Pipelines, budget: ThreadBudget, template: str
) -> None:
    pipeline = pipelines.get()
    video = media.template(MAIN) if template == "still" else _talking_template(media, pipelines)
    audio, out = media.audio("short"), media.output(f"lipsync-{template}")
    n_frames = frames_for(media.audio_seconds("short"))
    run_job(pipeline, audio, video, out)  # fills the template cache (analysis is once)
    paired = pedantic_paired(
        benchmark,
        lambda: run_job(pipeline, audio, video, out),
        lambda: run_floor(media, budget, MAIN, n_frames),
        n_rounds=rounds(3),
    )
    assert paired.samples.last.result.template_from_cache
    score = sync_score(out, audio)
    best, floor = paired.samples.best, paired.base.best
    benchmark.extra_info.update(
        kind="lipsync",
        template=template,
        resolution=MAIN,
        frames=n_frames,
        seconds=round(best, 3),
        ms_per_frame=round(1000 * best / n_frames, 2),
        floor_ms_per_frame=round(1000 * floor / n_frames, 2),
        ratio_to_floor=round(paired.ratio, 3),
        target=TARGET_RATIO,
        meets_target=bool(paired.ratio <= TARGET_RATIO),
        sync_score=round(score.score, 3),
        sync_control=round(score.control, 3),
        sync_lag=score.lag,
    )
