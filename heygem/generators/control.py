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

from heygem.generators.runtime import BackendInfo, GraphRunner, crops_from_graph, graph_faces


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
    still) the graph is exactly the identity, so they are returned as they came.

    Tilted rows (plan rows with a roll) render upright: the turns run on 8-bit pixels
    (the crops come from 8-bit frames, and OpenCV's 8-bit resampling is ~3x faster)."""

    def __init__(self, runner: GraphRunner) -> None:
        self._runner = runner
        self.info: BackendInfo = runner.info

    def run(self, face: np.ndarray, control: np.ndarray) -> np.ndarray:
        """``face`` [B,3,S,S] 0..1; ``control``: [B,CONTROL] graph rows, or [B,PLAN_CONTROL]
        plan rows (with the face's roll: tilted rows render upright, see ``upright_matrix``)."""
        chosen, turns = _rows_to_render(control)
        if len(chosen) == len(control) and not turns:
            return self._runner.run(face, np.ascontiguousarray(control[:, :CONTROL]))
        out = face.copy()
        level = np.array([i for i in chosen.tolist() if i not in turns], dtype=np.int64)
        if len(level):
            graph_rows = np.ascontiguousarray(control[level, :CONTROL])
            out[level] = self._runner.run(face[level], graph_rows)
        if turns:  # turned on their 8-bit pixels, as the pipeline's crops are
            tilted = sorted(turns)
            turned = self.run_crops(crops_from_graph(face[tilted]), control[tilted])
            out[tilted] = graph_faces(turned)
        return out

    def run_crops(self, crops: np.ndarray, control: np.ndarray) -> np.ndarray:
        """``run`` on uint8 BGR crops [B,S,S,3], returning uint8 crops: only the rows that
        open are converted for the graph, and the turns need no conversion at all."""
        chosen, turns = _rows_to_render(control)
        out = np.array(crops, dtype=np.uint8, copy=True)
        if not len(chosen):
            return out
        inputs = out[chosen]
        for j, i in enumerate(chosen.tolist()):
            if i in turns:
                inputs[j] = _turn_upright(out[i], turns[i])
        rendered = crops_from_graph(
            self._runner.run(graph_faces(inputs), np.ascontiguousarray(control[chosen, :CONTROL]))
        )
        for j, i in enumerate(chosen.tolist()):
            if i in turns:
                rendered[j] = _turn_back_changes(out[i], inputs[j], rendered[j], turns[i])
        out[chosen] = rendered
        return out


def _rows_to_render(control: np.ndarray) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """The rows that open (indices), and the upright turn of each tilted one among them."""
    rows = control[:, int(Control.OPEN)] > 0.0
    tilted = np.zeros(len(control), dtype=bool)
    if control.shape[1] > CONTROL:
        tilted = rows & (control[:, int(Upright.ROLL)] != 0.0)
    turns = {
        int(i): upright_matrix(*(float(v) for v in control[i, int(Upright.ROLL) :]))
        for i in np.flatnonzero(tilted)
    }
    return np.flatnonzero(rows), turns


def _turn_upright(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """[S,S,3] uint8 crop turned by ``matrix`` (edges replicated)."""
    size = image.shape[0]
    return np.asarray(
        cv2.warpAffine(
            image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
    )


def _turn_back_changes(
    tilted: np.ndarray, upright: np.ndarray, rendered: np.ndarray, matrix: np.ndarray
) -> np.ndarray:
    """The tilted [S,S,3] uint8 crop with the pixels the renderer changed in its upright
    copy turned back onto it. Pixels the edit left alone keep their own values exactly
    (not resampled twice); only the box the change covers (the mouth and the jaw) is
    turned back, read from the part of the upright crop around the change."""
    # (numpy's reductions over 3 interleaved channels are slow; OR-ing them is not)
    difference = np.asarray(cv2.absdiff(rendered, upright), dtype=np.uint8)
    changed = ((difference[..., 0] | difference[..., 1] | difference[..., 2]) != 0).view(np.uint8)
    left, top, width, height = cv2.boundingRect(changed)
    if not width:
        return tilted.copy()
    right, bottom = left + width - 1, top + height - 1
    size = tilted.shape[0]
    corners = np.array([[left, top], [right, top], [left, bottom], [right, bottom]], np.float64)
    back = cv2.invertAffineTransform(matrix)
    mapped = corners @ back[:, :2].T + back[:, 2]
    x0, y0 = np.clip(np.floor(mapped.min(axis=0)) - 2, 0, size - 1).astype(int)
    x1, y1 = np.clip(np.ceil(mapped.max(axis=0)) + 3, 1, size).astype(int)
    # The upright pixels the box can read: the change, grown by the mask's dilation and
    # the bilinear neighbour (outside it the mask is 0, so nothing else is read).
    sx0, sy0 = max(0, left - 2), max(0, top - 2)
    sx1, sy1 = min(size, right + 3), min(size, bottom + 3)
    # Tilted pixel (x0 + i, y0 + j) reads the upright crop at matrix @ (x0 + i, y0 + j).
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], np.float64) - np.array([sx0, sy0])
    box = (int(x1 - x0), int(y1 - y0))
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    # The changed pixels' mask (grown by one) turns back with them, as a fourth channel.
    with_mask = np.empty((sy1 - sy0, sx1 - sx0, 4), np.uint8)
    with_mask[..., :3] = rendered[sy0:sy1, sx0:sx1]
    with_mask[..., 3] = cv2.dilate(changed[sy0:sy1, sx0:sx1] * np.uint8(255), _GROW)
    turned = cv2.warpAffine(with_mask, shifted, box, flags=flags)
    # (OpenCV splits the interleaved channels several times faster than numpy's casts)
    colour = cv2.cvtColor(turned, cv2.COLOR_BGRA2BGR).astype(np.float32)
    weight = cv2.extractChannel(turned, 3).astype(np.float32)[..., None]
    weight *= np.float32(1.0 / 255.0)
    out = tilted.copy()
    region = out[y0:y1, x0:x1]
    below = region.astype(np.float32)
    colour -= below  # region + (colour - region) * weight, rounded, in place
    colour *= weight
    colour += below
    colour += np.float32(0.5)
    region[...] = np.floor(colour, out=colour)
    return out


_GROW = np.ones((3, 3), np.uint8)
