"""Where a generator's crop sits on the face, from its landmarks, in yuv420p-friendly pixels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from heygem.face.landmarks import interocular

# Lower-face crop side in interocular distances: mouth, chin and the room the jaw needs.
LOWER_FACE_SIDE = 1.55


@dataclass(frozen=True)
class CropSpec:
    """``lowerface``: a square on mouth and chin, placed by the landmarks (the embedded
    generator). ``face``: the face's landmark extent with Wav2Lip's 10 px chin padding.
    ``size`` is the model's input side in pixels."""

    kind: Literal["lowerface", "face"]
    size: int

    @property
    def key(self) -> str:
        return f"{self.kind}{self.size}"

    def region(self, points: np.ndarray, frame_w: int, frame_h: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) with even coordinates (chroma is half resolution), clipped.
        ``points``: the frame's (68, 2) landmarks."""
        if self.kind == "lowerface":
            side = LOWER_FACE_SIDE * float(interocular(points))
            midline = points[[33, 51, 57, 8], 0]
            cx = float(midline.mean())
            cy = 0.5 * float(points[33, 1] + points[8, 1]) + 0.08 * side
            x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
        else:
            x0, y0 = float(points[:, 0].min()), float(points[:, 1].min())
            x1, y1 = float(points[:, 0].max()), float(points[:, 1].max())
            y1 += max(10.0, 0.08 * (y1 - y0))
        return _even_clip(x0, y0, x1, y1, frame_w, frame_h)


def crop_transform(region: tuple[int, int, int, int], size: int) -> np.ndarray:
    """2x3 affine from frame pixels to the ``size`` x ``size`` crop of ``region``
    (the mapping cv2.resize applies, pixel centres aligned)."""
    x0, y0, x1, y1 = region
    sx, sy = size / (x1 - x0), size / (y1 - y0)
    return np.array(
        [[sx, 0.0, 0.5 * sx - 0.5 - x0 * sx], [0.0, sy, 0.5 * sy - 0.5 - y0 * sy]],
        dtype=np.float64,
    )


def _even_clip(
    x0: float, y0: float, x1: float, y1: float, frame_w: int, frame_h: int
) -> tuple[int, int, int, int]:
    def even(v: float, limit: int) -> int:
        return int(min(max(0, round(v / 2) * 2), limit))

    ex0, ey0 = even(x0, frame_w - 2), even(y0, frame_h - 2)
    ex1, ey1 = even(x1, frame_w), even(y1, frame_h)
    return ex0, ey0, max(ex1, ex0 + 2), max(ey1, ey0 + 2)
