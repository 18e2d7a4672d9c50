"""The ``rewrite`` renderer's control vector, and the runner that skips identity rows.

Apart from the renderer itself (``rewrite.py``, a torch module) so that a job running
the exported graph on ONNX Runtime never imports torch.
"""

from __future__ import annotations

from enum import IntEnum

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


class OpeningRowsRunner:
    """Runs the graph only on the frames that open the mouth further than the chosen
    template mouth: for the others (most frames of a talking template, silence on a
    still) the graph is exactly the identity, so they are returned as they came."""

    def __init__(self, runner: GraphRunner) -> None:
        self._runner = runner
        self.info: BackendInfo = runner.info

    def run(self, face: np.ndarray, control: np.ndarray) -> np.ndarray:
        rows = control[:, int(Control.OPEN)] > 0.0
        if rows.all():
            return self._runner.run(face, control)
        out = face.copy()
        if rows.any():
            out[rows] = self._runner.run(
                np.ascontiguousarray(face[rows]), np.ascontiguousarray(control[rows])
            )
        return out
