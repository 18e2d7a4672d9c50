"""dlib's shape predictor (an ensemble of regression trees) run on its stored arrays.

dlib's reader parses the 99.7 MB 68-point model for 0.36 s in every process that
predicts landmarks, holding the GIL: a third of a cold template's analysis. Its arrays,
stored once (``heygem.face.landmark_store``), map in milliseconds, and a small C kernel
(``heygem/face/_ert.c``, built with the package) runs the prediction on them the way
dlib's ``shape_predictor::operator()`` does, operation for operation and in the same
precision: the landmarks are dlib's integer pixels (the tests compare the two on video
frames, jittered boxes, noise and models of other layouts trained by dlib). Measured on
the 720p benchmark template: 0.46 ms a face against dlib's 0.8 ms and 1.5 ms for the
same steps in numpy (most of a prediction is fetching 7,500 leaf rows from 65 MB of
model; the kernel fetches them ahead). The kernel releases the GIL.

Without a C compiler at install time the kernel is not built (``setup.py``
declares it optional): ``kernel_available()`` is then False and landmarks come from dlib's own
predictor, the same points after dlib's load.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from heygem.face.dlib_model import ShapeModelArrays, UnreadableLandmarkModel

_ert: ModuleType | None
try:
    from heygem.face import _ert
except ImportError:  # built without a C compiler: see kernel_available()
    _ert = None


class UnsupportedLandmarkModel(UnreadableLandmarkModel):
    """A dlib model this predictor cannot run (trees that are not complete)."""


def kernel_available() -> bool:
    """Whether the compiled kernel was built with the package."""
    return _ert is not None


def require_kernel() -> None:
    """Raise ``UnsupportedLandmarkModel`` saying how to get the kernel when it is missing."""
    if _ert is None:
        raise UnsupportedLandmarkModel(
            "the landmark kernel (heygem.face._ert) was not built with the package: "
            "reinstall heygem-harness with a C compiler present"
        )


class ShapePredictor:
    """``predict(gray, rect)`` -> (P, 2) float32 integer pixel coordinates."""

    def __init__(self, arrays: ShapeModelArrays) -> None:
        require_kernel()
        cascades, trees, splits, _ = arrays.split_pixels.shape
        points = arrays.initial.shape[0]
        features = arrays.anchors.shape[1]
        if (splits + 1) & splits:
            raise UnsupportedLandmarkModel(f"trees of {splits} splits are not complete trees")
        self.layout = (cascades, features, trees, splits, points)
        self.initial = np.ascontiguousarray(arrays.initial, dtype=np.float32)
        self.anchors = _indices(arrays.anchors, points, "anchor points")
        self.deltas = np.ascontiguousarray(arrays.deltas, dtype=np.float32)
        self.pairs = _indices(arrays.split_pixels, features, "split feature pixels")
        self.thresholds = np.ascontiguousarray(arrays.thresholds, dtype=np.float32)
        # The 65 MB of leaves stay as given (memory-mapped from the store): the kernel
        # reads only the rows a face reaches.
        self.leaves = arrays.leaves
        if self.leaves.dtype != np.float32 or not self.leaves.flags.c_contiguous:
            self.leaves = np.ascontiguousarray(self.leaves, dtype=np.float32)
        expected = (cascades, trees, splits + 1, 2 * points)
        if self.deltas.shape != (cascades, features, 2) or self.leaves.shape != expected:
            raise UnreadableLandmarkModel("the landmark model's arrays do not fit together")
        # The mean shape, centred: the similarity fit to it is the same for every cascade.
        mean = self.initial.astype(np.float64)
        self.centred = np.ascontiguousarray(mean - mean.mean(axis=0))
        self.sum_squares = float((self.centred**2).sum())

    def predict(self, gray: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
        """``gray``: uint8 luma; ``rect``: the face box's left, top, right, bottom pixels
        (dlib's rectangle, inclusive). Returns the landmarks in ``gray``'s pixels."""
        assert _ert is not None  # (checked when constructed)
        image = np.ascontiguousarray(gray, dtype=np.uint8)
        if image.ndim != 2:
            raise ValueError(f"landmarks need a single-channel image, got shape {gray.shape}")
        out = np.empty((self.layout[4], 2), dtype=np.float32)
        left, top, right, bottom = (int(v) for v in rect)
        _ert.predict(
            image, image.shape[1], image.shape[0], left, top, right, bottom, self.layout,
            self.initial, self.centred, self.sum_squares, self.anchors, self.deltas,
            self.pairs, self.thresholds, self.leaves, out,
        )  # fmt: skip
        return out


def _indices(values: np.ndarray, bound: int, what: str) -> np.ndarray:
    """``values`` as C int32, checked to index ``bound`` items (the kernel trusts them)."""
    if values.size and (int(values.min()) < 0 or int(values.max()) >= bound):
        raise UnreadableLandmarkModel(f"the landmark model's {what} point outside the model")
    return np.ascontiguousarray(values, dtype=np.int32)
