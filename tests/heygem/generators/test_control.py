"""The runner around the ``rewrite`` graph: level faces render as they always did, tilted
faces render upright and the edit is turned back onto the tilt (judged on pixels)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from heygem.generators.control import (
    CONTROL,
    PLAN_CONTROL,
    Control,
    OpeningRowsRunner,
    Upright,
)
from heygem.generators.mouths import face_roll
from heygem.generators.runtime import BackendInfo, crops_from_graph, graph_faces, run_on_crops

SIZE = 192


class BandRunner:
    """A stand-in graph: in rows that open, darkens a level band under the crop's middle
    (what the renderer's opened mouth is in an upright crop), and records its inputs."""

    info = BackendInfo("test", ("cpu",), ("cpu",))

    def __init__(self) -> None:
        self.seen: list[np.ndarray] = []

    def run(self, face: np.ndarray, control: np.ndarray) -> np.ndarray:
        assert control.shape[1] == CONTROL
        self.seen.append(face.copy())
        out = face.copy()
        out[:, :, 100:108, 50:142] *= 0.2
        return out


def _crops8(batch: int) -> np.ndarray:
    """8-bit BGR crops [B,S,S,3], as the pipeline cuts them from frames."""
    rng = np.random.default_rng(3)
    smooth = cv2.GaussianBlur(rng.random((SIZE, SIZE, 3)).astype(np.float32), (0, 0), 4)
    crop = np.clip(smooth * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(crop[None], batch, axis=0)


def _crops(batch: int) -> np.ndarray:
    """The graph's face input [B,3,S,S] 0..1 of ``_crops8``."""
    return graph_faces(_crops8(batch))


def _plan_rows(batch: int, roll_degrees: float) -> np.ndarray:
    control = np.zeros((batch, PLAN_CONTROL), np.float32)
    control[:, Control.OPEN] = 0.1
    control[:, Upright.ROLL] = math.radians(roll_degrees)
    control[:, Upright.PIVOT_X], control[:, Upright.PIVOT_Y] = 96.0, 104.0
    return control


def test_level_rows_are_the_graph_output_unchanged() -> None:
    face = _crops(3)
    band = BandRunner()
    level = OpeningRowsRunner(band).run(face, _plan_rows(3, 0.0))
    graph_only = BandRunner().run(face, _plan_rows(3, 0.0)[:, :CONTROL])
    assert np.array_equal(level, graph_only)
    assert np.array_equal(band.seen[0], face)  # the graph saw the crop as it is


@pytest.mark.parametrize("roll", [-15.0, 7.0, 20.0])
def test_tilted_rows_render_upright_and_the_edit_follows_the_tilt(roll: float) -> None:
    face = _crops(2)
    control = _plan_rows(2, roll)
    control[1, Control.OPEN] = 0.0  # a closed row stays the crop itself
    out = OpeningRowsRunner(BandRunner()).run(face, control)
    assert np.array_equal(out[1], face[1])

    changed = np.abs(out[0] - face[0]).max(axis=0) > 0.05
    untouched = np.abs(out[0] - face[0]).max(axis=0) == 0.0
    assert untouched.mean() > 0.9  # pixels the edit left alone are exact, not resampled
    ys, xs = np.nonzero(changed)
    # The band lies along the face's tilt (positive roll: its image-right side lower),
    # centred where the pivot put it.
    cov = np.cov(np.stack([xs, ys]).astype(np.float64))
    evals, evecs = np.linalg.eigh(cov)
    axis = evecs[:, int(np.argmax(evals))]
    angle = math.degrees(math.atan2(axis[1], axis[0]))
    angle = (angle + 90.0) % 180.0 - 90.0
    assert abs(angle - roll) < 2.0, (angle, roll)
    turn = cv2.getRotationMatrix2D((96.0, 104.0), roll, 1.0)
    centre = cv2.invertAffineTransform(turn) @ np.array([96.0, 103.5, 1.0])
    assert np.hypot(xs.mean() - centre[0], ys.mean() - centre[1]) < 2.0


def test_face_roll_reads_the_eye_line() -> None:
    points = np.zeros((68, 2))
    points[36:42] = (60.0, 80.0)
    points[42:48] = (140.0, 80.0)
    for degrees in (-12.0, 0.0, 7.0):
        turn = cv2.getRotationMatrix2D((100.0, 100.0), -degrees, 1.0)  # clockwise: right eye lower
        turned = points @ turn[:, :2].T + turn[:, 2]
        to_crop = np.diag([2.0, 2.0, 1.0])  # a square crop's scale does not change the angle
        assert math.degrees(face_roll(turned, to_crop)) == pytest.approx(degrees, abs=1e-6)


def test_graph_rows_with_some_closed_run_only_the_open_ones() -> None:
    """Rows without the plan's roll columns (benchmarks, fingerprints) still work when only
    some rows open the mouth."""
    face = _crops(3)
    control = _plan_rows(3, 0.0)[:, :CONTROL].copy()
    control[1, Control.OPEN] = 0.0
    band = BandRunner()
    out = OpeningRowsRunner(band).run(face, control)
    assert len(band.seen[0]) == 2
    assert np.array_equal(out[1], face[1])
    assert np.array_equal(out[[0, 2]], BandRunner().run(face[[0, 2]], control[[0, 2]]))


@pytest.mark.parametrize("roll", [0.0, -15.0, 7.0])
def test_the_pipelines_8_bit_path_gives_the_float_paths_pixels(roll: float) -> None:
    """The generate stage hands uint8 crops to ``run_crops`` (no float copy of rows that do
    not open); its pixels are those of the float ``run``, rounded as the pipeline rounds."""
    crops = _crops8(3)
    control = _plan_rows(3, roll)
    control[1, Control.OPEN] = 0.0
    runner = OpeningRowsRunner(BandRunner())
    direct = run_on_crops(runner, crops, control)
    assert direct.dtype == np.uint8 and direct.shape == crops.shape
    assert np.array_equal(direct[1], crops[1])
    assert np.array_equal(direct, crops_from_graph(runner.run(graph_faces(crops), control)))
    assert not np.array_equal(direct[0], crops[0])  # the open rows did change
