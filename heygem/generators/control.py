"""The ``rewrite`` renderer's control vector, and the runner around its graph.

Apart from the renderer itself (``rewrite.py``, a torch module) so that a job running
the exported graph on ONNX Runtime never imports torch.

The renderer moves the jaw straight down its crop and draws the opened band level: it
works in an upright face. A mouth plan row may carry the face's roll after the graph's
columns (``Upright``): the runner then turns the crop upright about the mouth, renders,
and turns only what the renderer changed back onto the tilted face.
"""

from __future__ import annotations

import math
from enum import IntEnum

import cv2
import numpy as np

from heygem.generators.runtime import BackendInfo, GraphRunner


class Control(IntEnum):
    """Columns of the ``control`` input (crop coordinates: -1 left/top .. 1 right/bottom)."""

    OPEN = 0  # extra opening at the mouth's centre line (normalised units, >= 0)
    CENTER_X = 1  # midpoint of the mouth corners
    HALF_WIDTH = 2  # half the distance between the mouth corners
    UPPER = 3  # upper inner lip, centre
    LOWER = 4  # lower inner lip, centre
    CORNERS = 5  # height of the mouth corners
    CHIN = 6  # the chin's lowest point
    TEETH = 7  # 1: draw the upper teeth's edge in the opened band (the mouth was closed)


CONTROL = len(Control)


class Upright(IntEnum):
    """Plan columns after the graph's (``MouthPlan.control``): how the crop is turned
    upright before rendering. ROLL 0 (a face within ``ROLL_MIN`` of level) renders the
    crop as it is."""

    ROLL = CONTROL  # radians, positive when the face's right side (image right) is lower
    PIVOT_X = CONTROL + 1  # the mouth's centre in crop pixels: the turn keeps it in place
    PIVOT_Y = CONTROL + 2


PLAN_CONTROL = CONTROL + len(Upright)
# A face tilted less renders in its own crop (the turn would move the edit by a fraction of
# a pixel). Low, so that a swaying head does not switch between a level and a turned edit
# visibly (the bundled portrait leans 2.9 degrees; the demo's head sways 1.5 either way).
ROLL_MIN = math.radians(1.0)


def upright_matrix(roll: float, pivot_x: float, pivot_y: float) -> np.ndarray:
    """2x3: crop pixels -> the upright crop's pixels (a turn by ``roll`` about the pivot)."""
    return cv2.getRotationMatrix2D((pivot_x, pivot_y), math.degrees(roll), 1.0)


class OpeningRowsRunner:
    """Runs the graph only on the frames that open the mouth further than the chosen
    template mouth: for the others (most frames of a talking template, silence on a
    still) the graph is exactly the identity, so they are returned as they came."""

    def __init__(self, runner: GraphRunner) -> None:
        self._runner = runner
        self.info: BackendInfo = runner.info

    def run(self, face: np.ndarray, control: np.ndarray) -> np.ndarray:
        """``control``: [B,CONTROL] graph rows, or [B,PLAN_CONTROL] plan rows (with the
        face's roll: tilted rows render upright, see ``upright_matrix``)."""
        rows = control[:, int(Control.OPEN)] > 0.0
        tilted = np.zeros(len(control), dtype=bool)
        if control.shape[1] > CONTROL:
            tilted = rows & (control[:, int(Upright.ROLL)] != 0.0)
        graph = control[:, :CONTROL]
        if rows.all() and not tilted.any():
            return self._runner.run(face, np.ascontiguousarray(graph))
        out = face.copy()
        if rows.any():
            turns = [
                upright_matrix(*(float(v) for v in row[int(Upright.ROLL) :])) for row in control
            ]
            inputs = face[rows].copy()
            for j, i in enumerate(np.flatnonzero(rows)):
                if tilted[i]:
                    inputs[j] = _turn(face[i], turns[i], inverse=False)
            rendered = self._runner.run(inputs, np.ascontiguousarray(graph[rows]))
            for j, i in enumerate(np.flatnonzero(rows)):
                if tilted[i]:
                    rendered[j] = _turn_back_changes(face[i], inputs[j], rendered[j], turns[i])
            out[rows] = rendered
        return out


def _turn(image: np.ndarray, matrix: np.ndarray, *, inverse: bool) -> np.ndarray:
    """[C,S,S] float32 turned by ``matrix`` (or its inverse), plane by plane (no
    transposes), edges replicated."""
    size = image.shape[-1]
    flags = cv2.INTER_LINEAR | (cv2.WARP_INVERSE_MAP if inverse else 0)
    return np.stack(
        [
            cv2.warpAffine(
                plane, matrix, (size, size), flags=flags, borderMode=cv2.BORDER_REPLICATE
            )
            for plane in image
        ]
    )


def _turn_back_changes(
    tilted: np.ndarray, upright: np.ndarray, rendered: np.ndarray, matrix: np.ndarray
) -> np.ndarray:
    """The tilted crop plus the renderer's change of its upright copy, turned back: pixels
    the edit left alone keep their own values exactly (not resampled twice), and only the
    box the change covers is turned (about half the crop: the mouth and the jaw)."""
    change = rendered - upright
    size = tilted.shape[-1]
    rows = np.flatnonzero(np.abs(change).max(axis=(0, 2)) > 0.0)
    if not len(rows):
        return tilted.copy()
    cols = np.flatnonzero(np.abs(change).max(axis=(0, 1)) > 0.0)
    corners = np.array(
        [[cols[0], rows[0]], [cols[-1], rows[0]], [cols[0], rows[-1]], [cols[-1], rows[-1]]],
        np.float64,
    )
    back = cv2.invertAffineTransform(matrix)
    mapped = corners @ back[:2, :2].T + back[:, 2]
    x0, y0 = np.clip(np.floor(mapped.min(axis=0)) - 1, 0, size - 1).astype(int)
    x1, y1 = np.clip(np.ceil(mapped.max(axis=0)) + 2, 1, size).astype(int)
    # Tilted pixel (x0 + i, y0 + j) reads the upright change at matrix @ (x0 + i, y0 + j).
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], np.float64)
    out = tilted.copy()
    for plane, delta in zip(out, change, strict=True):
        plane[y0:y1, x0:x1] += cv2.warpAffine(
            delta,
            shifted,
            (int(x1 - x0), int(y1 - y0)),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
        )
    return out
