"""Per-stage costs, each also given as a share of the 720p transcode floor of the same run.

``share_of_floor`` = the stage's cost for as many frames as the floor handles, divided
by the floor's time: 0.5 means the stage alone costs half a plain transcode.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from benchmarks.support import (
    DEFAULTS,
    FPS,
    MAIN,
    SCALE,
    Baselines,
    Media,
    Models,
    Pipelines,
    auto,
    best_of,
    decoded_frames,
    floor_seconds,
    frames_for,
    pedantic,
    pedantic_paired,
    random_batch,
)
from heygem.audio.features import melspectrogram, voice_activity
from heygem.composite import composite
from heygem.face.template import plan_template
from heygem.media.audio import decode_audio_mono
from heygem.media.frames import iter_template_frames
from heygem.media.writer import Mp4Writer
from heygem.resources import ThreadBudget

N_FLOOR = frames_for(SCALE.audio_seconds["short"])
GENERATORS = ("rewrite", "wav2lip")
BACKENDS = ("onnxruntime", "torch")  # ORT first: torch divides by it


def _stage_info(stage: str, seconds: float, frames: int, floor: float) -> dict[str, Any]:
    per_frame = seconds / frames
    return {
        "kind": "stage",
        "stage": stage,
        "resolution": MAIN,
        "frames": frames,
        "seconds": round(seconds, 6),
        "per_frame_ms": round(per_frame * 1000.0, 4),
        "share_of_floor": round(per_frame * N_FLOOR / floor, 4),
    }


@pytest.fixture(scope="module")
def floor(baselines: Baselines, media: Media, budget: ThreadBudget) -> float:
    return floor_seconds(baselines, media, budget, MAIN, N_FLOOR)


@pytest.mark.benchmark(group="stage")
def test_decode(benchmark: Any, media: Media, floor: float) -> None:
    path, (width, height) = media.template(MAIN), media.size(MAIN)
    samples = pedantic(
        benchmark, lambda: sum(1 for _ in iter_template_frames(path, width, height)), n_rounds=3
    )
    assert samples.last > 0
    benchmark.extra_info.update(_stage_info("decode", samples.best, samples.last, floor))


@pytest.mark.benchmark(group="stage")
def test_mel_features(benchmark: Any, media: Media, floor: float) -> None:
    wav = decode_audio_mono(media.audio("short"))
    samples = auto(benchmark, melspectrogram, wav)
    frames = frames_for(media.audio_seconds("short"))
    info = _stage_info("mel", samples.best, frames, floor)
    info["audio_s"] = media.audio_seconds("short")
    benchmark.extra_info.update(info)


@pytest.mark.benchmark(group="stage")
def test_voice_activity(benchmark: Any, media: Media, floor: float) -> None:
    wav = decode_audio_mono(media.audio("short"))
    frames = frames_for(media.audio_seconds("short"))
    samples = auto(benchmark, voice_activity, wav, frames, FPS)
    benchmark.extra_info.update(_stage_info("voice_activity", samples.best, frames, floor))


def _plan(media: Media, pipelines: Pipelines, cache: Any) -> Any:
    (width, height), crop = media.size(MAIN), pipelines.get().load()[1].crop
    return plan_template(
        media.template(MAIN),
        width,
        height,
        crop,
        cache_dir=cache,
        max_frames=DEFAULTS.max_template_frames,
    )


@pytest.mark.benchmark(group="stage")
def test_face_detect_cold(
    benchmark: Any, media: Media, pipelines: Pipelines, baselines: Baselines, floor: float
) -> None:
    """Detection, smoothing and crop extraction on an empty cache."""
    samples = pedantic(
        benchmark,
        lambda cache: _plan(media, pipelines, cache),
        n_rounds=2,
        setup=lambda: ((pipelines.fresh_cache(),), {}),
    )
    plan = samples.last
    assert not plan.from_cache and plan.valid.any()
    baselines.record("face:cold", samples.best)
    info = _stage_info("face_detect_cold", samples.best, plan.n_frames, floor)
    info["faceless_frames"] = plan.faceless_frames
    benchmark.extra_info.update(info)


@pytest.mark.benchmark(group="stage")
def test_face_detect_cache_hit(
    benchmark: Any, media: Media, pipelines: Pipelines, baselines: Baselines, floor: float
) -> None:
    pipelines.plan(MAIN)
    plan = _plan(media, pipelines, pipelines.warm_cache)
    assert plan.from_cache
    samples = auto(benchmark, _plan, media, pipelines, pipelines.warm_cache)
    cold = baselines.get(
        "face:cold", lambda: best_of(1, lambda: _plan(media, pipelines, pipelines.fresh_cache()))
    )
    info = _stage_info("face_detect_cache_hit", samples.best, plan.n_frames, floor)
    info["speedup_vs_cold"] = round(cold / samples.best, 1)
    benchmark.extra_info.update(info)


@pytest.mark.benchmark(group="stage")
def test_landmarks_vs_dlib(benchmark: Any, media: Media, floor: float) -> None:
    """68 landmarks on the template's faces: the compiled kernel on the stored arrays vs
    dlib's own predictor (loaded beforehand: its 0.36 s load is not in the ratio), the
    same frames and boxes, paired round by round."""
    from heygem.face.detect import Box, FaceDetector
    from heygem.face.landmarks import _predictor, landmarks, stored_predictor
    from heygem.media.frames import planes

    predictor = stored_predictor()
    if predictor is None:
        pytest.skip("the landmark kernel is not built or its arrays are not stored")
    path, (width, height) = media.template(MAIN), media.size(MAIN)
    detector, faces, decoded = FaceDetector(), list[tuple[np.ndarray, Box]](), 0
    for frame in decoded_frames(path, width, height, limit=60):
        gray = np.array(planes(frame)[0])
        box = detector.detect(gray, faces[-1][1] if faces else None)
        decoded += 1
        if box is not None:
            faces.append((gray, box))
    assert faces and len(faces) >= 0.8 * decoded
    _predictor()  # dlib's model loaded once, outside the timing

    def ours() -> None:
        for gray, box in faces:
            landmarks(gray, box, predictor)

    def dlibs() -> None:
        for gray, box in faces:
            landmarks(gray, box)

    measured = pedantic_paired(benchmark, ours, dlibs, n_rounds=5)
    info = _stage_info("landmarks", measured.samples.best, len(faces), floor)
    info["dlib_per_frame_ms"] = round(measured.base.best / len(faces) * 1000.0, 4)
    info["ratio_to_dlib"] = round(measured.ratio, 3)
    benchmark.extra_info.update(info)


@pytest.mark.benchmark(group="generator")
@pytest.mark.parametrize(
    ("generator", "backend", "batch"),
    [(g, b, n) for g in GENERATORS for n in SCALE.batch_sizes for b in BACKENDS],
    ids=lambda v: f"b{v}" if isinstance(v, int) else str(v),
)
def test_generator_batch(
    benchmark: Any, models: Models, floor: float, generator: str, backend: str, batch: int
) -> None:
    runner, spec = models.runner(generator, backend)
    face, mel = random_batch(spec.crop.size, batch, generator=generator)
    runner.run(face, mel)  # the first call allocates; not what a running job pays
    n_rounds = 20 if generator == "rewrite" else (2 if batch >= 32 else 3)
    ratio = 1.0
    if backend == "onnxruntime":
        samples = pedantic(benchmark, lambda: runner.run(face, mel), n_rounds=n_rounds)
    else:  # each round right after an ORT run of the same batch
        ort_runner = models.runner(generator, "onnxruntime")[0]
        paired = pedantic_paired(
            benchmark,
            lambda: runner.run(face, mel),
            lambda: ort_runner.run(face, mel),
            n_rounds=n_rounds,
        )
        samples, ratio = paired.samples, paired.ratio
    assert samples.last.shape == face.shape
    info = _stage_info(f"generate[{generator}/{backend}]", samples.best, batch, floor)
    info.update(
        kind="generator",
        generator=generator,
        backend=backend,
        batch=batch,
        fps=round(batch / samples.best, 1),
        providers=list(runner.info.used),
        ratio_to_ort=round(ratio, 3),
    )
    benchmark.extra_info.update(info)


@pytest.mark.benchmark(group="stage")
def test_composite(benchmark: Any, media: Media, pipelines: Pipelines, floor: float) -> None:
    """One 720p frame, mouth region: resize, colour-convert and feathered blend."""
    plan = pipelines.plan(MAIN)
    spec = pipelines.get().load()[1]
    index = int(np.flatnonzero(plan.valid)[0])
    width, height = media.size(MAIN)
    frame = list(decoded_frames(media.template(MAIN), width, height, limit=index + 1))[-1]
    region = tuple(int(v) for v in plan.regions[index])
    crop = np.random.default_rng(0).integers(
        0, 256, (spec.crop.size, spec.crop.size, 3), dtype=np.uint8
    )
    samples = auto(benchmark, composite, frame, region, crop, spec.crop.kind)
    info = _stage_info("composite", samples.best, 1, floor)
    info["region"] = list(region)
    benchmark.extra_info.update(info)


@pytest.mark.benchmark(group="stage")
def test_encode_mux(benchmark: Any, media: Media, budget: ThreadBudget, floor: float) -> None:
    """Mp4Writer (libx264 + AAC + mux) on pre-decoded 720p frames: encode alone."""
    width, height = media.size(MAIN)
    frames = list(decoded_frames(media.template(MAIN), width, height, limit=N_FLOOR))
    frames = (frames * (N_FLOOR // len(frames) + 1))[:N_FLOOR]
    audio, out = media.audio("short"), media.output("encode")

    def encode() -> int:
        writer = Mp4Writer(
            out,
            width=width,
            height=height,
            fps=FPS,
            preset=DEFAULTS.preset,
            crf=DEFAULTS.crf,
            threads=budget.x264_threads,
            audio_path=audio,
        )
        for frame in frames:
            writer.write_video(frame)
        writer.finish()
        return writer.frames_written

    samples = pedantic(benchmark, encode, n_rounds=3)
    assert samples.last == N_FLOOR
    info = _stage_info("encode_mux", samples.best, N_FLOOR, floor)
    info["cpu_util"] = round(samples.cpu_util, 2)
    benchmark.extra_info.update(info)
