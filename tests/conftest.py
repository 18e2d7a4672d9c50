"""Shared fixtures: generated media (speech-like audio, a face video), tiny models."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from heygem.audio.synth import synth_speech
from heygem.config import GenerateOptions
from heygem.demo import iter_template_frames, write_video, write_wav
from tests.helpers import write_aac

SMALL = (480, 360)


@pytest.fixture(scope="session", autouse=True)
def landmark_arrays() -> None:
    """The landmark model's arrays stored before any test, as after a machine's first
    job: no test meets a conversion child it did not start itself."""
    from heygem.face import landmark_store
    from heygem.face.landmarks import default_store, model_path

    landmark_store.convert(model_path(), default_store())


@pytest.fixture(scope="session")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def speech_wav(media: Path) -> Path:
    """5 s of speech-like audio at 16 kHz with a silent lead-in and pauses."""
    return write_wav(media / "speech.wav", synth_speech(5.0, seed=1))


@pytest.fixture(scope="session")
def speech_48k_stereo(media: Path) -> Path:
    """The same kind of audio as 48 kHz stereo AAC in an M4A: any rate/layout must work."""
    samples = synth_speech(3.0, sample_rate=48000, seed=2)
    return write_aac(media / "speech48.m4a", np.stack([samples, samples]), 48000)


@pytest.fixture(scope="session")
def template_mp4(media: Path) -> Path:
    """2 s, 25 fps, 480x360 face video (the bundled portrait, swaying)."""
    return write_video(media / "template.mp4", iter_template_frames(2.0, size=SMALL))


@pytest.fixture(scope="session")
def phone_template(media: Path) -> Path:
    """``template_mp4``'s portrait as a phone stores it: the pixels turned sideways
    (clockwise, 360x480) with a display rotation that players undo."""
    path = media / "phone.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = SMALL[1], SMALL[0], "yuv420p"
        stream.set_display_rotation(90)  # players turn it 90 degrees counterclockwise
        for frame in iter_template_frames(2.0, size=SMALL):
            sideways = np.ascontiguousarray(np.rot90(frame, -1))
            for packet in stream.encode(av.VideoFrame.from_ndarray(sideways, format="bgr24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.fixture(scope="session")
def template_with_gap(media: Path) -> Path:
    """2 s face video whose frames 20-34 show no face (a grey card)."""
    frames = list(iter_template_frames(2.0, size=SMALL))
    for i in range(20, 35):
        frames[i] = np.full_like(frames[i], 128)
    return write_video(media / "template_gap.mp4", frames)


@pytest.fixture(scope="session")
def still_png(media: Path) -> Path:
    import cv2

    frame = next(iter_template_frames(0.04, size=(481, 361)))  # odd sizes on purpose
    path = media / "still.png"
    cv2.imwrite(str(path), frame)
    return path


@pytest.fixture(scope="session")
def faceless_mp4(media: Path) -> Path:
    rng = np.random.default_rng(0)
    frames = [
        np.full((240, 320, 3), 90, np.uint8) + rng.integers(0, 5, (240, 320, 3), dtype=np.uint8)
        for _ in range(10)
    ]
    return write_video(media / "noface.mp4", frames)


@pytest.fixture
def options(tmp_path: Path) -> GenerateOptions:
    """Embedded defaults with a private cache and a small batch (partial last batches)."""
    return GenerateOptions(cache_dir=tmp_path / "cache", batch_size=8, stall_timeout=5.0)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for tests that only need a warm template/ONNX cache, not a cold one."""
    return tmp_path_factory.mktemp("cache")
