"""Avatars: template uploads a client can pick again, with what the template cache knows.

An avatar is a video (or still) upload. The first job on it analyses the template (face
track, landmarks, crops) and caches that under the template's content hash; a later job
skips the work. The page shows, per avatar, a thumbnail, its length and whether a face was
found in its frames, straight from that cache. The content hash and the thumbnail are
computed once per upload and kept beside it (``avatar.json``): uploads never change.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av

from heygem.errors import HeygemError
from heygem.hashing import content_hash
from heygem.media.frames import quarter_turns, turned_upright
from heygem.media.probe import open_input, probe_video

log = logging.getLogger(__name__)

THUMBNAIL_HEIGHT = 96
_FACTS = "avatar.json"
_FACTS_VERSION = 1


@dataclass(frozen=True)
class TemplateFacts:
    """What never changes about an upload: its hash, frames, thumbnail."""

    content_hash: str
    still: bool
    fps: float
    estimated_frames: int
    thumbnail: str  # a data: URL (an <img> cannot send the API key header)


@dataclass(frozen=True)
class Analysis:
    """The cached template analysis, if a job has made one."""

    frames: int
    face_frames: int


def template_facts(upload: Path, max_width: int, max_height: int) -> TemplateFacts:
    """The upload's facts, computed on first use and kept beside it."""
    cached = upload.parent / _FACTS
    try:
        data = json.loads(cached.read_text())
        if data.pop("version", None) == _FACTS_VERSION:
            return TemplateFacts(**data)
    except (OSError, ValueError, TypeError):
        pass  # not made yet, or unreadable: make it again
    info = probe_video(upload, max_width=max_width, max_height=max_height)
    facts = TemplateFacts(
        content_hash=content_hash(upload),
        still=info.is_still_image,
        fps=info.fps,
        estimated_frames=info.estimated_frames,
        thumbnail="data:image/jpeg;base64," + base64.b64encode(thumbnail(upload)).decode(),
    )
    partial = cached.with_name(f".{_FACTS}.part")
    partial.write_text(json.dumps({"version": _FACTS_VERSION, **asdict(facts)}))
    partial.replace(cached)
    return facts


def thumbnail(video: Path, height: int = THUMBNAIL_HEIGHT) -> bytes:
    """The first frame as a small JPEG (PyAV's MJPEG encoder: no image library needed),
    upright as players show it."""
    with open_input(video) as container:
        frame = next(container.decode(container.streams.video[0]))
    if turns := quarter_turns(frame):
        frame = turned_upright(frame, turns)
    width = max(2, round(frame.width * height / frame.height / 2) * 2)
    small = frame.reformat(width=width, height=height, format="yuvj420p")
    encoder = av.CodecContext.create("mjpeg", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuvj420p"
    encoder.time_base = Fraction(1, 25)
    return b"".join(bytes(p) for p in [*encoder.encode(small), *encoder.encode(None)])


def cached_analysis(cache_dir: Path, digest: str) -> Analysis | None:
    """The face track a job cached for this content (``heygem.face.template`` layout:
    ``templates/<hash>-<size>-<versions>/track.npz`` with a per-frame ``valid`` flag)."""
    newest: tuple[float, Path] | None = None
    for track in (cache_dir / "templates").glob(f"{digest}-*/track.npz"):
        try:
            stamp = track.stat().st_mtime
        except OSError:
            continue  # trimmed meanwhile
        if newest is None or stamp > newest[0]:
            newest = (stamp, track)
    if newest is None:
        return None
    import numpy as np  # here: the API process has no other use for it

    try:
        with np.load(newest[1]) as data:
            valid = np.asarray(data["valid"], dtype=bool)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("template cache entry %s unreadable: %s", newest[1].parent, exc)
        return None
    return Analysis(frames=int(valid.size), face_frames=int(valid.sum()))


def describe(record: dict[str, Any], cache_dir: Path, limits: tuple[int, int]) -> dict[str, Any]:
    """One avatar as the API shows it; ``error`` says why an upload cannot be one."""
    path = Path(record["path"])
    info = record["info"]
    base = {
        "upload_id": record["id"],
        "filename": record["filename"],
        "created_at": record["created_at"],
        "last_used_at": record["last_used_at"],
        "duration": info.get("duration"),
        "width": info.get("width"),
        "height": info.get("height"),
    }
    try:
        facts = template_facts(path, *limits)
    except (HeygemError, OSError, av.error.FFmpegError, StopIteration) as exc:
        message = exc.message if isinstance(exc, HeygemError) else "its first frame is unreadable"
        return base | {"error": message}
    analysis = cached_analysis(cache_dir, facts.content_hash)
    return base | {
        "content_hash": facts.content_hash,
        "still": facts.still,
        "thumbnail": facts.thumbnail,
        "analysed": analysis is not None,
        "frames": analysis.frames if analysis else facts.estimated_frames,
        "face_frames": analysis.face_frames if analysis else None,
    }
