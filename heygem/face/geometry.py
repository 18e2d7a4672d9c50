"""Where a generator's crop sits relative to the face box, in yuv420p-friendly pixels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class CropSpec:
    """``mouth``: a square around the mouth (mouthwarp). ``face``: the face box with
    Wav2Lip's 10 px chin padding. ``size`` is the model's input side in pixels."""

    kind: Literal["mouth", "face"]
    size: int

    @property
    def key(self) -> str:
        return f"{self.kind}{self.size}"

    def region(self, box: np.ndarray, frame_w: int, frame_h: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) with even coordinates (chroma is half resolution), clipped."""
        x, y, w, h = (float(v) for v in box)
        if self.kind == "mouth":
            # Haar boxes span brow to chin; the mouth sits at ~83 % height, centred.
            side = 0.64 * w
            cx, cy = x + 0.5 * w, y + 0.83 * h
            x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
        else:
            pad_bottom = max(10.0, 0.08 * h)
            x0, y0, x1, y1 = x, y, x + w, y + h + pad_bottom
        return _even_clip(x0, y0, x1, y1, frame_w, frame_h)


def _even_clip(
    x0: float, y0: float, x1: float, y1: float, frame_w: int, frame_h: int
) -> tuple[int, int, int, int]:
    def even(v: float, limit: int) -> int:
        return int(min(max(0, round(v / 2) * 2), limit))

    ex0, ey0 = even(x0, frame_w - 2), even(y0, frame_h - 2)
    ex1, ey1 = even(x1, frame_w), even(y1, frame_h)
    return ex0, ey0, max(ex1, ex0 + 2), max(ey1, ey0 + 2)
