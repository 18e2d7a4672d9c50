"""Analyse a template once: frame count, smoothed face track and landmarks, model-sized
crops. Cached.

Every template frame gets 68 landmarks (dlib's shape predictor; the HOG detector runs on
key frames and cuts, heygem.face.tracker carries the face between them, and a frame
whose lower face did not change keeps the previous frame's), smoothed over time; the
generator's crop region is placed by the landmarks. The template is decoded once: the
pixels around each crop are kept while it is analysed (``FrameWindows``).
The cache is keyed by the template's content hash (plus output size, detector and
landmark model versions and ``CACHE_VERSION``), so a second job on the same avatar skips
detection, landmarks and crop extraction, and an older cache layout is never misread. Files
are written under a temporary name and renamed into place, so concurrent jobs on the
same template can only ever see a complete entry.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from heygem.errors import InputTooLarge, NoFaceFound
from heygem.face.detect import DETECTOR_VERSION, turn_showing_a_face
from heygem.face.geometry import CropSpec
from heygem.face.landmarks import LANDMARKS_VERSION, stored_predictor
from heygem.face.track import smooth_landmarks, smooth_track
from heygem.face.tracker import DETECT_EVERY, FaceTracker
from heygem.hashing import content_hash
from heygem.media.frames import (
    Region,
    crop_bgr,
    crop_planes_bgr,
    first_frame_turns,
    i420_region,
    iter_template_frames,
    planes,
)

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
# Bump when what an entry holds changes (v2: landmarks in track.npz, landmark-placed crops;
# v3: landmarks carried between key-frame detections, heygem.face.tracker; v4: a frame
# whose lower face did not change keeps the previous landmarks exactly; v5: frames turned
# upright as players show them, the upright size stored).
CACHE_VERSION = 5


@dataclass(frozen=True)
class TemplatePlan:
    """What the generation pass needs to know about the template, per template frame."""

    n_frames: int
    width: int
    height: int
    valid: np.ndarray  # (N,) bool: a face to work on
    landmarks: np.ndarray  # (N, 68, 2) float32 full-frame pixels, NaN where not valid
    regions: np.ndarray  # (N, 4) int32 x0, y0, x1, y1 of the model crop
    crops_path: Path  # .npy (N, S, S, 3) uint8 BGR, memory-mappable by DataLoader workers
    from_cache: bool

    @property
    def faceless_frames(self) -> int:
        return int((~self.valid).sum())


def plan_template(
    path: Path,
    width: int,
    height: int,
    spec: CropSpec,
    *,
    cache_dir: Path,
    use_cache: bool = True,
    max_frames: int,
    on_progress: Progress | None = None,
) -> TemplatePlan:
    entry = (
        cache_dir
        / "templates"
        / (
            f"{content_hash(path)}-{width}x{height}-{DETECTOR_VERSION}-{LANDMARKS_VERSION}"
            f"-c{CACHE_VERSION}"
        )
    )
    track_file, crops_file = entry / "track.npz", entry / f"crops-{spec.key}.npz"
    crops_array = entry / f"crops-{spec.key}.npy"
    if use_cache and track_file.exists() and crops_file.exists() and crops_array.exists():
        try:
            plan = _load(track_file, crops_file, crops_array)
            os.utime(entry)  # the entry's mtime is its last use (LRU trimming reads it)
            return plan
        except (OSError, ValueError, KeyError) as exc:  # a damaged entry is rebuilt, not fatal
            log.warning("template cache entry %s unreadable (%s); rebuilding", entry, exc)
    entry.mkdir(parents=True, exist_ok=True)
    if first_frame_turns(path) % 2:  # a phone's portrait video, stored sideways
        width, height = height, width
    track: tuple[np.ndarray, np.ndarray] | None = None
    if use_cache and track_file.exists():
        try:
            with np.load(track_file) as data:
                track = data["landmarks"], data["valid"]
        except (OSError, ValueError, KeyError):
            track = None
    with FrameWindows(entry) as windows:
        if track is None:
            track = _analyse(path, width, height, spec, max_frames, on_progress, windows)
            _atomic_savez(track_file, landmarks=track[0], valid=track[1])
        points, valid = track
        if not valid.any():
            raise _no_face(path, width, height, len(valid))
        regions = np.zeros((len(valid), 4), dtype=np.int32)
        for i in np.flatnonzero(valid):
            regions[i] = spec.region(points[i], width, height)
        _extract_crops(path, width, height, spec, regions, valid, crops_array, windows)
    _atomic_savez(crops_file, regions=regions, valid=valid, size=np.array([width, height]))
    return TemplatePlan(
        len(valid), width, height, valid, points, regions, crops_array, from_cache=False
    )


def _no_face(path: Path, width: int, height: int, frames: int) -> NoFaceFound:
    message = f"no face was found in any of the {frames} frames of {str(path)!r}"
    decoded = iter_template_frames(path, width, height, writable=False)
    try:
        first = next(decoded, None)
        turns = turn_showing_a_face(planes(first)[0]) if first is not None else None
    finally:
        decoded.close()  # type: ignore[attr-defined]  # the container, now
    if turns is not None:
        # np.rot90 turns counterclockwise; the picture is turned the other way.
        lying = {1: "90 degrees clockwise", 2: "upside down", 3: "90 degrees counterclockwise"}
        fix = {1: "transpose=2", 2: "transpose=2,transpose=2", 3: "transpose=1"}
        return NoFaceFound(
            f"{message}, but there is one when the picture is turned: the face is turned "
            f"{lying[turns]}",
            hint=f"turn the template upright, e.g. ffmpeg -i IN -vf {fix[turns]} OUT.mp4",
        )
    return NoFaceFound(
        message,
        hint="use a template where a frontal face is clearly visible (at least ~24 px wide)",
    )


def _load(track_file: Path, crops_file: Path, crops_array: Path) -> TemplatePlan:
    with np.load(crops_file) as data:
        regions, valid = data["regions"], data["valid"]
        width, height = (int(side) for side in data["size"])  # upright, as analysed
    with np.load(track_file) as data:
        points = data["landmarks"]
    crops = np.load(crops_array, mmap_mode="r")
    if crops.shape[0] != len(valid) or points.shape != (len(valid), 68, 2):
        raise ValueError("crop or landmark count does not match the track")
    log.info("template cache hit: %s", crops_file.parent.name)
    return TemplatePlan(
        len(valid), width, height, valid, points, regions, crops_array, from_cache=True
    )


def _analyse(
    path: Path,
    width: int,
    height: int,
    spec: CropSpec,
    max_frames: int,
    on_progress: Progress | None,
    windows: FrameWindows,
) -> tuple[np.ndarray, np.ndarray]:
    """One decode of the template: per frame (68, 2) landmarks (NaN rows without a face)
    and whether the frame is usable; the pixels around each frame's crop are kept in
    ``windows``, so the crops need no second decode."""
    raw: list[tuple[float, float, float, float]] = []
    raw_points: list[np.ndarray] = []
    missing = np.full((68, 2), np.nan, dtype=np.float32)
    # Frames wait DETECT_EVERY deep before they are tracked: the tracker sees the next
    # key frame coming and detects its face on a helper thread meanwhile.
    window: deque[tuple[int, av.VideoFrame, np.ndarray]] = deque()

    def track_next(tracker: FaceTracker) -> None:
        index, frame, gray = window.popleft()
        found = tracker.track(gray)
        tracker.look_ahead((later, luma) for later, _, luma in window)
        if found is None:
            raw.append((np.nan,) * 4)
            raw_points.append(missing)
        else:
            box, points = found
            raw.append((box.x, box.y, box.w, box.h))
            raw_points.append(points)
            windows.keep(index, frame, spec.region(points, width, height))
        if on_progress:
            on_progress(index + 1)

    with FaceTracker(predictor=stored_predictor()) as tracker:
        for index, frame in enumerate(iter_template_frames(path, width, height, writable=False)):
            if index >= max_frames:
                raise InputTooLarge(
                    f"template video has more than {max_frames} frames",
                    hint="trim the template; a few seconds to a minute of footage is enough",
                )
            window.append((index, frame, planes(frame)[0]))
            if len(window) > DETECT_EVERY:
                track_next(tracker)
        while window:
            track_next(tracker)
    _, valid = smooth_track(np.array(raw, dtype=np.float64).reshape(-1, 4))
    points = smooth_landmarks(np.stack(raw_points) if raw_points else missing[None], valid)
    valid = valid[: len(points)] & ~np.isnan(points).any(axis=(1, 2))
    log.info(
        "face track: %d/%d frames with a face (%d detections, %d landmark predictions)",
        int(valid.sum()),
        len(valid),
        tracker.detections,
        tracker.predictions,
    )
    return points, valid


class FrameWindows:
    """The pixels around each analysed frame's crop region (yuv420p, a margin of
    ``MARGIN`` of the region's side on every side), spooled to an anonymous file: the
    smoothed regions differ from the per-frame ones by a few pixels, so the crops are cut
    from here after the analysis instead of decoding the template a second time."""

    MARGIN = 0.25

    def __init__(self, directory: Path) -> None:
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 (closed by __exit__)
        self._where: dict[int, tuple[int, Region]] = {}  # frame -> (offset, window)
        self._end = 0

    def keep(self, index: int, frame: av.VideoFrame, region: Region) -> None:
        x0, y0, x1, y1 = region
        pad = self.MARGIN * max(x1 - x0, y1 - y0)
        window = _even_window(x0 - pad, y0 - pad, x1 + pad, y1 + pad, frame.width, frame.height)
        packed = i420_region(frame, window)
        os.pwrite(self._file.fileno(), packed.tobytes(), self._end)
        self._where[index] = (self._end, window)
        self._end += packed.nbytes

    def crop(self, index: int, region: Region) -> np.ndarray | None:
        """The BGR pixels of ``region`` of frame ``index``; None when not kept."""
        if index not in self._where:
            return None
        offset, window = self._where[index]
        wx0, wy0, wx1, wy1 = window
        x0, y0, x1, y1 = region
        if not (wx0 <= x0 and wy0 <= y0 and x1 <= wx1 and y1 <= wy1):
            return None
        w, h = wx1 - wx0, wy1 - wy0
        data = os.pread(self._file.fileno(), w * h * 3 // 2, offset)
        packed = np.frombuffer(data, dtype=np.uint8)
        y = packed[: w * h].reshape(h, w)
        u = packed[w * h : w * h * 5 // 4].reshape(h // 2, w // 2)
        v = packed[w * h * 5 // 4 :].reshape(h // 2, w // 2)
        return crop_planes_bgr((y, u, v), (x0 - wx0, y0 - wy0, x1 - wx0, y1 - wy0))

    def __enter__(self) -> FrameWindows:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def _even_window(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> Region:
    ex0, ey0 = max(0, int(x0) // 2 * 2), max(0, int(y0) // 2 * 2)
    ex1 = min(width - width % 2, (int(np.ceil(x1)) + 1) // 2 * 2)
    ey1 = min(height - height % 2, (int(np.ceil(y1)) + 1) // 2 * 2)
    return ex0, ey0, max(ex1, ex0 + 2), max(ey1, ey0 + 2)


def _extract_crops(
    path: Path,
    width: int,
    height: int,
    spec: CropSpec,
    regions: np.ndarray,
    valid: np.ndarray,
    target: Path,
    windows: FrameWindows | None = None,
) -> None:
    """The model-sized crop of every usable frame: cut from ``windows`` where they hold
    the region, the rest (or all, without windows) from a decode of the template."""
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".npy.part")
    os.close(fd)
    try:
        crops = np.lib.format.open_memmap(
            tmp_name, mode="w+", dtype=np.uint8, shape=(len(valid), spec.size, spec.size, 3)
        )
        size = (spec.size, spec.size)
        # Two threads (OpenCV's conversions release the GIL): the stream waits for this.
        chunks = [part.tolist() for part in np.array_split(np.flatnonzero(valid), 8)]
        cut = functools.partial(_cut_crops, crops, regions, windows, size)
        with ThreadPoolExecutor(2, thread_name_prefix="heygem-crops") as cutters:
            wanted = [index for missing in cutters.map(cut, chunks) for index in missing]
        if wanted:
            if windows is not None:
                log.debug("%d crops outside the kept windows: decoding them", len(wanted))
            todo = set(wanted)
            frames = iter_template_frames(path, width, height, writable=False)
            for index, frame in enumerate(frames):
                if index in todo:
                    x0, y0, x1, y1 = (int(v) for v in regions[index])
                    bgr = crop_bgr(frame, (x0, y0, x1, y1))
                    crops[index] = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
                if index >= wanted[-1]:
                    break
        crops.flush()
        del crops
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _cut_crops(
    out: np.ndarray,
    regions: np.ndarray,
    windows: FrameWindows | None,
    size: tuple[int, int],
    indices: list[int],
) -> list[int]:
    """Cut these frames' crops from ``windows`` into ``out``; returns those not there."""
    missing = []
    for index in indices:
        x0, y0, x1, y1 = (int(v) for v in regions[index])
        bgr = windows.crop(index, (x0, y0, x1, y1)) if windows is not None else None
        if bgr is None:
            missing.append(index)
        else:
            out[index] = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    return missing


def _atomic_savez(target: Path, **arrays: Any) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".npz.part")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
