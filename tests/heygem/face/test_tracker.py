"""Landmarks carried between key-frame detections agree with detecting every frame.

The reference is what the tracker replaces: dlib's detector on every frame and the shape
predictor on its box. Videos are generated: the bundled portrait moving (sway, drift,
zoom) at several sizes, with cuts to grey cards and to a face-less backdrop.
"""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import cv2
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heygem.demo import load_portrait, write_video
from heygem.face.detect import FaceDetector
from heygem.face.landmarks import LOWER_INNER, STABLE, UPPER_INNER, interocular, landmarks
from heygem.face.tracker import DETECT_EVERY, FaceTracker
from tests.helpers import read_gray_frames
from tests.heygem.generators.test_lipsync import _with_full_beard


def _video(
    n: int,
    size: tuple[int, int],
    face: float,
    motion: float,
    gaps: list[tuple[int, int, str]],
    *,
    beard: bool = False,
) -> list[np.ndarray]:
    """Luma frames of the portrait (face ``face`` px wide) moving by ``motion`` (0..1);
    ``gaps``: (start, stop, "grey" | "backdrop") frames without a face."""
    portrait = load_portrait()
    portrait = cv2.cvtColor(_with_full_beard(portrait) if beard else portrait, cv2.COLOR_BGR2GRAY)
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

    # A cut is noticed on the frame it happens, and the tracker finds the face wherever
    # per-frame detection does; after a gap it may find it sooner (it searches the whole
    # window where the face was last seen, while detection wants an overlap with a box
    # that is a gap old): never on a frame without one.
    faceless = {i for start, stop, _ in gaps for i in range(start, min(stop, n))}
    assert {i for i, t in enumerate(tracked) if t is None} <= {
        i for i, r in enumerate(reference) if r is None
    }
    assert not {i for i, t in enumerate(tracked) if t is not None} & faceless
    # The same landmarks, within a few percent of the face's scale.
    errors = [
        float(np.abs(t[1] - r).mean() / interocular(r))
        for t, r in zip(tracked, reference, strict=True)
        if t is not None and r is not None
    ]
    assert np.mean(errors) < 0.02 and max(errors) < 0.06, (np.mean(errors), max(errors))
    # At most one detection every DETECT_EVERY frames, besides cuts and faceless frames.
    missed = sum(r is None for r in reference)
    assert tracker.detections <= n // DETECT_EVERY + 1 + missed + 2 * len(gaps)


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


def _encoded(frames: list[np.ndarray], path: Path, crf: int) -> list[np.ndarray]:
    """The luma frames after an H.264 round trip at ``crf`` (what a template file holds)."""
    write_video(path, [cv2.cvtColor(f, cv2.COLOR_GRAY2BGR) for f in frames], crf=crf)
    return list(read_gray_frames(path))


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.sampled_from([(320, 240), (640, 360), (1280, 720)]),
    face_share=st.floats(0.12, 0.3),
    crf=st.integers(15, 30),
    # Up to sigma 1 of grain the hold never lets go; at 1.5-2.5 a frame now and then
    # crosses its limit and is predicted anew (measured; see HOLD_LEVELS).
    grain=st.floats(0.0, 1.0),
    beard=st.booleans(),
)
def test_a_still_video_keeps_one_set_of_landmarks(
    size: tuple[int, int], face_share: float, crf: int, grain: float, beard: bool
) -> None:
    """A still encoded as a video (coding noise, sensor-like grain added before encoding)
    gets the same landmarks on every frame, where they belong: dlib's predictor must not
    re-read the noise as a moving mouth."""
    still = _video(1, size, face_share * size[1], 0.0, [], beard=beard)[0]
    rng = np.random.default_rng(crf)
    noisy = [
        np.clip(still + rng.normal(0, grain, still.shape), 0, 255).astype(np.uint8)
        for _ in range(40)
    ]
    with tempfile.TemporaryDirectory() as folder:
        frames = _encoded(noisy, Path(folder) / "still.mp4", crf)
    tracker = FaceTracker()
    tracked = [tracker.track(gray) for gray in frames]
    assert all(t is not None for t in tracked)
    first = tracked[0][1]  # type: ignore[index]
    assert all(np.array_equal(t[1], first) for t in tracked if t is not None)
    reference = _per_frame(frames[:1])[0]
    assert reference is not None
    assert float(np.abs(first - reference).mean() / interocular(reference)) < 0.02


