"""Paste generated crops back with a feathered mask: no rectangle seams, colour kept."""

from __future__ import annotations

import functools

import av
import cv2
import numpy as np

from heygem.media.frames import Region, paste_bgr


@functools.lru_cache(maxsize=64)
def feather_mask(width: int, height: int, kind: str) -> np.ndarray:
    """A 0..1 float32 mask that is 1 in the middle and fades to 0 well inside the edges.

    ``lowerface``: an ellipse on mouth and chin. ``face``: the lower two thirds of the face box
    (Wav2Lip regenerates the lower half; the upper part stays the original).
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    u = (xs + 0.5) / width * 2 - 1
    v = (ys + 0.5) / height * 2 - 1
    if kind == "lowerface":
        radius = np.sqrt((u / 0.9) ** 2 + (v / 0.9) ** 2)
    else:
        radius = np.sqrt(
            (u / 0.92) ** 2
            + (np.maximum(0.0, 0.1 - v) / 0.45) ** 2
            + (np.maximum(0.0, v - 0.0) / 0.95) ** 2
        )
    # 1 inside 60 % of the radius, smooth fall-off to 0 at the edge of the ellipse.
    ramp = np.clip((1.0 - radius) / 0.4, 0.0, 1.0)
    mask = (ramp * ramp * (3 - 2 * ramp)).astype(np.float32)
    mask.setflags(write=False)
    return mask


def composite(frame: av.VideoFrame, region: Region, generated: np.ndarray, kind: str) -> None:
    """Resize ``generated`` (S x S BGR) into ``region`` and blend it into ``frame`` in place."""
    x0, y0, x1, y1 = region
    width, height = x1 - x0, y1 - y0
    resized = cv2.resize(generated, (width, height), interpolation=cv2.INTER_LINEAR)
    paste_bgr(frame, region, resized, feather_mask(width, height, kind))
