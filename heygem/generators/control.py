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
            chosen = np.flatnonzero(rows)
            turns = {
                int(i): upright_matrix(*(float(v) for v in control[i, int(Upright.ROLL) :]))
                for i in np.flatnonzero(tilted)
            }
            inputs = face[chosen].copy()
            for j, i in enumerate(chosen.tolist()):
                if i in turns:
                    inputs[j] = _turn_upright(face[i], turns[i])
            rendered = self._runner.run(inputs, np.ascontiguousarray(graph[chosen]))
            for j, i in enumerate(chosen.tolist()):
                if i in turns:
                    rendered[j] = _turn_back_changes(face[i], inputs[j], rendered[j], turns[i])
            out[chosen] = rendered
        return out


# The turns run on 8-bit pixels: the crops come from 8-bit frames (face * 255 is whole)
# and go back to 8 bits after the graph, and OpenCV's 8-bit resampling is ~3x faster.
def _hwc8(*planes: np.ndarray) -> np.ndarray:
    """[S,S] float32 0..1 planes -> [S,S,C] uint8, rounded (OpenCV: several times faster
    than numpy's scale, cast and transpose here; the planes are never negative)."""
    return np.asarray(cv2.convertScaleAbs(cv2.merge(planes), alpha=255.0))


def _turn_upright(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """[C,S,S] float32 crop turned by ``matrix`` (edges replicated), same layout."""
    size = image.shape[-1]
    turned = cv2.warpAffine(
        _hwc8(*image), matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return np.asarray(turned.transpose(2, 0, 1), dtype=np.float32) * np.float32(1.0 / 255.0)


def _turn_back_changes(
    tilted: np.ndarray, upright: np.ndarray, rendered: np.ndarray, matrix: np.ndarray
) -> np.ndarray:
    """The tilted crop with the pixels the renderer changed in its upright copy turned
    back onto it. Pixels the edit left alone keep their own values exactly (not resampled
    twice); only the box the change covers (the mouth and the jaw) is turned back."""
    changed = np.abs(rendered - upright).max(axis=0) > 0.5 / 255.0
    rows = np.flatnonzero(changed.any(axis=1))
    if not len(rows):
        return tilted.copy()
    cols = np.flatnonzero(changed.any(axis=0))
    size = tilted.shape[-1]
    corners = np.array(
        [[cols[0], rows[0]], [cols[-1], rows[0]], [cols[0], rows[-1]], [cols[-1], rows[-1]]],
        np.float64,
    )
    back = cv2.invertAffineTransform(matrix)
    mapped = corners @ back[:, :2].T + back[:, 2]
    x0, y0 = np.clip(np.floor(mapped.min(axis=0)) - 2, 0, size - 1).astype(int)
    x1, y1 = np.clip(np.ceil(mapped.max(axis=0)) + 3, 1, size).astype(int)
    # Tilted pixel (x0 + i, y0 + j) reads the upright crop at matrix @ (x0 + i, y0 + j).
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], np.float64)
    box = (int(x1 - x0), int(y1 - y0))
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    # The changed pixels' mask (grown by one) turns back with them, as a fourth channel.
    mask = cv2.dilate(changed.astype(np.float32), _GROW)
    turned = cv2.warpAffine(_hwc8(*rendered, mask), shifted, box, flags=flags)
    turned = turned.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255.0)
    weight = turned[3:]
    out = tilted.copy()
    region = out[:, y0:y1, x0:x1]
    region += (turned[:3] - region) * weight
    return out


_GROW = np.ones((3, 3), np.uint8)
