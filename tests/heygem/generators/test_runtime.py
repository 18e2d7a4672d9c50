"""Crops to and from the graphs' planar float tensors: exact 8-bit round trips."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from heygem.generators.runtime import crops_from_graph, graph_faces


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(0, 5), size=st.sampled_from([1, 7, 96, 192]), seed=st.integers(0, 99))
def test_crops_become_planar_floats_and_come_back_unchanged(
    batch: int, size: int, seed: int
) -> None:
    crops = np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    face = graph_faces(crops)
    assert face.shape == (batch, 3, size, size) and face.dtype == np.float32
    assert face.flags.c_contiguous
    # (times the float32 nearest 1/255, as the graphs were exported and tested with)
    planar = crops.transpose(0, 3, 1, 2).astype(np.float32)
    np.testing.assert_array_equal(face, planar * np.float32(1.0 / 255.0))
    back = crops_from_graph(face)
    assert back.flags.c_contiguous and np.array_equal(back, crops)


def test_graph_outputs_are_rounded_to_the_nearest_level_and_clipped() -> None:
    # Half a level rounds up; out-of-range values clip to 0 and 255.
    values = np.array([-0.5, -1e-6, 0.0, 0.4999, 0.5, 1.5, 254.5, 254.4999, 255.0, 300.0])
    face = np.broadcast_to(
        (values / 255.0).astype(np.float32)[None, None, None, :], (2, 3, 1, len(values))
    )
    out = crops_from_graph(np.ascontiguousarray(face))
    assert out.shape == (2, 1, len(values), 3)
    expected = np.clip(np.floor(face[0, 0, 0] * np.float32(255) + np.float32(0.5)), 0, 255)
    assert out[1, 0, :, 2].tolist() == expected.astype(np.uint8).tolist()
    assert out[0, 0, :, 0].tolist() == [0, 0, 0, 0, 1, 2, 255, 254, 255, 255]
