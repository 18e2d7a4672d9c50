"""Weight-free face detection with the Haar cascade OpenCV ships (no downloads).

Detection runs on a downscaled luma plane: the Y plane of a yuv420p frame is already a
grey image, so no colour conversion is spent on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DETECT_WIDTH = 320
DETECTOR_VERSION = f"haar-frontalface-default-w{DETECT_WIDTH}-v1"


@dataclass(frozen=True)
class Box:
    """A face box in full-frame pixels."""

    x: float
    y: float
    w: float
    h: float

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0.0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        inter = ix * iy
        union = self.w * self.h + other.w * other.h - inter
        return inter / union if union > 0 else 0.0


class HaarFaceDetector:
    """Frontal-face Haar cascade; picks the face that continues the previous one."""

    def __init__(self, detect_width: int = DETECT_WIDTH) -> None:
        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(f"OpenCV's Haar cascade is missing at {path}")
        self._detect_width = detect_width

    def detect(self, luma: np.ndarray, previous: Box | None = None) -> Box | None:
        height, width = luma.shape[:2]
        scale = min(1.0, self._detect_width / width)
        small = cv2.resize(luma, (round(width * scale), round(height * scale)),
                           interpolation=cv2.INTER_AREA) if scale < 1.0 else luma
        min_side = max(20, small.shape[1] // 16)
        found = self._cascade.detectMultiScale(
            small, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side)
        )
        if len(found) == 0:
            return None
        boxes = [Box(*(float(v) / scale for v in row)) for row in found]
        if previous is not None:
            best = max(boxes, key=previous.iou)
            if best.iou(previous) > 0.1:
                return best
        return max(boxes, key=lambda b: b.w * b.h)
