"""Small shape predictors trained by dlib itself: real model files of other layouts.

The faces are drawn (a bright ellipse with dark marks where the points are), so a model
trains in milliseconds; what matters is that dlib writes the file, in its own format,
with the layout asked for (points, tree depth, cascades, trees, feature pixels).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import cv2
import numpy as np


def drawn_face(
    rng: np.random.Generator, points: int, size: int = 160
) -> tuple[np.ndarray, tuple[int, int, int, int], np.ndarray]:
    """A luma image, its face box (left, top, right, bottom) and ``points`` marks on it."""
    image = rng.integers(0, 60, (size, size), dtype=np.uint8)
    cx, cy = rng.uniform(0.4, 0.6, 2) * size
    radius = rng.uniform(0.15, 0.25) * size
    cv2.ellipse(image, (int(cx), int(cy)), (int(radius), int(radius * 1.2)), 0, 0, 360, 200, -1)
    angles = np.linspace(0, 2 * np.pi, points, endpoint=False) + rng.uniform(0, 0.3)
    marks = np.stack([cx + 0.6 * radius * np.cos(angles), cy + 0.7 * radius * np.sin(angles)], 1)
    for x, y in marks:
        cv2.circle(image, (int(x), int(y)), 3, 40, -1)
    box = (int(cx - radius), int(cy - 1.2 * radius), int(cx + radius), int(cy + 1.2 * radius))
    return image, box, marks


def train_predictor(
    path: Path,
    *,
    points: int = 5,
    depth: int = 3,
    cascades: int = 4,
    trees: int = 20,
    features: int = 60,
    seed: int = 0,
) -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """Train and save a predictor; returns its training images and boxes."""
    import dlib

    rng = np.random.default_rng(seed)
    faces = [drawn_face(rng, points) for _ in range(12)]
    options = dlib.shape_predictor_training_options()
    options.tree_depth = depth
    options.cascade_depth = cascades
    options.num_trees_per_cascade_level = trees
    options.feature_pool_size = features
    options.oversampling_amount = 2
    options.num_threads = 1
    options.be_verbose = False
    objects = [
        [
            dlib.full_object_detection(
                dlib.rectangle(*box), [dlib.point(int(x), int(y)) for x, y in marks]
            )
        ]
        for _, box, marks in faces
    ]
    predictor = dlib.train_shape_predictor([image for image, _, _ in faces], objects, options)
    predictor.save(str(path))
    return [(image, box) for image, box, _ in faces]


def dlib_points(model: Path, image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """dlib's own prediction (the reference)."""
    import dlib

    stat = model.stat()  # (a model rewritten under the same name is loaded afresh)
    predictor = _dlib_predictor(str(model), stat.st_size, stat.st_mtime_ns)
    shape = predictor(image, dlib.rectangle(*box))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


@functools.cache
def _dlib_predictor(model: str, size: int, mtime_ns: int) -> Any:
    """Loaded once per model file version (the shipped one takes 0.36 s)."""
    import dlib

    return dlib.shape_predictor(model)
