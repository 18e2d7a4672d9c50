"""Follow one face through a video: HOG detection on key frames, landmarks in between.

Detecting the face (dlib's HOG, ~3 ms a 720p frame even in a window around the last box)
cost four times more than its 68 landmarks (~1 ms). Between detections the box is
carried by the landmarks instead: each frame's shape predictor starts from a box placed
on the previous frame's landmarks, the way the last detection sat on its own landmarks
(a calibration renewed at every detection, so the predictor sees the boxes it was trained
on). The detector runs again every ``DETECT_EVERY`` frames, and at once when the face
looks lost: the luma under the previous landmarks no longer resembles the previous
frame's there (a cut, the face leaving, a grey card) or the landmarks jumped in size.
Measured on the 720p demo template: the analysis' detection cost drops ~7x and landmarks
move 0.4 px on average from per-frame detection (they jitter less: the box does not).

A frame whose lower face (mouth, chin, jaw) shows the same pixels as the anchor's (the
last frame that got landmarks), within video coding noise, gets the anchor's box and
landmarks exactly, without a new prediction. dlib's predictor is unstable on some faces
(a beard below the lips: the inner lower lip lands anywhere between closed and a quarter
interocular open for boxes a few pixels apart), and the coding noise of a still template
is enough to move it; the mouths then looked open and the edit landed on the beard.
Comparing with the anchor, not the previous frame, keeps slow drift from accumulating.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from heygem.face.detect import Box, FaceDetector
from heygem.face.landmarks import STABLE, interocular, landmarks
from heygem.face.shape_predictor import ShapePredictor

DETECT_EVERY = 8  # frames; a key frame re-anchors the box on a detection
SAME_FACE = 0.6  # normalised correlation of the face patch with the previous frame's
MAX_SCALE_STEP = 0.15  # landmark extent change between frames that still counts as smooth
PATCH = 24  # side of the compared face patch, pixels
# The lower face is compared on a HOLD_PATCH-square, HOLD_BLUR-blurred luma patch by the
# HOLD_PERCENTILE-th absolute difference. Measured: stills encoded at CRF 15-30 stay
# below 0.1 levels against their first frame (x264 repeats a static picture), with
# sigma 1 grain added before encoding below 3 at every size; sigma 1.5-2.5 grain crosses
# 3 on an occasional frame (one new prediction in 40 frames), most on small faces; a shift
# of 0.25 px moves it 5-14 levels, a swaying template's slowest frame-to-frame step 2.5, a
# talking mouth tens. A higher limit would hold grainier stills but lag slow sways.
HOLD_PATCH = 48
HOLD_BLUR = 1.0  # sigma, patch pixels
HOLD_PERCENTILE = 98.0
HOLD_LEVELS = 3.0  # luma levels: at or below, the frame is the anchor's face again


@dataclass(frozen=True)
class _Calibration:
    """Where the detector's box sits relative to the landmarks' extent (in its units)."""

    dx: float
    dy: float
    w: float
    h: float


def _extent(points: np.ndarray) -> tuple[float, float, float]:
    """Centre x, centre y and scale of the face from the landmarks that do not move with
    speech (nose, eye corners): an opening jaw must not move the next box."""
    stable = points[list(STABLE)]
    cx, cy = stable.mean(axis=0)
    return float(cx), float(cy), max(float(interocular(points)), 1.0)


def _calibrate(box: Box, points: np.ndarray) -> _Calibration:
    cx, cy, size = _extent(points)
    return _Calibration(
        (box.x + 0.5 * box.w - cx) / size, (box.y + 0.5 * box.h - cy) / size,
        box.w / size, box.h / size,
    )  # fmt: skip


def _box_on(points: np.ndarray, calibration: _Calibration) -> Box:
    return _box_at(_extent(points), calibration)


def _box_at(extent: tuple[float, float, float], calibration: _Calibration) -> Box:
    cx, cy, size = extent
    w, h = calibration.w * size, calibration.h * size
    x = cx + calibration.dx * size - 0.5 * w
    y = cy + calibration.dy * size - 0.5 * h
    return Box(x, y, w, h)


def _patch(gray: np.ndarray, box: Box) -> np.ndarray | None:
    """The luma under ``box`` resampled to PATCH x PATCH, zero-mean and unit-norm (None
    when the box leaves the frame or the patch is flat: nothing to compare)."""
    height, width = gray.shape[:2]
    x0, y0 = max(0, int(box.x)), max(0, int(box.y))
    x1, y1 = min(width, int(box.x + box.w)), min(height, int(box.y + box.h))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    patch = cv2.resize(gray[y0:y1, x0:x1], (PATCH, PATCH), interpolation=cv2.INTER_AREA)
    values = patch.astype(np.float32).ravel()
    values -= values.mean()
    norm = float(np.linalg.norm(values))
    return values / norm if norm > 1e-3 * PATCH else None


def _lower_face_box(points: np.ndarray) -> Box:
    """Mouth, chin and jaw: from the nose's base to a little below the chin, between the
    jaw points level with the mouth."""
    x0, x1 = float(points[3:14, 0].min()), float(points[3:14, 0].max())
    y0 = float(points[33, 1])
    y1 = float(points[8, 1]) + 0.1 * (float(points[8, 1]) - y0)
    return Box(x0, y0, max(x1 - x0, 1.0), max(y1 - y0, 1.0))


def lower_face_patch(gray: np.ndarray, box: Box) -> np.ndarray | None:
    """The luma under ``box`` resampled to HOLD_PATCH square and lightly blurred, in
    levels (None when less than 8 x 8 pixels of it are in the frame)."""
    height, width = gray.shape[:2]
    x0, y0 = max(0, int(box.x)), max(0, int(box.y))
    x1, y1 = min(width, int(np.ceil(box.x + box.w))), min(height, int(np.ceil(box.y + box.h)))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return None
    size = (HOLD_PATCH, HOLD_PATCH)
    patch = cv2.resize(gray[y0:y1, x0:x1], size, interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(patch.astype(np.float32), (0, 0), HOLD_BLUR)


def patch_change(before: np.ndarray, now: np.ndarray) -> float:
    """How much a lower-face patch changed, in luma levels (robust to coding noise)."""
    difference = np.abs(now - before).ravel()
    rank = min(int(HOLD_PERCENTILE / 100.0 * difference.size), difference.size - 1)
    return float(np.partition(difference, rank)[rank])  # np.percentile costs 4x more


@dataclass(frozen=True)
class _Anchor:
    """The last frame that got landmarks: what later frames are compared with."""

    box: Box
    points: np.ndarray
    region: Box  # its lower face
    patch: np.ndarray


@dataclass(frozen=True)
class _KeyFrameGuess:
    """A detection started ahead on the frame where the next key frame is expected."""

    frame: int
    near: Box  # the detector box it searches around
    found: Future[Box | None]


class FaceTracker:
    """``track(luma)`` per frame, in order: the face's box and 68 landmarks, or None.

    ``look_ahead(upcoming)`` with frames not tracked yet lets the detection of the
    next key frame run on a helper thread while the frames before it are tracked (dlib's
    HOG search releases the GIL): the track is the same, it only waits less. A tracker
    that looked ahead is closed after use (``close``, or ``with``).
    """

    def __init__(
        self, detector: FaceDetector | None = None, predictor: ShapePredictor | None = None
    ) -> None:
        self._detector = detector or FaceDetector()
        self._predictor = predictor  # None: dlib's own (the same landmarks)
        self._detected: Box | None = None  # the last detector box (where to search next)
        self._points: np.ndarray | None = None  # the previous frame's landmarks
        self._calibration: _Calibration | None = None
        self._previous_patch: np.ndarray | None = None  # luma under the previous landmarks
        self._since_detection = 0
        self._anchor: _Anchor | None = None
        self._last_seen: Box | None = None  # where the face was on its last frame
        self.detections = 0  # frames the detector ran on (for tests and measurements)
        self.predictions = 0  # frames the shape predictor ran on
        self._frame = -1  # the frame being tracked
        self._next_key: int | None = None  # where the next key frame is expected
        self._guess: _KeyFrameGuess | None = None
        self._helper: ThreadPoolExecutor | None = None
        self.guessed = 0  # key frames whose detection had run ahead (for tests)

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._helper is not None:
            self._helper.shutdown(wait=True, cancel_futures=True)
            self._helper = None
        self._guess = None

    def look_ahead(self, upcoming: Iterable[tuple[int, np.ndarray]]) -> None:
        """The frames not tracked yet, as (index, luma), each valid until it is tracked
        (``DETECT_EVERY`` of them reach every key frame): the detection of the one where
        the next key frame is expected starts now."""
        if self._detected is None or self._next_key is None:
            return
        if self._guess is not None and self._guess.frame >= self._next_key:
            return  # already running (a stale one, passed by held frames, is replaced)
        for index, gray in upcoming:
            if index == self._next_key:
                if self._helper is None:
                    self._helper = ThreadPoolExecutor(1, thread_name_prefix="heygem-detect")
                near = self._detected
                found = self._helper.submit(self._detector.detect, gray, near)
                self._guess = _KeyFrameGuess(index, near, found)
                return

    def track(self, gray: np.ndarray) -> tuple[Box, np.ndarray] | None:
        """``gray``: the frame's uint8 luma plane."""
        self._frame += 1
        anchor = self._anchor
        if anchor is not None:
            now = lower_face_patch(gray, anchor.region)
            if now is not None and patch_change(anchor.patch, now) <= HOLD_LEVELS:
                return anchor.box, anchor.points  # the same face: no new prediction
        found = self._predict(gray)
        self._anchor = None
        if found is not None:
            self._last_seen = found[0]
            region = _lower_face_box(found[1])
            patch = lower_face_patch(gray, region)
            if patch is not None:
                self._anchor = _Anchor(found[0], found[1], region, patch)
        return found

    def _predict(self, gray: np.ndarray) -> tuple[Box, np.ndarray] | None:
        self.predictions += 1
        points, calibration = self._points, self._calibration
        if points is not None and calibration is not None and self._since_detection < DETECT_EVERY:
            carried = self._carry(gray, points, calibration)
            if carried is not None:
                self._since_detection += 1
                self._points = carried[1]
                return carried
        return self._detect(gray)

    def _carry(
        self, gray: np.ndarray, previous: np.ndarray, calibration: _Calibration
    ) -> tuple[Box, np.ndarray] | None:
        was = _extent(previous)
        box = _box_at(was, calibration)
        before, now = self._previous_patch, _patch(gray, box)
        if before is None or now is None or float(before @ now) < SAME_FACE:
            return None  # not the face that was there: detect
        points = landmarks(gray, box, self._predictor)
        extent = _extent(points)
        if abs(extent[2] / was[2] - 1.0) > MAX_SCALE_STEP:
            return None
        self._previous_patch = _patch(gray, _box_at(extent, calibration))
        return box, points

    def _detect(self, gray: np.ndarray) -> tuple[Box, np.ndarray] | None:
        self.detections += 1
        box = self._detect_near_last(gray)
        if box is None and self._points is not None and self._calibration is not None:
            # A moving face may have gone a long way since the last detection: look again
            # where it was on the previous frame.
            box = self._detector.detect(gray, _box_on(self._points, self._calibration))
        elif box is None and self._points is None and self._last_seen is not None:
            # Lost (a cut, a gap): look where it was last seen, not at the older key frame,
            # and take a face anywhere in that window: after a gap it may have moved on.
            box = self._detector.detect(gray, self._last_seen, overlap=0.0)
        self._detected = box or self._detected
        self._since_detection = 1
        self._next_key = self._frame + DETECT_EVERY  # unless a frame is held or lost
        if box is None:
            self._points = self._calibration = self._previous_patch = None
            return None
        points = landmarks(gray, box, self._predictor)
        self._points, self._calibration = points, _calibrate(box, points)
        self._previous_patch = _patch(gray, _box_on(points, self._calibration))
        return box, points

    def _detect_near_last(self, gray: np.ndarray) -> Box | None:
        """The detection around the last detector box: the one that ran ahead when it
        searched this frame around the same box, else run now."""
        guess, self._guess = self._guess, None
        if guess is not None and guess.frame == self._frame and guess.near == self._detected:
            self.guessed += 1
            return guess.found.result()
        return self._detector.detect(gray, self._detected)