def test_a_slowly_drifting_face_is_followed() -> None:
    """A face moving 0.1 px a frame (too little between two frames to tell from coding
    noise) is not held where it was: its landmarks follow the known motion."""
    n, step = 80, 0.1
    still = _video(1, (640, 360), 90, 0.0, [])[0]
    moved = [
        cv2.warpAffine(still, np.array([[1, 0, step * i], [0, 1, 0]], np.float32), (640, 360))
        for i in range(n)
    ]
    with tempfile.TemporaryDirectory() as folder:
        frames = _encoded(moved, Path(folder) / "drift.mp4", 23)
    tracker = FaceTracker()
    tracked = [tracker.track(gray) for gray in frames]
    assert all(t is not None for t in tracked)
    x = np.array([t[1][list(STABLE), 0].mean() for t in tracked if t is not None])
    assert np.abs((x - x[0]) - step * np.arange(n)).max() < 1.0


def test_a_mouth_that_opens_gets_new_landmarks() -> None:
    """A still face whose mouth opens for a few frames: those frames are predicted afresh
    (their inner lips open), and the frames after it close again."""
    size = (640, 360)
    closed = _video(1, size, 100, 0.0, [])[0]
    # Where the portrait's lips are in this frame (the portrait's mouth, as _video places it).
    scale = 100 / 88.0
    cx, cy = 320 + (223.5 - 223.0) * scale, 180 + (150.0 - 127.0) * scale
    opened = closed.copy()
    cv2.ellipse(
        opened, (round(cx), round(cy)), (round(12 * scale), round(6 * scale)), 0, 0, 360, 25, -1
    )
    clip = [closed] * 10 + [opened] * 5 + [closed] * 10
    with tempfile.TemporaryDirectory() as folder:
        frames = _encoded(clip, Path(folder) / "open.mp4", 23)
    tracker = FaceTracker()
    tracked = [tracker.track(gray) for gray in frames]
    assert all(t is not None for t in tracked)

    def opening(i: int) -> float:
        points = tracked[i][1]  # type: ignore[index]
        gap = points[list(LOWER_INNER), 1] - points[list(UPPER_INNER), 1]
        return float(gap.mean() / interocular(points))

    reference = _per_frame(frames)
    for i in range(10, 15):
        truth = reference[i]
        assert truth is not None
        truth_gap = truth[list(LOWER_INNER), 1] - truth[list(UPPER_INNER), 1]
        assert abs(opening(i) - float(truth_gap.mean() / interocular(truth))) < 0.03
    assert min(opening(i) for i in range(10, 15)) > max(opening(0), opening(24)) + 0.01


def _tracked_looking_ahead(frames: list[np.ndarray]) -> tuple[list, FaceTracker]:
    """As the template analysis runs it: each frame tracked DETECT_EVERY frames after
    the tracker first saw it."""
    out = []
    with FaceTracker() as tracker:
        for index in range(len(frames)):
            out.append(tracker.track(frames[index]))
            upcoming = range(index + 1, min(len(frames), index + 1 + DETECT_EVERY))
            tracker.look_ahead((later, frames[later]) for later in upcoming)
    return out, tracker


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    motion=st.floats(0.0, 1.0),
    gap=st.one_of(
        st.none(),
        st.tuples(st.integers(3, 40), st.integers(1, 12), st.sampled_from(["grey", "backdrop"])),
    ),
    still_run=st.integers(0, 20),
)
def test_detecting_key_frames_ahead_changes_nothing(
    motion: float, gap: tuple[int, int, str] | None, still_run: int
) -> None:
    """The same boxes and landmarks as tracking frame by frame, through cuts, faceless
    frames and held stills (which move the key frames); the helper thread is gone
    afterwards."""
    gaps = [(gap[0], gap[0] + gap[1], gap[2])] if gap else []
    frames = _video(50, (640, 360), 110, motion, gaps)
    frames = frames[:10] + [frames[10]] * still_run + frames[10:]
    plain = FaceTracker()
    expected = [plain.track(gray) for gray in frames]
    tracked, ahead = _tracked_looking_ahead(frames)
    for got, want in zip(tracked, expected, strict=True):
        assert (got is None) == (want is None)
        if got is not None and want is not None:
            assert got[0] == want[0] and np.array_equal(got[1], want[1])
    assert ahead.detections == plain.detections
    assert not [t for t in threading.enumerate() if t.name.startswith("heygem-detect")]


def test_a_moving_faces_key_frames_are_detected_ahead() -> None:
    frames = _video(60, (640, 360), 110, 1.0, [])
    tracked, tracker = _tracked_looking_ahead(frames)
    assert all(t is not None for t in tracked)
    assert tracker.detections >= 60 // DETECT_EVERY
    assert tracker.guessed >= tracker.detections - 1  # all but the first frame's
