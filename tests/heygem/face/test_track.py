from __future__ import annotations

import numpy as np

from heygem.face.track import smooth_track


def _steady(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    boxes = np.tile([100.0, 80.0, 120.0, 120.0], (n, 1))
    boxes[:, :2] += rng.normal(0, 3, (n, 2))  # detector jitter
    return boxes


def test_jitter_is_smoothed() -> None:
    raw = _steady(60)
    boxes, valid = smooth_track(raw)
    assert valid.all()
    assert np.diff(boxes[:, 0]).std() < np.diff(raw[:, 0]).std() / 2


def test_short_gaps_are_filled_long_gaps_pass_through() -> None:
    raw = _steady(60)
    raw[10:13] = np.nan  # a blink of the detector
    raw[30:45] = np.nan  # the face really left
    boxes, valid = smooth_track(raw)
    assert valid[10:13].all()
    assert not valid[30:45].any() and np.isnan(boxes[30:45]).all()


def test_size_outliers_are_dropped() -> None:
    raw = _steady(30)
    raw[15, 2:] = 400.0  # a misfire on the background
    boxes, valid = smooth_track(raw)
    assert valid[15]  # refilled from its neighbours
    assert abs(boxes[15, 2] - 120.0) < 5
