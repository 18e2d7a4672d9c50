"""The compiled predictor gives dlib's landmarks exactly, judged by dlib itself.

Inputs nobody tuned for: the bundled portrait moving at several sizes (boxes from dlib's
detector, jittered, half outside the frame), tiny faces (the upsampled path), pure noise,
and models of other layouts that dlib trains in the test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heygem.face import shape_predictor
from heygem.face.detect import Box, FaceDetector
from heygem.face.dlib_model import (
    ShapeModelArrays,
    UnreadableLandmarkModel,
    read_dlib_shape_predictor,
)
from heygem.face.landmarks import landmarks, model_path, stored_predictor
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
    [
        (5, 3, 4, 20, 60),
        (9, 1, 2, 7, 30),
        (3, 4, 6, 10, 100),
        (12, 2, 10, 15, 80),
        (4, 5, 2, 6, 40),  # trees deeper than the shipped model's
        (6, 6, 2, 3, 50),
    ],
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


def _arrays(splits: int = 3, points: int = 4, features: int = 6) -> ShapeModelArrays:
    rng = np.random.default_rng(0)
    cascades, trees = 2, 3
    return ShapeModelArrays(
        initial=rng.random((points, 2), dtype=np.float32),
        anchors=rng.integers(0, points, (cascades, features)),
        deltas=rng.normal(0, 0.1, (cascades, features, 2)).astype(np.float32),
        split_pixels=rng.integers(0, features, (cascades, trees, splits, 2)),
        thresholds=rng.normal(0, 10, (cascades, trees, splits)).astype(np.float32),
        leaves=rng.normal(0, 0.01, (cascades, trees, splits + 1, 2 * points)).astype(np.float32),
    )


def test_trees_that_are_not_complete_are_refused_clearly() -> None:
    with pytest.raises(UnsupportedLandmarkModel, match="4 splits are not complete trees"):
        ShapePredictor(_arrays(splits=4))


@pytest.mark.parametrize(("field", "value"), [("anchors", 4), ("anchors", -1), ("split_pixels", 6)])
def test_indices_outside_the_model_are_refused_before_the_kernel_reads_them(
    field: str, value: int
) -> None:
    arrays = _arrays()
    getattr(arrays, field).flat[3] = value
    with pytest.raises(UnreadableLandmarkModel, match="outside the model"):
        ShapePredictor(arrays)


def test_arrays_that_do_not_fit_together_are_refused() -> None:
    arrays = dataclasses.replace(_arrays(), leaves=_arrays().leaves[:, :, :, :4].copy())
    with pytest.raises(UnreadableLandmarkModel, match="do not fit together"):
        ShapePredictor(arrays)


def test_a_colour_image_is_refused_clearly(predictor: ShapePredictor) -> None:
    with pytest.raises(ValueError, match="single-channel"):
        predictor.predict(np.zeros((100, 100, 3), dtype=np.uint8), (10, 10, 80, 80))


def test_without_the_kernel_jobs_use_dlibs_predictor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shape_predictor, "_ert", None)
    assert not shape_predictor.kernel_available()
    assert stored_predictor() is None  # (and no conversion starts: nothing could run it)
    with pytest.raises(UnsupportedLandmarkModel, match="C compiler"):
        ShapePredictor(read_dlib_shape_predictor(model_path()))
