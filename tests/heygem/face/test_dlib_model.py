"""Reading dlib's serialised shape predictors into arrays.

The number stream is checked against an encoder written here from dlib's format
(``dlib/serialize.h``: a header byte with the payload's length and the sign, then the
magnitude's bytes, low first), on generated streams cut into many chunks; the model
layout on the installed 68-point model and on models dlib trains in the test.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from heygem.face.dlib_model import (
    UnreadableLandmarkModel,
    read_dlib_shape_predictor,
    read_numbers,
)
from heygem.face.landmarks import model_path
from tests.heygem.face.dlib_models import train_predictor


def pack(value: int) -> bytes:
    """dlib's ``pack_int``: at least one payload byte (zero is 0x01 0x00)."""
    magnitude, payload = abs(value), bytearray()
    while True:
        payload.append(magnitude & 0xFF)
        magnitude >>= 8
        if not magnitude:
            break
    return bytes([len(payload) | (0x80 if value < 0 else 0)]) + bytes(payload)


numbers = st.one_of(
    st.integers(-300, 300),
    st.integers(-(2**24), 2**24),
    st.integers(-(2**63) + 1, 2**63 - 1),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(numbers, min_size=1, max_size=4000))
def test_any_stream_of_numbers_reads_back_exactly(
    tmp_path_factory: pytest.TempPathFactory, values: list[int]
) -> None:
    # Small files are walked in 64-byte chunks: most chunk starts fall mid-number.
    path = tmp_path_factory.mktemp("numbers") / "stream.dat"
    path.write_bytes(b"".join(pack(v) for v in values))
    read = read_numbers(path)
    assert read.tolist() == values
    assert read.dtype == (np.int32 if all(abs(v) < 2**24 for v in values) else np.int64)


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.integers(-(2**24), 2**24), min_size=2, max_size=500), cut=st.data())
def test_a_stream_cut_inside_a_number_is_an_error(
    tmp_path_factory: pytest.TempPathFactory, values: list[int], cut: st.DataObject
) -> None:
    encoded = b"".join(pack(v) for v in values)
    ends = np.cumsum([len(pack(v)) for v in values])
    inside = [i for i in range(1, len(encoded)) if i not in set(ends.tolist())]
    if not inside:
        return
    path = tmp_path_factory.mktemp("cut") / "cut.dat"
    path.write_bytes(encoded[: cut.draw(st.sampled_from(inside))])
    with pytest.raises(UnreadableLandmarkModel, match="ends inside a number"):
        read_numbers(path)


@pytest.mark.parametrize("cut", [64, 65])
def test_a_cut_just_past_a_chunk_boundary_is_named_as_a_cut(tmp_path: Path, cut: int) -> None:
    # Found by the test above: the last 64-byte chunk begins inside the number cut off.
    values = [5, 0, -3, 256, 256, 256, 256, 5, 5, 0, -3, -3, 5, 256, 256, 256, -3, 0, 5, -3,
              -3, 256, 256, 5, 70000, -3, 256, 0, 256, 5, 0, 70000]  # fmt: skip
    path = tmp_path / "cut.dat"
    path.write_bytes(b"".join(pack(v) for v in values)[:cut])
    with pytest.raises(UnreadableLandmarkModel, match="ends inside a number"):
        read_numbers(path)


def test_the_installed_68_point_model_has_its_known_layout() -> None:
    arrays = read_dlib_shape_predictor(model_path())
    assert arrays.initial.shape == (68, 2)
    assert arrays.split_pixels.shape == (15, 500, 15, 2)
    assert arrays.thresholds.shape == (15, 500, 15)
    assert arrays.leaves.shape == (15, 500, 16, 136)
    assert arrays.anchors.shape == (15, 500) and arrays.deltas.shape == (15, 500, 2)
    # The mean shape lies in the box's unit square; features index the pool and points.
    assert (arrays.initial > -0.1).all() and (arrays.initial < 1.1).all()
    assert arrays.split_pixels.min() >= 0 and arrays.split_pixels.max() < 500
    assert arrays.anchors.min() >= 0 and arrays.anchors.max() < 68
    assert np.isfinite(arrays.leaves).all() and np.abs(arrays.leaves).max() < 1.0


@pytest.mark.parametrize(
    ("points", "depth", "cascades", "trees", "features"),
    [(5, 3, 4, 20, 60), (9, 1, 2, 7, 30), (3, 4, 6, 10, 100)],
)
def test_a_model_dlib_trained_reads_with_its_layout(
    tmp_path: Path, points: int, depth: int, cascades: int, trees: int, features: int
) -> None:
    path = tmp_path / "trained.dat"
    train_predictor(
        path, points=points, depth=depth, cascades=cascades, trees=trees, features=features
    )
    arrays = read_dlib_shape_predictor(path)
    splits = 2**depth - 1
    assert arrays.initial.shape == (points, 2)
    assert arrays.split_pixels.shape == (cascades, trees, splits, 2)
    assert arrays.leaves.shape == (cascades, trees, splits + 1, 2 * points)
    assert arrays.deltas.shape == (cascades, features, 2)


@pytest.mark.parametrize(
    "damage",
    ["empty", "short", "png", "truncated", "tail", "random"],
)
def test_a_damaged_model_file_is_a_clear_error(tmp_path: Path, damage: str) -> None:
    good = tmp_path / "good.dat"
    train_predictor(good)
    data = good.read_bytes()
    rng = np.random.default_rng(3)
    damaged = {
        "empty": b"",
        "short": data[:10],
        "png": b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 5000, dtype=np.uint8)),
        "truncated": data[: len(data) // 2],
        "tail": data + pack(7),
        "random": bytes(rng.integers(0, 256, 20000, dtype=np.uint8)),
    }[damage]
    path = tmp_path / "damaged.dat"
    path.write_bytes(damaged)
    with pytest.raises(UnreadableLandmarkModel) as caught:
        read_dlib_shape_predictor(path)
    assert str(path) in str(caught.value)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(min_size=0, max_size=3000))
def test_any_bytes_read_as_a_model_or_fail_clearly(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    path = tmp_path_factory.mktemp("bytes") / "any.dat"
    path.write_bytes(data)
    with contextlib.suppress(UnreadableLandmarkModel):  # any other exception fails
        read_dlib_shape_predictor(path)
