"""dlib's shape predictor (an ensemble of regression trees) run in numpy on its arrays.

dlib's reader parses the 99.7 MB 68-point model for 0.36 s in every process that
predicts landmarks, holding the GIL: a third of a cold template's analysis. Its arrays,
stored once (``heygem.face.landmark_store``), map in milliseconds. The prediction follows
dlib's ``shape_predictor::operator()`` step for step (the same similarity fit in double
applied in float, pixel rounding, split tests, and leaf increments added tree after tree
in float), so the landmarks are dlib's integer pixels: the tests compare the two on
video frames, jittered boxes and models of other sizes trained by dlib.
"""

from __future__ import annotations

import numpy as np

from heygem.face.dlib_model import ShapeModelArrays, UnreadableLandmarkModel


class UnsupportedLandmarkModel(UnreadableLandmarkModel):
    """A dlib model this predictor cannot run (trees deeper than 4)."""


class ShapePredictor:
    """``predict(gray, rect)`` -> (P, 2) float32 integer pixel coordinates."""

    def __init__(self, arrays: ShapeModelArrays) -> None:
        cascades, trees, splits, _ = arrays.split_pixels.shape
        if splits > 15:
            raise UnsupportedLandmarkModel(
                f"trees of {splits} splits: only depths up to 4 (15 splits) are supported"
            )
        self.initial = np.asarray(arrays.initial, dtype=np.float32)
        self.anchors = np.asarray(arrays.anchors, dtype=np.int64)
        self.deltas = np.asarray(arrays.deltas, dtype=np.float32)
        # Each tree's splits padded to 16 that never go left, so that a tree's outcomes
        # pack into one 16-bit word: (C, 2, T * 16) feature pairs, (C, T * 16) thresholds.
        pairs = np.zeros((cascades, trees, 16, 2), dtype=np.int64)
        pairs[:, :, :splits] = arrays.split_pixels
        self.pairs = np.ascontiguousarray(pairs.reshape(cascades, -1, 2).transpose(0, 2, 1))
        thresholds = np.full((cascades, trees, 16), np.inf, dtype=np.float32)
        thresholds[:, :, :splits] = arrays.thresholds
        self.thresholds = thresholds.reshape(cascades, -1)
        leaves = splits + 1
        self.leaves = np.asarray(arrays.leaves).reshape(cascades, trees * leaves, -1)
        self.leaf_base = np.arange(trees) * leaves
        self.leaf_of = _leaf_table(splits)
        self._cascades = list(
            zip(
                self.deltas[:, :, None, :], self.anchors, self.pairs, self.thresholds,
                self.leaves, strict=True,
            )
        )  # fmt: skip
        # The mean shape, centred: the fit to it is the same for every cascade.
        mean = self.initial.astype(np.float64)
        self.centred = mean - mean.mean(axis=0)
        self.sum_squares = float((self.centred**2).sum())

    def predict(self, gray: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
        """``gray``: uint8 luma; ``rect``: the face box's left, top, right, bottom pixels
        (dlib's rectangle, inclusive). Returns the landmarks in ``gray``'s pixels."""
        height, width = gray.shape[:2]
        flat = np.ascontiguousarray(gray).reshape(-1)
        left, top, right, bottom = rect
        # dlib's box transform: the unit square onto the box's corners, in double
        scale = np.array([right - left, bottom - top], dtype=np.float64)
        offset = np.array([left + 0.5, top + 0.5])  # (+ 0.5, then floor: rounding)
        limits = np.array([width, height], dtype=np.uint64)
        stride = np.array([1, width], dtype=np.int64)
        shape = self.initial
        steps = np.empty((self.leaf_base.size + 1, shape.size), dtype=np.float32)
        increments = steps[1:]
        for deltas, anchors, pairs, thresholds, leaves in self._cascades:
            # The feature pixels: their offsets turned and scaled as the shape is from the
            # mean shape, placed at their anchor points (in float: each product rounded,
            # then summed, as dlib does; a matrix product may fuse them and round
            # differently), then into the box (in double).
            products = np.multiply(deltas, self._similarity(shape))  # (F, row, column)
            xy = np.add(products[:, :, 0], products[:, :, 1])
            xy += shape.take(anchors, axis=0)
            placed = np.multiply(xy, scale, dtype=np.float64)
            placed += offset
            pixel = np.floor(placed, out=placed).astype(np.int64)
            # Outside the image a feature reads 0. (Negatives are huge as unsigned; the two
            # booleans of a row, viewed as one 16-bit word, are 0x0101 when both hold.)
            inside = (pixel.view(np.uint64) < limits).view(np.uint16).reshape(-1) == 0x0101
            where = pixel @ stride
            where *= inside
            features = flat.take(where).astype(np.float32)
            features *= inside
            first, second = features.take(pairs)
            first -= second
            outcomes = np.packbits(first > thresholds, bitorder="little")
            rows = self.leaf_of.take(outcomes.view("<u2"))
            rows += self.leaf_base
            # dlib adds the trees' increments one after another onto the shape
            steps[0] = shape.reshape(-1)
            leaves.take(rows, axis=0, out=increments)
            shape = np.add.reduce(steps, axis=0).reshape(-1, 2)
        pixel = np.floor(shape.astype(np.float64) * scale + offset)
        return pixel.astype(np.float32)

    def _similarity(self, shape: np.ndarray) -> np.ndarray:
        """The rotation and scale (2x2 float32) that best maps the mean shape onto
        ``shape``: Umeyama's least squares in double, as dlib's
        ``find_similarity_transform``, rounded to float as dlib does."""
        # (the mean shape is centred, so ``shape``'s own mean drops out of the covariance)
        (c00, c01), (c10, c11) = (shape.astype(np.float64).T @ self.centred).tolist()
        if c00 * c11 - c01 * c10 > 0:  # a proper rotation: the closed form of the 2x2 SVD
            a, b = (c00 + c11) / self.sum_squares, (c10 - c01) / self.sum_squares
            return np.array([[a, -b], [b, a]], dtype=np.float32)
        # A reflection (never on a face): dlib's general form.
        cov = np.array([[c00, c01], [c10, c11]])
        u, d, vt = np.linalg.svd(cov)
        s = np.ones(2)
        if np.linalg.det(cov) < 0 or np.linalg.det(u) * np.linalg.det(vt) < 0:
            s[1 if d[1] < d[0] else 0] = -1.0
        return ((u * s) @ vt * float((d * s).sum()) / self.sum_squares).astype(np.float32)


def _leaf_table(splits: int) -> np.ndarray:
    """The leaf reached for every combination of split outcomes (bit i set: split i goes
    left), following dlib's walk of a complete tree (node i's children 2i+1, 2i+2)."""
    if (splits + 1) & splits:
        raise UnsupportedLandmarkModel(f"trees of {splits} splits are not complete trees")
    outcomes = np.arange(1 << 16)
    node = np.zeros_like(outcomes)
    while (node < splits).any():
        left = (outcomes >> np.minimum(node, 15)) & 1
        node = np.where(node < splits, np.where(left == 1, 2 * node + 1, 2 * node + 2), node)
    return node - splits
