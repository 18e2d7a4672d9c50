"""Weight-free face detection with the Haar cascade OpenCV ships (no downloads).

Detection runs on a downscaled luma plane: the Y plane of a yuv420p frame is already a
grey image, so no colour conversion is spent on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

DETECT_WIDTH = 320
DETECTOR_VERSION = f"haar-frontalface-default-w{DETECT_WIDTH}-v3"


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
        """Track near ``previous`` first (a small window, sizes close to it), then fall
        back to a full-frame search: faces in talking-head templates barely move, and the
        window costs a fraction of a full pass."""
        if previous is not None:
            tracked = self._detect_near(luma, previous)
            if tracked is not None:
                return tracked
        return self._detect_full(luma, previous)

    def _scaled(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        width = image.shape[1]
        scale = min(1.0, self._detect_width / width)
        if scale == 1.0:
            return image, 1.0
        size = (round(width * scale), round(image.shape[0] * scale))
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale

    def _detect_full(self, luma: np.ndarray, previous: Box | None) -> Box | None:
        small, scale = self._scaled(luma)
        min_side = max(20, small.shape[1] // 16)
        found, _, weights = self._cascade.detectMultiScale3(
            small,
            scaleFactor=1.1,
            minNeighbors=5,
            minSize=(min_side, min_side),
            outputRejectLevels=True,
        )
        boxes = [Box(*(float(v) / scale for v in row)) for row in found]
        if not boxes:
            return None
        if previous is not None:
            best = max(boxes, key=previous.iou)
            if best.iou(previous) > 0.1:
                return best
        # The cascade's confidence, not the size: a larger false positive on a textured
        # background must not win over the real face.
        confidence = np.asarray(weights, dtype=np.float64).reshape(-1)
        return boxes[int(np.argmax(confidence))]

    def _detect_near(self, luma: np.ndarray, previous: Box) -> Box | None:
        height, width = luma.shape[:2]
        margin = 0.5 * previous.w
        x0, y0 = max(0, int(previous.x - margin)), max(0, int(previous.y - margin))
        x1 = min(width, int(previous.x + previous.w + margin))
        y1 = min(height, int(previous.y + previous.h + margin))
        window = luma[y0:y1, x0:x1]
        # Same pixel scale as the full search, so boxes agree between the two paths.
        scale = min(1.0, self._detect_width / width)
        if scale < 1.0:
            window = cv2.resize(
                window,
                (max(1, round(window.shape[1] * scale)), max(1, round(window.shape[0] * scale))),
                interpolation=cv2.INTER_AREA,
            )
        side = previous.w * scale
        found = self._cascade.detectMultiScale(
            window,
            scaleFactor=1.1,
            minNeighbors=5,
            minSize=(max(20, int(side * 0.75)),) * 2,
            maxSize=(int(side * 1.35) + 1,) * 2,
        )
        boxes = [
            Box(x0 + r[0] / scale, y0 + r[1] / scale, r[2] / scale, r[3] / scale) for r in found
        ]
        best = max(boxes, key=previous.iou, default=None)
        return best if best is not None and best.iou(previous) > 0.3 else None
