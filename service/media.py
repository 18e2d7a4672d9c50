"""Admission checks on media: sizes, confinement to the media root, content probing.

Content is checked, not the extension: each input is opened with PyAV and its first
frame decoded before a job is accepted, so a renamed text file or a truncated upload is
a 4xx now rather than a failed job later. The service process does this without torch.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av

from heygem.errors import InputNotFound, InputTooLarge, MediaUnreadable, NoAudioStream
from heygem.media.frames import quarter_turns
from heygem.media.probe import AudioInfo, VideoInfo, open_container, probe_audio, probe_video
from service.errors import PathNotAllowed, UploadTooLarge
from service.settings import ServiceSettings

CHUNK = 1024 * 1024
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,8}$")


@dataclass(frozen=True)
class StoredFile:
    path: Path
    filename: str
    size: int


@dataclass(frozen=True)
class MediaSummary:
    has_audio: bool
    has_video: bool
    duration: float | None
    width: int | None
    height: int | None


def safe_suffix(filename: str | None) -> str:
    """The client's extension if it is plain (it names the file, it proves nothing)."""
    suffix = Path(filename or "").suffix
    return suffix.lower() if _SUFFIX.match(suffix) else ".bin"


def store_stream(source: BinaryIO, target: Path, *, max_bytes: int, what: str) -> int:
    """Copy an upload to ``target`` in chunks, refusing it once it passes ``max_bytes``."""
    size = 0
    try:
        with target.open("wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise UploadTooLarge(
                        f"{what} is larger than the {max_bytes} byte upload limit",
                        hint="send a shorter or more compressed file",
                    )
                out.write(chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    if size == 0:
        target.unlink(missing_ok=True)
        raise MediaUnreadable(f"{what} is empty (0 bytes)", hint="send the file's content")
    return size


def confined(root: Path | None, reference: str, what: str) -> Path:
    """``reference`` (relative, or absolute inside ``root``) as a real path inside ``root``.

    Symlinks are resolved before the check, so a link pointing out of the root is refused
    like ``../`` is.
    """
    if root is None:
        raise PathNotAllowed(
            f"{what}: path references are disabled on this server",
            hint="upload the file instead, or set HEYGEM_SERVICE_MEDIA_ROOT",
        )
    if not reference or "\x00" in reference:
        raise PathNotAllowed(f"{what}: empty or invalid path", hint="pass a file name")
    base = root.resolve()
    candidate = Path(reference)
    foreign = candidate.is_absolute() and not _inside(candidate, base)
    if foreign:
        candidate = candidate.relative_to(candidate.anchor)  # HeyGem sends '/x.wav' = root/x.wav
    try:
        resolved = (base / candidate).resolve()
        inside = _inside(resolved, base)
        exists = inside and resolved.is_file()
    except (OSError, ValueError, RuntimeError) as exc:  # too long, undecodable; a symlink
        # loop is RuntimeError in Python 3.11 (OSError from 3.13)
        raise PathNotAllowed(
            f"{what}: {reference[:200]!r} is not a usable path: {exc}",
            hint="pass a plain relative path under the media root",
        ) from exc
    if not inside or (foreign and not exists):
        raise PathNotAllowed(
            f"{what}: {reference!r} is outside the media root",
            hint="pass a path inside the media root, without '..'",
        )
    if not exists:
        raise InputNotFound(
            f"{what}: {reference!r} does not exist under the media root",
            hint="check the file name and that it was copied to the media root",
        )
    return resolved


def _inside(path: Path, base: Path) -> bool:
    return path == base or path.is_relative_to(base)


def check_audio(path: Path, settings: ServiceSettings) -> AudioInfo:
    info = probe_audio(path, max_seconds=settings.options.max_audio_seconds)
    _decode_first(path, "audio", "audio")
    return info


def check_video(path: Path, settings: ServiceSettings) -> VideoInfo:
    limits = settings.options
    info = probe_video(path, max_width=limits.max_width, max_height=limits.max_height)
    seconds = 0.0 if info.is_still_image else info.estimated_frames / info.fps
    if seconds > settings.max_video_seconds:
        raise InputTooLarge(
            f"template video is {seconds:.0f} s long, above the "
            f"{settings.max_video_seconds:.0f} s limit",
            hint="trim the template: a few seconds loop (ping-pong) for any audio length",
        )
    _decode_first(path, "video", "template video")
    return info


def summarize(path: Path) -> MediaSummary:
    """What an upload contains (for POST /v1/uploads); raises MediaUnreadable."""
    with open_container(path, "upload") as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        video = container.streams.video[0] if container.streams.video else None
        if audio is None and video is None:
            raise MediaUnreadable(
                "the upload has neither audio nor video",
                hint="upload an audio file or a template video",
            )
        duration = container.duration / av.time_base if container.duration else None
        width = int(video.codec_context.width or 0) if video is not None else None
        height = int(video.codec_context.height or 0) if video is not None else None
    first = _decode_first(path, "video" if video is not None else "audio", "upload")
    if isinstance(first, av.VideoFrame) and quarter_turns(first) % 2:
        width, height = height, width  # stored sideways: the size players show
    return MediaSummary(audio is not None, video is not None, duration, width, height)


def _decode_first(path: Path, kind: str, what: str) -> av.AudioFrame | av.VideoFrame:
    """Decode one frame: headers can parse where the content is garbage."""
    with open_container(path, what) as container:
        streams = container.streams.audio if kind == "audio" else container.streams.video
        if not streams:
            raise (NoAudioStream if kind == "audio" else MediaUnreadable)(
                f"{what} has no {kind} stream", hint=f"send a file with {kind}"
            )
        try:
            for frame in container.decode(streams[0]):
                return frame  # type: ignore[return-value]
        except (av.error.FFmpegError, UnicodeDecodeError, ValueError, IndexError) as exc:
            raise MediaUnreadable(
                f"{what} could not be decoded: {exc}",
                hint="convert it to a common format (MP4/H.264, WAV) and retry",
            ) from exc
    raise MediaUnreadable(
        f"{what} has no decodable {kind} frame", hint="the file may be truncated; export it again"
    )


def copy_into(source: Path, target: Path) -> None:
    """Publish a file: hard link when possible (same filesystem), else copy."""
    tmp = target.with_name(f".{target.name}.part")
    tmp.unlink(missing_ok=True)
    try:
        tmp.hardlink_to(source)
    except OSError:
        shutil.copyfile(source, tmp)
    tmp.replace(target)
