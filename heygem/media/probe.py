"""Open and validate inputs up front, so bad media fails before any work starts."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av

from heygem.errors import InputNotFound, InputTooLarge, MediaUnreadable, NoAudioStream

log = logging.getLogger(__name__)

STILL_IMAGE_FPS = 25.0
# Demuxers that yield a single picture: a still image used as the template.
_IMAGE_FORMATS = {"image2", "png_pipe", "jpeg_pipe", "webp_pipe", "bmp_pipe", "tiff_pipe"}


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: float
    codec: str
    is_still_image: bool
    # Container's estimate; the face-track pass counts the real number.
    estimated_frames: int


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    sample_rate: int
    channels: int
    codec: str
    duration: float | None


def require_file(path: Path, what: str) -> Path:
    if not path.exists():
        raise InputNotFound(f"{what} {str(path)!r} does not exist", hint="check the path")
    if not path.is_file():
        raise InputNotFound(f"{what} {str(path)!r} is not a file", hint="pass a media file")
    if not os.access(path, os.R_OK):
        raise InputNotFound(f"{what} {str(path)!r} is not readable", hint="check permissions")
    if path.stat().st_size == 0:
        raise MediaUnreadable(f"{what} {str(path)!r} is empty (0 bytes)", hint="re-export it")
    return path


# The demuxers an input is read with: media files, nothing else. A playlist or script
# demuxer (hls, concat, dash, sdp, ...) follows the paths and URLs written inside the file,
# so an uploaded .m3u8 naming /some/secret.ts made a service read and return any local
# media file. Names as FFmpeg gives them ("mov,mp4,..." is one demuxer).
INPUT_FORMATS = (
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "avi",
    "flv",
    "mpegts",
    "mpeg",
    "gif",
    "wav",
    "aiff",
    "mp3",
    "aac",
    "flac",
    "ogg",
    "amr",
    *sorted(_IMAGE_FORMATS),
)
_INPUT_OPTIONS = {"format_whitelist": ",".join(INPUT_FORMATS), "protocol_whitelist": "file"}


def open_input(path: Path) -> av.container.InputContainer:
    """``av.open`` of a local media file, refusing playlists and other indirections (PyAV's
    errors propagate: ``open_container`` turns them into ours)."""
    return av.open(str(path), mode="r", options=dict(_INPUT_OPTIONS))


# What FFmpeg's EINVAL becomes: a demuxer outside the whitelist recognised the file. PyAV 12
# (pinned by the matrix) calls it ValueError and reports the whitelist refusal as invalid data.
_REFUSED_FORMAT: type[Exception] = next(
    getattr(av.error, name) for name in ("ArgumentError", "ValueError") if hasattr(av.error, name)
)


def open_container(path: Path, what: str) -> av.container.InputContainer:
    """av.open with our error instead of PyAV's (its messages name no file or fix)."""
    try:
        return open_input(path)
    except _REFUSED_FORMAT as exc:  # a demuxer outside INPUT_FORMATS recognised it
        raise MediaUnreadable(
            f"{what} {str(path)!r} is not a media file this tool reads (playlists and other "
            "formats that refer to further files are refused)",
            hint="send the audio or video itself (e.g. WAV, MP3, MP4/H.264, PNG)",
        ) from exc
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise MediaUnreadable(
            f"{what} {str(path)!r} could not be decoded: {exc}",
            hint="convert it to a common format (e.g. MP4/H.264, WAV) and try again",
        ) from exc


@contextlib.contextmanager
def open_video(
    path: Path, what: str, *, hint: str
) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The file's container and first video stream; our errors for a missing file, one
    that does not decode, or one without video (``hint`` says what to pass instead)."""
    require_file(path, what)
    with open_container(path, what) as container:
        if not container.streams.video:
            raise MediaUnreadable(f"{what} {str(path)!r} has no video stream", hint=hint)
        yield container, container.streams.video[0]


def probe_video(path: Path, *, max_width: int, max_height: int) -> VideoInfo:
    hint = "pass a video (or a still image) showing a face as --video"
    with open_video(path, "template video", hint=hint) as (container, stream):
        ctx = stream.codec_context
        width, height = int(ctx.width or 0), int(ctx.height or 0)
        if width <= 0 or height <= 0:
            raise MediaUnreadable(
                f"template video {str(path)!r} reports no frame size", hint="re-encode it"
            )
        if width > max_width or height > max_height:
            raise InputTooLarge(
                f"template video is {width}x{height}, above the {max_width}x{max_height} limit",
                hint="downscale the template (1080p is plenty for a talking head)",
            )
        if width < 64 or height < 64:
            raise MediaUnreadable(
                f"template video is only {width}x{height}", hint="use at least 64x64 pixels"
            )
        still = container.format.name in _IMAGE_FORMATS or (stream.frames == 1)
        rate = stream.average_rate or stream.guessed_rate
        fps = STILL_IMAGE_FPS if still or not rate else float(Fraction(rate))
        if not 1.0 <= fps <= 240.0:
            log.warning("template reports %.3f fps; assuming %.0f", fps, STILL_IMAGE_FPS)
            fps = STILL_IMAGE_FPS
        seconds = (
            float(stream.duration * stream.time_base)
            if (stream.duration and stream.time_base)
            else 0.0
        )
        estimated = stream.frames or round(seconds * fps)
        return VideoInfo(path, width, height, fps, ctx.name, still, 1 if still else estimated)


def probe_audio(path: Path, *, max_seconds: float) -> AudioInfo:
    require_file(path, "audio")
    with open_container(path, "audio") as container:
        if not container.streams.audio:
            raise NoAudioStream(
                f"{str(path)!r} has no audio stream",
                hint="pass a file with speech (WAV, MP3, M4A, or a video with sound) as --audio",
            )
        stream = container.streams.audio[0]
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        if duration is not None and duration > max_seconds:
            raise InputTooLarge(
                f"audio is {duration:.0f} s long, above the {max_seconds:.0f} s limit",
                hint="split the audio into shorter parts or raise the limit",
            )
        ctx = stream.codec_context
        return AudioInfo(
            path, int(ctx.sample_rate or 0), int(ctx.channels or 0), ctx.name, duration
        )
