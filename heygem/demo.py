"""Inputs for ``heygem demo`` built on the spot: nothing downloaded.

The template is a short 720p clip made from the bundled public-domain NASA portrait of
astronaut Eileen Collins (the image scikit-image ships as ``astronaut``), with a gentle
head sway so tracking and smoothing are exercised; the audio is synthetic speech-like
sound with pauses, so both speech and silence handling show.
"""

from __future__ import annotations

import math
import wave
from collections.abc import Iterable, Iterator
from fractions import Fraction
from importlib import resources
from pathlib import Path

import av
import cv2
import numpy as np

from heygem.audio.synth import synth_speech

PORTRAIT = "astronaut.png"


def load_portrait() -> np.ndarray:
    data = resources.files("heygem.assets").joinpath(PORTRAIT).read_bytes()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise RuntimeError(f"bundled image {PORTRAIT} is unreadable; reinstall heygem-harness")
    return image


def iter_template_frames(
    seconds: float, fps: float = 25.0, size: tuple[int, int] = (1280, 720), sway: float = 1.0
) -> Iterator[np.ndarray]:
    """BGR frames of the portrait's head and shoulders, centred, swaying slightly."""
    width, height = size
    portrait = load_portrait()
    head = portrait[0:360, 64:448]  # head and shoulders, 384 x 360
    scale = height / head.shape[0]
    head = cv2.resize(head, (round(head.shape[1] * scale), height), interpolation=cv2.INTER_AREA)
    backdrop = cv2.GaussianBlur(cv2.resize(portrait, (width, height)), (0, 0), 25) // 2
    x_off = (width - head.shape[1]) // 2
    for i in range(max(1, round(seconds * fps))):
        t = i / fps
        angle = sway * 1.5 * math.sin(2 * math.pi * 0.4 * t)
        dx = sway * 0.012 * width * math.sin(2 * math.pi * 0.25 * t)
        dy = sway * 0.008 * height * math.sin(2 * math.pi * 0.33 * t + 1.0)
        matrix = cv2.getRotationMatrix2D((head.shape[1] / 2, head.shape[0] * 0.4), angle, 1.0)
        matrix[:, 2] += np.array([x_off + dx, dy])
        frame = cv2.warpAffine(
            head, matrix, (width, height), borderMode=cv2.BORDER_TRANSPARENT, dst=backdrop.copy()
        )
        yield frame


def write_video(path: Path, frames: Iterable[np.ndarray], fps: float = 25.0, crf: int = 20) -> Path:
    with av.open(str(path), mode="w") as out:
        stream = None
        for frame in frames:
            if stream is None:
                stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
                stream.height, stream.width = frame.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = {"preset": "veryfast", "crf": str(crf)}
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="bgr24")):
                out.mux(packet)
        if stream is not None:
            for packet in stream.encode(None):
                out.mux(packet)
    return path


def write_wav(path: Path, samples: np.ndarray, sample_rate: int = 16000) -> Path:
    """16-bit mono PCM WAV (the stdlib writes the header even for zero samples)."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm.tobytes())
    return path


def build_demo_inputs(
    directory: Path, *, audio_seconds: float = 8.0, template_seconds: float = 4.0, seed: int = 0
) -> tuple[Path, Path]:
    """Write (audio.wav, template.mp4) into ``directory``, reusing them if present."""
    directory.mkdir(parents=True, exist_ok=True)
    audio = directory / f"speech-{audio_seconds:g}s-seed{seed}.wav"
    video = directory / f"astronaut-{template_seconds:g}s-720p.mp4"
    if not audio.exists():
        write_wav(audio, synth_speech(audio_seconds, seed=seed))
    if not video.exists():
        tmp = video.with_suffix(".part.mp4")
        write_video(tmp, iter_template_frames(template_seconds))
        tmp.replace(video)
    return audio, video
