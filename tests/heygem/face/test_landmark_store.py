"""The landmark model's arrays: converted once in a child process, mapped afterwards.

Real children, real files: the conversion runs as ``heygem generate`` runs it, and the
stored arrays are judged by predicting with them against dlib.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from heygem.face import landmark_store
from heygem.face.landmarks import stored_predictor
from tests.heygem.face.dlib_models import dlib_points, train_predictor


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, list[tuple[np.ndarray, tuple[int, int, int, int]]]]:
    path = tmp_path / "models" / "tiny.dat"
    path.parent.mkdir()
    return path, train_predictor(path)


def _no_conversion_children() -> bool:
    for child in psutil.Process().children(recursive=True):
        try:
            if "heygem.face.landmark_store" in " ".join(child.cmdline()):
                return False
        except psutil.Error:
            continue
    return True


def test_a_conversion_in_a_child_stores_arrays_that_predict_as_dlib(
    tmp_path: Path, model: tuple[Path, list]
) -> None:
    path, faces = model
    store = tmp_path / "store"
    assert landmark_store.load(path, store) is None
    landmark_store.start_conversion(path, store)
    landmark_store.wait_for_conversions()
    assert _no_conversion_children()  # reaped: none running, no zombie
    predictor = landmark_store.load(path, store)
    assert predictor is not None
    for image, box in faces:
        assert np.array_equal(predictor.predict(image, box), dlib_points(path, image, box))
    # Stored complete or not at all: nothing but the entry is left in the store.
    assert [p.name for p in store.iterdir()] == [landmark_store.entry_for(path, store).name]


def test_a_reinstalled_model_is_converted_again(tmp_path: Path, model: tuple[Path, list]) -> None:
    path, _ = model
    store = tmp_path / "store"
    landmark_store.convert(path, store)
    before = landmark_store.entry_for(path, store)
    train_predictor(path, points=7, seed=5)  # a different model under the same name
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert landmark_store.entry_for(path, store) != before
    assert landmark_store.load(path, store) is None
    landmark_store.convert(path, store)
    predictor = landmark_store.load(path, store)
    assert predictor is not None and predictor.initial.shape == (7, 2)


def test_a_damaged_entry_is_removed_and_converted_again(
    tmp_path: Path, model: tuple[Path, list]
) -> None:
    path, _ = model
    store = tmp_path / "store"
    entry = landmark_store.convert(path, store)
    (entry / "rest.npz").write_bytes(b"not an npz")
    assert landmark_store.load(path, store) is None
    assert not entry.exists()
    landmark_store.convert(path, store)
    assert landmark_store.load(path, store) is not None


def test_a_model_that_cannot_be_converted_is_not_tried_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "broken.dat"
    path.write_bytes(bytes(range(256)) * 40)
    store = tmp_path / "store"
    landmark_store.start_conversion(path, store)
    landmark_store.wait_for_conversions()
    assert "conversion into" in caplog.text and "failed" in caplog.text
    note = landmark_store.failure_note(landmark_store.entry_for(path, store))
    assert "UnreadableLandmarkModel" in note.read_text()
    landmark_store.start_conversion(path, store)  # the note stops it: no child at all
    assert _no_conversion_children() and not landmark_store._running


def test_an_unwritable_store_leaves_dlibs_reader_without_an_error(
    tmp_path: Path, model: tuple[Path, list]
) -> None:
    path, _ = model
    blocked = tmp_path / "file-not-dir"
    blocked.write_text("")
    landmark_store.start_conversion(path, blocked / "store")  # mkdir fails: logged only
    assert not landmark_store._running and _no_conversion_children()


def test_the_installed_model_is_served_from_the_store(tmp_path: Path) -> None:
    """As a job sees it: no arrays yet (None, conversion started), then the predictor."""
    store = tmp_path / "store"
    assert stored_predictor(store) is None
    landmark_store.wait_for_conversions()
    predictor = stored_predictor(store)
    assert predictor is not None and predictor.leaves.shape[0] == 15
    assert stored_predictor(store) is predictor  # loaded once per process


def test_an_image_build_converts_the_installed_model_ahead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m heygem.face.landmark_store`` (the Dockerfile's step) fills the store the
    jobs then read: their first one starts no conversion."""
    monkeypatch.setenv("HEYGEM_CACHE_DIR", str(tmp_path / "cache"))
    assert landmark_store.main([]) == 0
    entry = Path(capsys.readouterr().out.strip())
    assert entry.parent == tmp_path / "cache" / "landmarks" and (entry / "leaves.npy").exists()
    assert stored_predictor() is not None and not landmark_store._running
    assert landmark_store.main(["only-one-argument"]) == 2


def test_without_the_kernel_converting_ahead_says_why_and_leaves_no_failure_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from heygem.face import shape_predictor

    monkeypatch.setenv("HEYGEM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(shape_predictor, "_ert", None)
    assert landmark_store.main([]) == 1
    assert "C compiler" in capsys.readouterr().err
    # Nothing stops a later conversion, once reinstalled with a compiler:
    assert not (tmp_path / "cache" / "landmarks").exists() or not any(
        p.name.endswith(".failed") for p in (tmp_path / "cache" / "landmarks").iterdir()
    )
    monkeypatch.undo()
    monkeypatch.setenv("HEYGEM_CACHE_DIR", str(tmp_path / "cache"))
    assert landmark_store.main([]) == 0
