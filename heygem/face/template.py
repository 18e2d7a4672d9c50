"""Analyse a template once: frame count, smoothed face track and landmarks, model-sized
crops. Cached.

Every template frame gets a face box (dlib HOG, tracked) and 68 landmarks (dlib's shape
predictor), smoothed over time; the generator's crop region is placed by the landmarks.
The cache is keyed by the template's content hash (plus output size, detector and
landmark model versions and ``CACHE_VERSION``), so a second job on the same avatar skips
detection, landmarks and crop extraction, and an older cache layout is never misread. Files
are written under a temporary name and renamed into place, so concurrent jobs on the
same template can only ever see a complete entry.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from heygem.errors import InputTooLarge, NoFaceFound
from heygem.face.detect import DETECTOR_VERSION, Box, FaceDetector
from heygem.face.geometry import CropSpec
from heygem.face.landmarks import LANDMARKS_VERSION, landmarks
from heygem.face.track import smooth_landmarks, smooth_track
from heygem.hashing import content_hash
from heygem.media.frames import crop_bgr, iter_template_frames, planes

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
# Bump when what an entry holds changes (v2: landmarks in track.npz, landmark-placed crops).
CACHE_VERSION = 2


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
            plan = _load(track_file, crops_file, crops_array, width, height)
            os.utime(entry)  # the entry's mtime is its last use (LRU trimming reads it)
            return plan
        except (OSError, ValueError, KeyError) as exc:  # a damaged entry is rebuilt, not fatal
            log.warning("template cache entry %s unreadable (%s); rebuilding", entry, exc)
    entry.mkdir(parents=True, exist_ok=True)
    if use_cache and track_file.exists():
        try:
            with np.load(track_file) as data:
                points, valid = data["landmarks"], data["valid"]
        except (OSError, ValueError, KeyError):
            points, valid = _detect_track(path, width, height, max_frames, on_progress)
    else:
        points, valid = _detect_track(path, width, height, max_frames, on_progress)
        _atomic_savez(track_file, landmarks=points, valid=valid)
    if not valid.any():
        raise NoFaceFound(
            f"no face was found in any of the {len(valid)} frames of {str(path)!r}",
            hint="use a template where a frontal face is clearly visible (at least ~24 px wide)",
        )
    regions = np.zeros((len(valid), 4), dtype=np.int32)
    for i in np.flatnonzero(valid):
        regions[i] = spec.region(points[i], width, height)
    _extract_crops(path, width, height, spec, regions, valid, crops_array)
    _atomic_savez(crops_file, regions=regions, valid=valid)
    return TemplatePlan(
        len(valid), width, height, valid, points, regions, crops_array, from_cache=False
    )


def _load(
    track_file: Path, crops_file: Path, crops_array: Path, width: int, height: int
) -> TemplatePlan:
    with np.load(crops_file) as data:
        regions, valid = data["regions"], data["valid"]
    with np.load(track_file) as data:
        points = data["landmarks"]
    crops = np.load(crops_array, mmap_mode="r")
    if crops.shape[0] != len(valid) or points.shape != (len(valid), 68, 2):
        raise ValueError("crop or landmark count does not match the track")
    log.info("template cache hit: %s", crops_file.parent.name)
    return TemplatePlan(
        len(valid), width, height, valid, points, regions, crops_array, from_cache=True
    )


def _detect_track(
    path: Path, width: int, height: int, max_frames: int, on_progress: Progress | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: (68, 2) landmarks (NaN rows without a face) and whether it is usable."""
    detector = FaceDetector()
    raw: list[tuple[float, float, float, float]] = []
    raw_points: list[np.ndarray] = []
    missing = np.full((68, 2), np.nan, dtype=np.float32)
    previous: Box | None = None
    for index, frame in enumerate(iter_template_frames(path, width, height)):
        if index >= max_frames:
            raise InputTooLarge(
                f"template video has more than {max_frames} frames",
                hint="trim the template; a few seconds to a minute of footage is enough",
            )
        luma = planes(frame)[0]
        box = detector.detect(luma, previous)
        previous = box or previous
        raw.append((box.x, box.y, box.w, box.h) if box else (np.nan,) * 4)
        raw_points.append(landmarks(luma, box) if box else missing)
        if on_progress:
            on_progress(index + 1)
    _, valid = smooth_track(np.array(raw, dtype=np.float64).reshape(-1, 4))
    points = smooth_landmarks(np.stack(raw_points) if raw_points else missing[None], valid)
    valid = valid[: len(points)] & ~np.isnan(points).any(axis=(1, 2))
    log.info("face track: %d/%d frames with a face", int(valid.sum()), len(valid))
    return points, valid


def _extract_crops(
    path: Path,
    width: int,
    height: int,
    spec: CropSpec,
    regions: np.ndarray,
    valid: np.ndarray,
    target: Path,
) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".npy.part")
    os.close(fd)
    try:
        crops = np.lib.format.open_memmap(
            tmp_name, mode="w+", dtype=np.uint8, shape=(len(valid), spec.size, spec.size, 3)
        )
        for index, frame in enumerate(iter_template_frames(path, width, height)):
            if index >= len(valid):
                break
            if valid[index]:
                x0, y0, x1, y1 = (int(v) for v in regions[index])
                crop = crop_bgr(frame, (x0, y0, x1, y1))
                crops[index] = cv2.resize(
                    crop, (spec.size, spec.size), interpolation=cv2.INTER_AREA
                )
        crops.flush()
        del crops
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _atomic_savez(target: Path, **arrays: Any) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".npz.part")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
