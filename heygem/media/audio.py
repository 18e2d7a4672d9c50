"""Audio decoding: any container/codec/rate/layout to 16 kHz mono float32 for features."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from heygem.errors import EmptyAudio, MediaUnreadable
from heygem.media.probe import open_container

FEATURE_SAMPLE_RATE = 16000


def decode_audio_mono(path: Path, sample_rate: int = FEATURE_SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio stream, resampled to ``sample_rate`` mono float32 in [-1, 1]."""
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
    chunks: list[np.ndarray] = []
    with open_container(path, "audio") as container:
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler count samples, not trust odd timestamps
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            raise MediaUnreadable(
                f"audio {str(path)!r} is damaged and stopped decoding: {exc}",
                hint="re-export the audio (e.g. to WAV) and try again",
            ) from exc
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if samples.size < sample_rate // 25:  # less than one video frame of sound
        held = (
            f"holds {samples.size / sample_rate:.3f} s of sound, less than one video frame"
            if samples.size
            else "contains no samples"
        )
        raise EmptyAudio(
            f"audio {str(path)!r} {held}",
            hint="pass audio with at least a fraction of a second of speech",
        )
    return samples
