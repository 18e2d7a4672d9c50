"""Face detection with dlib's HOG detector (shipped inside the dlib wheel: no downloads).

dlib's frontal HOG detector finds faces from ~80 px wide at the scale it runs on. Large
frames are searched downscaled (cheap); when nothing is found there, the frame is searched
again upsampled (dlib's image pyramid upsampling), which finds faces down to ~24 px wide
(a 37 px face in a 548x342 still, a thumbnail-sized talking head). In videos the face is
tracked: the next frame is searched in a window around the previous box, resampled so
the face is ~100 px wide there, which costs a fraction of a full pass at any face size.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

SEARCH_WIDTH = 640  # a full search runs at most this wide (faces >= ~80 px at that scale)
# Upsampled passes stop before the image grows past this many pixels (~1.5 s for a 720p
# frame searched at 4x), and a video gets at most a few of them: after that many frames
# without any face, the video's faces are not tiny, there are none.
MAX_UPSAMPLED_PIXELS = 15_000_000
MAX_UPSAMPLED_SEARCHES = 3
TRACK_FACE_WIDTH = 100.0  # px: the face's width in the tracking window
DETECTOR_VERSION = f"dlib-hog-w{SEARCH_WIDTH}-up-v1"


@dataclass(frozen=True)
class Box:
    """A face box in full-frame pixels."""

    x: float
    y: float
    w: float
    h: float

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0.0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.w * self.h + other.w * other.h - inter
        return inter / union if union > 0 else 0.0


# dlib's frontal detector as dlib itself serializes it: building it in dlib takes ~0.3 s
# (it is decompressed from a string in the library), loading this file 1 ms. A test
# checks that it is the detector the installed dlib builds.
DETECTOR_FILE = Path(__file__).resolve().parent.parent / "assets" / "frontal_face_detector.svm"


@functools.cache
def _hog_detector() -> tuple[object, threading.Lock]:
    """The one detector of the process and the lock that keeps threads from using it at
    once: concurrent calls corrupt its results or abort."""
    return load_detector(), threading.Lock()


def load_detector() -> object:
    import dlib

    try:
        return dlib.fhog_object_detector(str(DETECTOR_FILE))
    except RuntimeError:  # missing or unreadable: dlib builds the same detector, slowly
        return dlib.get_frontal_face_detector()


def turn_showing_a_face(gray: np.ndarray) -> int | None:
    """The quarter turns counterclockwise (1, 2 or 3) after which ``gray`` shows a face
    the upright search missed, or None: tells a user whose template has no upright face
    that it is lying on its side (a phone video re-encoded without its rotation flag)."""
    for turns in (1, 3, 2):
        if FaceDetector().detect(np.rot90(gray, turns)) is not None:
            return turns
    return None


class FaceDetector:
    """Finds the face that continues the previous one (or the most confident one)."""

    def __init__(self, search_width: int = SEARCH_WIDTH) -> None:
        self._detector, self._lock = _hog_detector()
        self._search_width = search_width
        self._upsampled_searches = 0

    def detect(
        self, gray: np.ndarray, previous: Box | None = None, *, overlap: float = 0.3
    ) -> Box | None:
        """``gray``: a uint8 luma plane. Tracks near ``previous`` first, then searches the
        whole frame; upsampled passes only while no face was ever seen (``previous`` is
        None) and only on the first frames, so a video whose face leaves for a while, or
        that has none, is not searched at 4x per frame. One detector per video."""
        if previous is not None:
            tracked = self._detect_near(gray, previous, overlap)
            if tracked is not None:
                return tracked
        upsample = previous is None and self._upsampled_searches < MAX_UPSAMPLED_SEARCHES
        return self._search(gray, previous, upsample=upsample)

    def _run(self, image: np.ndarray, upsample: int) -> list[tuple[Box, float]]:
        # dlib ignores a numpy view's row stride: a plane view with padded rows (line_size >
        # width) would be read as garbage, so it always gets contiguous pixels.
        pixels = np.ascontiguousarray(image)
        with self._lock:
            rects, scores, _ = self._detector.run(pixels, upsample, 0.0)  # type: ignore[attr-defined]
        return [
            (Box(r.left(), r.top(), r.right() - r.left() + 1, r.bottom() - r.top() + 1), s)
            for r, s in zip(rects, scores, strict=True)
        ]

    def _search(self, gray: np.ndarray, previous: Box | None, upsample: bool) -> Box | None:
        height, width = gray.shape[:2]
        scale = min(1.0, self._search_width / width)
        image = gray if scale == 1.0 else _resize(gray, scale)
        found = [(_scaled(b, 1 / scale), s) for b, s in self._run(image, 0)]
        if not found and upsample:
            # Upsample the full-resolution frame (each level doubles it) while it stays small.
            levels = 0
            while (4 ** (levels + 1)) * width * height <= MAX_UPSAMPLED_PIXELS and levels < 2:
                levels += 1
            if levels:
                self._upsampled_searches += 1
                found = self._run(np.ascontiguousarray(gray), levels)
        if not found:
            return None
        if previous is not None:
            best = max(found, key=lambda item: previous.iou(item[0]))[0]
            if best.iou(previous) > 0.1:
                return best
        return max(found, key=lambda item: item[1])[0]

    def _detect_near(self, gray: np.ndarray, previous: Box, overlap: float) -> Box | None:
        height, width = gray.shape[:2]
        margin = 0.5 * previous.w
        x0, y0 = max(0, int(previous.x - margin)), max(0, int(previous.y - margin))
        x1 = min(width, int(previous.x + previous.w + margin))
        y1 = min(height, int(previous.y + previous.h + margin))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        scale = TRACK_FACE_WIDTH / max(previous.w, 1.0)
        window = _resize(gray[y0:y1, x0:x1], scale)
        boxes = [
            Box(x0 + b.x / scale, y0 + b.y / scale, b.w / scale, b.h / scale)
            for b, _ in self._run(window, 0)
        ]
        best = max(boxes, key=previous.iou, default=None)
        return best if best is not None and best.iou(previous) > overlap else None


def _resize(image: np.ndarray, scale: float) -> np.ndarray:
    if abs(scale - 1.0) < 1e-3:
        return np.ascontiguousarray(image)
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


def _scaled(box: Box, factor: float) -> Box:
    return Box(box.x * factor, box.y * factor, box.w * factor, box.h * factor)
