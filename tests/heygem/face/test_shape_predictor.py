"""The numpy predictor gives dlib's landmarks exactly, judged by dlib itself.

Inputs nobody tuned for: the bundled portrait moving at several sizes (boxes from dlib's
detector, jittered, half outside the frame), tiny faces (the upsampled path), pure noise,
and models of other layouts that dlib trains in the test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heygem.face.detect import Box, FaceDetector
from heygem.face.dlib_model import read_dlib_shape_predictor
from heygem.face.landmarks import landmarks, model_path
from heygem.face.shape_predictor import ShapePredictor, UnsupportedLandmarkModel
from tests.heygem.face.dlib_models import dlib_points, drawn_face, train_predictor
from tests.heygem.face.test_tracker import _video


@pytest.fixture(scope="module")
def predictor() -> ShapePredictor:
    return ShapePredictor(read_dlib_shape_predictor(model_path()))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.sampled_from([(320, 240), (640, 360), (1280, 720)]),
    face_share=st.floats(0.08, 0.45),
    motion=st.floats(0.0, 1.0),
    jitter=st.floats(0.0, 0.3),
    seed=st.integers(0, 2**16),
)
def test_landmarks_equal_dlibs_on_moving_faces(
    predictor: ShapePredictor,
    size: tuple[int, int],
    face_share: float,
    motion: float,
    jitter: float,
    seed: int,
) -> None:
    frames = _video(12, size, face_share * size[1], motion, [])
    rng = np.random.default_rng(seed)
    detector, previous, compared = FaceDetector(), None, 0
    for gray in frames:
        box = detector.detect(gray, previous)
        previous = box or previous
        if box is None:
            continue
        dx, dy, dw, dh = rng.normal(0.0, jitter * box.w, 4)
        moved = Box(box.x + dx, box.y + dy, max(8.0, box.w + dw), max(8.0, box.h + dh))
        for face in (box, moved):  # (small faces take landmarks()' upsampled path)
            assert np.array_equal(landmarks(gray, face, predictor), landmarks(gray, face))
            compared += 1
    assert compared >= 12


def test_boxes_reaching_outside_the_frame_read_zeros_as_dlib_does(
    predictor: ShapePredictor,
) -> None:
    gray = _video(1, (640, 360), 150, 0.0, [])[0]
    for box in [(-80, -60, 120, 140), (540, 250, 760, 470), (-200, 100, 40, 300)]:
        ours = predictor.predict(gray, box)
        assert np.array_equal(ours, dlib_points(model_path(), gray, box)), box


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_images_give_dlibs_landmarks(predictor: ShapePredictor, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gray = rng.integers(0, 256, (200 + 37 * seed, 300 + 11 * seed), dtype=np.uint8)
    box = (int(rng.integers(-20, 60)), int(rng.integers(-20, 60)), 150, 170)
    assert np.array_equal(predictor.predict(gray, box), dlib_points(model_path(), gray, box))


@pytest.mark.parametrize(
    ("points", "depth", "cascades", "trees", "features"),
    [(5, 3, 4, 20, 60), (9, 1, 2, 7, 30), (3, 4, 6, 10, 100), (12, 2, 10, 15, 80)],
)
def test_models_dlib_trained_predict_as_dlib_does(
    tmp_path: Path, points: int, depth: int, cascades: int, trees: int, features: int
) -> None:
    path = tmp_path / "trained.dat"
    faces = train_predictor(
        path, points=points, depth=depth, cascades=cascades, trees=trees, features=features
    )
    ours = ShapePredictor(read_dlib_shape_predictor(path))
    rng = np.random.default_rng(points)
    unseen = [drawn_face(rng, points)[:2] for _ in range(6)]
    for image, (left, top, right, bottom) in faces + unseen:
        for shift in range(-6, 7, 3):
            box = (left + shift, top - shift, right + 2 * shift, bottom)
            assert np.array_equal(ours.predict(image, box), dlib_points(path, image, box))


def test_trees_deeper_than_four_are_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "deep.dat"
    train_predictor(path, depth=5, cascades=2, trees=4)
    with pytest.raises(UnsupportedLandmarkModel, match="31 splits"):
        ShapePredictor(read_dlib_shape_predictor(path))
