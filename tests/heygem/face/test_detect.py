"""The detector sees the pixels a decoded plane shows, whatever its row padding."""

from __future__ import annotations

import cv2
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from heygem.demo import load_portrait
from heygem.face.detect import FaceDetector


@settings(max_examples=6, deadline=None)
@given(padding=st.integers(1, 96), fill=st.integers(0, 255))
def test_a_padded_plane_view_is_searched_like_its_pixels(padding: int, fill: int) -> None:
    """PyAV's planes are views with rows padded to line_size (480 px rows in 512 bytes);
    dlib ignores a view's stride, so the detector must hand it contiguous pixels."""
    gray = cv2.cvtColor(load_portrait(), cv2.COLOR_BGR2GRAY)
    height, width = gray.shape
    padded = np.full((height, width + padding), fill, dtype=np.uint8)
    padded[:, :width] = gray
    view = padded[:, :width]
    assert not view.flags["C_CONTIGUOUS"]
    expected = FaceDetector().detect(np.ascontiguousarray(view))
    assert expected is not None
    assert FaceDetector().detect(view) == expected
