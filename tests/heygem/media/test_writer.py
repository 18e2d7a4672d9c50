"""The MP4 writer: frame types are x264's choice, whatever the template's were."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from heygem.audio.synth import synth_speech
from heygem.demo import write_wav
from heygem.media.frames import iter_template_frames
from heygem.media.writer import Mp4Writer


def _intra_only_template(path: Path, frames: int) -> Path:
    """An MJPEG clip: every decoded frame says it is a keyframe (I)."""
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mjpeg", rate=25)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuvj420p"
        for i in range(frames):
            image = np.full((120, 160, 3), 40, np.uint8)
            image[40:80, 20 + i : 60 + i] = 220  # a moving square: real motion to code
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def test_an_intra_only_template_does_not_make_every_output_frame_a_keyframe(
    tmp_path: Path,
) -> None:
    template = _intra_only_template(tmp_path / "intra.avi", 50)
    audio = write_wav(tmp_path / "a.wav", synth_speech(2.0, seed=1))
    writer = Mp4Writer(
        tmp_path / "out.mp4", width=160, height=120, fps=25.0, preset="veryfast", crf=23,
        threads=1, audio_path=audio,
    )  # fmt: skip
    decoded = list(iter_template_frames(template, 160, 120))
    assert all(frame.key_frame for frame in decoded)
    for frame in decoded:
        writer.write_video(frame)
    writer.finish()
    with av.open(str(tmp_path / "out.mp4")) as result:
        keyframes = sum(frame.key_frame for frame in result.decode(video=0))
    assert keyframes <= 2, keyframes
