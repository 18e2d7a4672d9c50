"""Wav2Lip's face features cached with the template, and ONNX Runtime's saved graphs:
both make later jobs faster and neither may change a pixel."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from heygem.audio.synth import synth_speech
from heygem.config import GenerateOptions
from heygem.demo import write_wav
from heygem.errors import Cancelled
from heygem.generators import face_features
from heygem.generators.face_features import FACE_FEATURES, features_file, template_face_features
from heygem.generators.loader import export_paths, load_generator
from heygem.generators.runtime import FaceFeatureOrtRunner, OrtRunner
from heygem.pipeline import Pipeline
from tests.helpers import read_gray_frames


def _runner(checkpoint: Path, cache: Path) -> FaceFeatureOrtRunner:
    runner, _ = load_generator(
        "wav2lip",
        checkpoint,
        backend="onnxruntime",
        device="cpu",
        threads=1,
        require_gpu=False,
        cache_dir=cache,
    )
    assert isinstance(runner, FaceFeatureOrtRunner)
    return runner


def _crops(directory: Path, frames: int) -> Path:
    rng = np.random.default_rng(1)
    path = directory / "crops-face96.npy"
    directory.mkdir(parents=True, exist_ok=True)
    np.save(path, rng.integers(0, 256, (frames, 96, 96, 3), dtype=np.uint8))
    return path


def _batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    face = rng.random((3, 3, 96, 96), dtype=np.float32)
    mel = (rng.random((3, 1, 80, 16), dtype=np.float32) * 8 - 4).astype(np.float32)
    return face, mel


def test_the_two_halves_compute_what_the_whole_graph_does(
    wav2lip_checkpoint: Path, tmp_path: Path
) -> None:
    split = _runner(wav2lip_checkpoint, tmp_path / "c")
    whole = OrtRunner(
        export_paths("wav2lip", wav2lip_checkpoint, tmp_path / "c").onnx, "cpu", 1, False
    )
    face, mel = _batch(0)
    features = split.encode(face)
    assert features.shape == (3, FACE_FEATURES)
    np.testing.assert_allclose(split.decode(features, mel), whole.run(face, mel), atol=1e-5)
    np.testing.assert_array_equal(split.run(face, mel), split.decode(features, mel))


@pytest.mark.parametrize("streams", [1, 2])
def test_features_are_computed_once_and_read_back(
    wav2lip_checkpoint: Path, tmp_path: Path, streams: int
) -> None:
    runner = _runner(wav2lip_checkpoint, tmp_path / "c")
    crops = _crops(tmp_path / "template", 70)  # batches of 32: the last one partial
    progress: list[tuple[int, int]] = []
    first = template_face_features(
        runner, crops, "fp", on_progress=lambda d, t: progress.append((d, t)), streams=streams
    )
    assert first is not None and first.shape == (70, FACE_FEATURES)
    assert progress == [(32, 70), (64, 70), (70, 70)]  # in order, whatever ran at once
    face = np.load(crops)[[7, 31, 69]].transpose(0, 3, 1, 2).astype(np.float32) * (1.0 / 255.0)
    np.testing.assert_array_equal(first[[7, 31, 69]], runner.encode(np.ascontiguousarray(face)))
    stamp = features_file(crops, "fp").stat().st_mtime_ns
    progress.clear()
    again = template_face_features(
        runner, crops, "fp", on_progress=lambda d, t: progress.append((d, t))
    )
    assert again is not None and progress == []  # read, not computed
    assert features_file(crops, "fp").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(np.asarray(again), np.asarray(first))
    assert [p.name for p in crops.parent.iterdir() if p.name.startswith(".")] == []


def test_a_damaged_features_file_is_computed_again(
    wav2lip_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner = _runner(wav2lip_checkpoint, tmp_path / "c")
    crops = _crops(tmp_path / "template", 5)
    features_file(crops, "fp").write_bytes(b"\x93NUMPY garbage")
    with caplog.at_level(logging.WARNING):
        features = template_face_features(runner, crops, "fp")
    assert features is not None and features.shape == (5, FACE_FEATURES)
    assert "computing them again" in caplog.text


def test_a_cancelled_encoding_leaves_no_file(wav2lip_checkpoint: Path, tmp_path: Path) -> None:
    runner = _runner(wav2lip_checkpoint, tmp_path / "c")
    crops = _crops(tmp_path / "template", 70)

    def cancel(done: int, total: int) -> None:
        if done >= 32:
            raise Cancelled("the job was cancelled")

    with pytest.raises(Cancelled):
        template_face_features(runner, crops, "fp", on_progress=cancel, streams=2)
    assert sorted(p.name for p in crops.parent.iterdir()) == [crops.name]


def test_a_template_too_long_to_cache_runs_the_whole_network(
    wav2lip_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = _runner(wav2lip_checkpoint, tmp_path / "c")
    crops = _crops(tmp_path / "template", 10)
    monkeypatch.setattr(face_features, "MAX_CACHED_BYTES", 9 * face_features.BYTES_PER_FRAME)
    assert template_face_features(runner, crops, "fp") is None
    assert not features_file(crops, "fp").exists()


def test_jobs_on_cached_features_write_the_same_pixels(
    wav2lip_checkpoint: Path, template_mp4: Path, tmp_path: Path
) -> None:
    """First job (features computed), second (read back), and one with the template cache
    off (the whole network per frame): lossless output, so the pixels must be equal."""
    audio = write_wav(
        tmp_path / "speech.wav", synth_speech(2.6, seed=4)
    )  # outlasts the 2 s template
    outputs, timings = [], []
    for name, use_cache in (("first", True), ("second", True), ("whole", False)):
        options = GenerateOptions(
            generator="wav2lip",
            checkpoint=wav2lip_checkpoint,
            cache_dir=tmp_path / "cache",
            use_face_cache=use_cache,
            batch_size=8,
            crf=0,
        )
        result = Pipeline(options).generate(audio, template_mp4, tmp_path / f"{name}.mp4")
        outputs.append(read_gray_frames(tmp_path / f"{name}.mp4"))
        timings.append(result.timings)
    assert outputs[0].shape[0] == 65  # frames 50-64 play the template backwards
    assert "face_features" in timings[0] and "face_features" in timings[1]
    assert "face_features" not in timings[2]  # not a step of a job that runs the whole net
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])
    cached = list((tmp_path / "cache" / "templates").glob("*/face-features-*.npy"))
    assert len(cached) == 1 and np.load(cached[0], mmap_mode="r").shape[1] == FACE_FEATURES


def test_the_optimised_graph_is_saved_once_and_loaded_after(
    wav2lip_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = export_paths("wav2lip", wav2lip_checkpoint, tmp_path / "c")
    _runner(wav2lip_checkpoint, tmp_path / "c")  # exports the graphs
    saved_dir = tmp_path / "saved"
    face, mel = _batch(2)
    reference = OrtRunner(model.onnx, "cpu", 1, False).run(face, mel)
    first = OrtRunner(model.onnx, "cpu", 1, False, optimized_dir=saved_dir)
    saved = sorted(saved_dir.iterdir())
    assert len(saved) == 1 and saved[0].name.endswith(".opt.onnx") and "ort" in saved[0].name
    stamp = saved[0].stat().st_mtime_ns
    second = OrtRunner(model.onnx, "cpu", 1, False, optimized_dir=saved_dir)
    assert saved[0].stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(first.run(face, mel), reference)
    np.testing.assert_array_equal(second.run(face, mel), reference)
    saved[0].write_bytes(b"not a graph")
    with caplog.at_level(logging.WARNING):
        third = OrtRunner(model.onnx, "cpu", 1, False, optimized_dir=saved_dir)
    assert "optimising again" in caplog.text
    np.testing.assert_array_equal(third.run(face, mel), reference)
    assert saved[0].stat().st_size > 1000
    assert [p.name for p in saved_dir.iterdir()] == [saved[0].name]  # no partial files
