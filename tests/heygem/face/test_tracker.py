"""Landmarks carried between key-frame detections agree with detecting every frame.

The reference is what the tracker replaces: dlib's detector on every frame and the shape
predictor on its box. Videos are generated: the bundled portrait moving (sway, drift,
zoom) at several sizes, with cuts to grey cards and to a face-less backdrop.
"""

from __future__ import annotations

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heygem.demo import load_portrait
from heygem.face.detect import FaceDetector
from heygem.face.landmarks import interocular, landmarks
from heygem.face.tracker import DETECT_EVERY, FaceTracker


def _video(
    n: int, size: tuple[int, int], face: float, motion: float, gaps: list[tuple[int, int, str]]
) -> list[np.ndarray]:
    """Luma frames of the portrait (face ``face`` px wide) moving by ``motion`` (0..1);
    ``gaps``: (start, stop, "grey" | "backdrop") frames without a face."""
    portrait = cv2.cvtColor(load_portrait(), cv2.COLOR_BGR2GRAY)
    width, height = size
    backdrop = cv2.GaussianBlur(cv2.resize(portrait, size), (0, 0), 21)
    frames = []
    for i in range(n):
        t = i / 25.0
        scale = face / 88.0 * (1.0 + 0.08 * motion * np.sin(2 * np.pi * 0.3 * t))
        angle = 6.0 * motion * np.sin(2 * np.pi * 0.4 * t)
        cx = width / 2 + 0.08 * width * motion * np.sin(2 * np.pi * 0.25 * t)
        cy = height / 2 + 0.05 * height * motion * np.cos(2 * np.pi * 0.2 * t)
        matrix = cv2.getRotationMatrix2D((223.0, 127.0), angle, scale)
        matrix[:, 2] += np.array([cx - 223.0, cy - 127.0])
        frame = cv2.warpAffine(
            portrait, matrix, size, dst=backdrop.copy(), borderMode=cv2.BORDER_TRANSPARENT
        )
        frames.append(frame)
    for start, stop, kind in gaps:
        for i in range(start, min(stop, n)):
            frames[i] = np.full_like(frames[i], 128) if kind == "grey" else backdrop.copy()
    return frames


def _per_frame(frames: list[np.ndarray]) -> list[np.ndarray | None]:
    detector, previous, out = FaceDetector(), None, []
    for gray in frames:
        box = detector.detect(gray, previous)
        previous = box or previous
        out.append(landmarks(gray, box) if box is not None else None)
    return out


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.sampled_from([(320, 240), (640, 360), (1280, 720)]),
    face_share=st.floats(0.15, 0.3),
    motion=st.floats(0.0, 1.0),
    gap=st.one_of(
        st.none(),
        st.tuples(st.integers(5, 40), st.integers(1, 12), st.sampled_from(["grey", "backdrop"])),
    ),
)
def test_tracked_landmarks_match_per_frame_detection(
    size: tuple[int, int],
    face_share: float,
    motion: float,
    gap: tuple[int, int, str] | None,
) -> None:
    n = 60
    gaps = [(gap[0], gap[0] + gap[1], gap[2])] if gap else []
    frames = _video(n, size, face_share * size[1], motion, gaps)
    reference = _per_frame(frames)
    tracker = FaceTracker()
    tracked = [tracker.track(gray) for gray in frames]

    # Same frames with a face: a cut is noticed on the frame it happens.
    assert [r is None for r in reference] == [t is None for t in tracked]
    # The same landmarks, within a few percent of the face's scale.
    errors = [
        float(np.abs(t[1] - r).mean() / interocular(r))
        for t, r in zip(tracked, reference, strict=True)
        if t is not None and r is not None
    ]
    assert np.mean(errors) < 0.02 and max(errors) < 0.06, (np.mean(errors), max(errors))
    # At most one detection every DETECT_EVERY frames, besides cuts and faceless frames.
    faceless = sum(r is None for r in reference)
    assert tracker.detections <= n // DETECT_EVERY + 1 + faceless + 2 * len(gaps)


def test_a_face_replaced_by_another_scene_is_detected_again() -> None:
    """A cut to the face at another place (a different shot) is not carried over."""
    first = _video(20, (640, 360), 100, 0.0, [])
    moved = [np.roll(frame, 200, axis=1) for frame in _video(20, (640, 360), 100, 0.0, [])]
    tracker = FaceTracker()
    tracked = [tracker.track(gray) for gray in first + moved]
    reference = _per_frame(first + moved)
    after_cut = tracked[20]
    assert after_cut is not None and reference[20] is not None
    assert np.abs(after_cut[1] - reference[20]).mean() < 2.0
