"""Small readers used by several test modules."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


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
        audio_seconds = float(audio.duration * audio.time_base) if audio and audio.duration else 0.0
    return {"frames": frames, "fps": fps, "audio_seconds": audio_seconds}
