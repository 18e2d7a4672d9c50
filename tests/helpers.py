"""Small helpers used by several test modules: polling, media readers."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np


def wait_for(
    condition: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.02,
    what: str = "the condition",
) -> Any:
    """Poll until ``condition()`` is truthy and return its value: the one way tests wait
    (never a fixed sleep); fails with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return value


def read_gray_frames(path: Path) -> np.ndarray:
    """The luma (Y) plane of every frame, exactly as decoded (no range conversion)."""
    with av.open(str(path)) as container:
        return np.stack(
            [f.to_ndarray(format="yuv420p")[: f.height] for f in container.decode(video=0)]
        )


def stream_summary(path: Path) -> dict[str, float]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        fps = float(video.average_rate or 0)
        frames = sum(1 for _ in container.decode(video=0))
        audio = container.streams.audio[0] if container.streams.audio else None
        # The stream duration honours the MP4 edit list (AAC priming), as players do.
        audio_seconds = (
            float(audio.duration * audio.time_base)
            if audio and audio.duration and audio.time_base
            else 0.0
        )
    return {"frames": frames, "fps": fps, "audio_seconds": audio_seconds}


def espeak_wav(path: Path, text: str, *, speed: int = 150, pitch: int = 50) -> Path:
    """Real speech from espeak-ng (Debian's espeak-ng package); skips the test when the
    binary is absent, naming the package to install."""
    import shutil
    import subprocess

    import pytest

    binary = shutil.which("espeak-ng")
    if binary is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no real speech")
    subprocess.run(
        [binary, "-w", str(path), "-s", str(speed), "-p", str(pitch), text],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


SENTENCE_A = (
    "The quick brown fox jumps over the lazy dog. Maybe we should meet at the park, "
    "before the big parade begins."
)
SENTENCE_B = (
    "Please bring my papers back by Monday morning. I would like to read them again, "
    "and then we can talk about the budget."
)


def write_aac(path: Path, channels: np.ndarray, sample_rate: int, fmt: str | None = None) -> Path:
    """``channels`` (1 or 2 rows of float samples) as AAC in ``path``'s container (or
    ``fmt``, e.g. "mpegts")."""
    layout = "mono" if len(channels) == 1 else "stereo"
    with av.open(str(path), "w", format=fmt) as out:
        stream = out.add_stream("aac", rate=sample_rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(channels, dtype=np.float32), format="fltp", layout=layout
        )
        frame.sample_rate = sample_rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return path


def ffmpeg_gray_frames(path: Path, width: int, height: int) -> np.ndarray:
    """The luma (Y) plane of every frame as the ffmpeg CLI shows it (turned by its display
    rotation): an independent reference for what a player shows."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "yuv420p", "-"],
        check=True,
        capture_output=True,
    ).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, height * width * 3 // 2)
    return frames[:, : height * width].reshape(-1, height, width)
