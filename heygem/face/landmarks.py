"""68-point face landmarks (iBUG 300-W layout) from dlib's shape predictor.

The model file ships inside the ``face-recognition-models`` package (no download at run
time). That package's ``__init__`` imports ``pkg_resources``, which current setuptools no
longer provides, so the file is located through the import system without importing it.
The template analysis runs the same model on its arrays, stored once per user, in a
compiled kernel (``heygem.face.landmark_store``, ``heygem.face.shape_predictor``): the
same landmarks, without dlib's 0.36 s load in every process.

Point indices used here: 0-16 jaw (8 = chin), 27-35 nose, 36-47 eyes, 48-59 outer lips
(48/54 = mouth corners), 60-67 inner lips (61-63 upper, 65-67 lower).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import threading
from pathlib import Path

import cv2
import numpy as np

from heygem.errors import HeygemError
from heygem.face import landmark_store
from heygem.face.detect import Box
from heygem.face.shape_predictor import ShapePredictor, kernel_available

log = logging.getLogger(__name__)

MODEL_PACKAGE = "face-recognition-models"
MODEL_FILE = "shape_predictor_68_face_landmarks.dat"
LANDMARKS_VERSION = "dlib68-v1"
# The predictor is most accurate on faces of the size it was trained on; tiny faces are
# resampled up to this width before it runs (cheap: it reads ~500 pixels either way).
MIN_FACE_WIDTH = 160.0

UPPER_INNER = (61, 62, 63)
LOWER_INNER = (67, 66, 65)  # paired with UPPER_INNER, left to right
EYE_OUTER = (36, 45)
# Points that do not move when the mouth opens: nose and eye corners.
STABLE = (27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 39, 42, 45)


class LandmarkModelMissing(HeygemError):
    """The packaged landmark model is not installed."""


def model_path() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / "models" / MODEL_FILE
        if path.is_file():
            return path
    raise LandmarkModelMissing(
        f"the face landmark model {MODEL_FILE} was not found",
        hint=f"install it: pip install {MODEL_PACKAGE} (it ships the model file)",
    )


@functools.cache
def _predictor() -> tuple[object, threading.Lock]:
    """The one predictor of the process (100 MB, 0.7 s to load) and its lock: dlib's
    objects must not be used by two threads at once."""
    import dlib

    return dlib.shape_predictor(str(model_path())), threading.Lock()


_stored: dict[tuple[Path, Path], ShapePredictor] = {}
_stored_lock = threading.Lock()


def default_store() -> Path:
    from heygem.config import default_cache_dir

    return default_cache_dir() / "landmarks"


def stored_predictor(store: Path | None = None) -> ShapePredictor | None:
    """The predictor on the model's stored arrays (``heygem.face.landmark_store``; by
    default in the user's cache); None while they are not stored: their conversion then
    starts in a child process for later jobs, and this one uses dlib's reader
    (``landmarks(..., None)``: the same landmarks). Also None, with dlib's reader in
    every job, when the package was installed without its compiled kernel."""
    if not kernel_available():
        _log_missing_kernel()
        return None
    store = store or default_store()
    model = model_path()
    with _stored_lock:
        found = _stored.get((model, store))
        if found is None:
            found = landmark_store.load(model, store)
            if found is None:
                landmark_store.start_conversion(model, store)
                return None
            _stored[(model, store)] = found
        return found


@functools.cache
def _log_missing_kernel() -> None:
    log.warning(
        "the landmark kernel was not built (no C compiler when heygem-harness was "
        "installed): dlib loads its model in every job (+0.4 s); reinstall with gcc present"
    )


def start_landmark_conversion(store: Path | None = None) -> None:
    """Start converting the model's arrays unless they are stored (one ``stat`` then):
    called as a job starts, so the conversion of a machine's first job runs on the
    core its imports leave idle."""
    landmark_store.start_conversion(model_path(), store or default_store())


def landmarks(gray: np.ndarray, box: Box, predictor: ShapePredictor | None = None) -> np.ndarray:
    """(68, 2) float32 full-frame coordinates of the face in ``box`` (uint8 luma), from
    ``predictor`` or else dlib's own (the same landmarks)."""
    scale = max(1.0, MIN_FACE_WIDTH / max(box.w, 1.0))
    if scale == 1.0:
        image, origin = np.ascontiguousarray(gray), (0.0, 0.0)
        corners = (round(box.x), round(box.y), round(box.x + box.w), round(box.y + box.h))
    else:
        # Resample a generous window around the face, not the whole frame.
        height, width = gray.shape[:2]
        margin = 0.6 * box.w
        x0, y0 = max(0, int(box.x - margin)), max(0, int(box.y - margin))
        x1, y1 = min(width, int(box.x + box.w + margin)), min(height, int(box.y + box.h + margin))
        window = gray[y0:y1, x0:x1]
        size = (round(window.shape[1] * scale), round(window.shape[0] * scale))
        image = cv2.resize(window, size, interpolation=cv2.INTER_CUBIC)
        origin = (float(x0), float(y0))
        corners = (
            round((box.x - x0) * scale),
            round((box.y - y0) * scale),
            round((box.x + box.w - x0) * scale),
            round((box.y + box.h - y0) * scale),
        )
    if predictor is not None:
        points = predictor.predict(image, corners)
    else:
        points = _dlib_landmarks(image, corners)
    return (points / scale + np.array(origin, dtype=np.float32)).astype(np.float32)


def _dlib_landmarks(image: np.ndarray, corners: tuple[int, int, int, int]) -> np.ndarray:
    import dlib

    predictor, lock = _predictor()
    with lock:
        shape = predictor(image, dlib.rectangle(*corners))  # type: ignore[operator]
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def interocular(points: np.ndarray) -> np.ndarray:
    """Distance between the outer eye corners: the face's scale, unmoved by speech.
    ``points`` is (..., 68, 2); the result has the leading shape."""
    a, b = points[..., EYE_OUTER[0], :], points[..., EYE_OUTER[1], :]
    return np.asarray(np.linalg.norm(a - b, axis=-1))


def inner_lip_gap(points: np.ndarray) -> np.ndarray:
    """Mean vertical gap between the inner lips, in pixels (..., 68, 2) -> (...)."""
    upper = points[..., list(UPPER_INNER), 1]
    lower = points[..., list(LOWER_INNER), 1]
    return np.asarray(np.clip(lower - upper, 0.0, None).mean(axis=-1))


def mouth_opening(points: np.ndarray) -> np.ndarray:
    """Inner-lip gap in units of the interocular distance: comparable across frames,
    face sizes and videos (0 closed, ~0.25 wide open)."""
    return np.asarray(inner_lip_gap(points) / np.maximum(interocular(points), 1e-6))
