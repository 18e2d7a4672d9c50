"""Batches sliced in the load thread are exactly what torch's DataLoader assembles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heygem.audio.features import MEL_STEPS
from heygem.batches import FrameSamples, FrameTiming, make_loader


def _samples(tmp: Path, n_template: int, n_frames: int, out_fps: float, seed: int) -> FrameSamples:
    rng = np.random.default_rng(seed)
    crops, mel = tmp / f"crops{seed}.npy", tmp / f"mel{seed}.npy"
    np.save(crops, rng.integers(0, 256, (n_template, 8, 8, 3), dtype=np.uint8))
    windows = int(n_frames * 80 / out_fps) + MEL_STEPS + 1
    np.save(mel, rng.uniform(-4, 4, (80, windows)).astype(np.float32))
    return FrameSamples(crops, mel, FrameTiming(n_frames, out_fps, 25.0, n_template))


@settings(max_examples=15, deadline=None)
@given(
    n_template=st.integers(1, 12),
    n_frames=st.integers(1, 40),
    out_fps=st.sampled_from([25.0, 30.0, 29.97, 12.5]),
    batch=st.integers(1, 9),
    seed=st.integers(0, 1000),
)
def test_in_thread_batches_equal_the_dataloaders(
    tmp_path_factory: pytest.TempPathFactory,
    n_template: int,
    n_frames: int,
    out_fps: float,
    batch: int,
    seed: int,
) -> None:
    from torch.utils.data import DataLoader

    samples = _samples(tmp_path_factory.mktemp("b"), n_template, n_frames, out_fps, seed)
    ours = list(make_loader(samples, batch, 0, "spawn"))
    theirs = list(DataLoader(samples, batch_size=batch, shuffle=False))  # type: ignore[arg-type]
    assert len(ours) == len(theirs) == -(-n_frames // batch)  # the last partial batch kept
    for mine, torch_batch in zip(ours, theirs, strict=True):
        for a, b in zip(mine, torch_batch, strict=True):
            np.testing.assert_array_equal(np.asarray(a), b.numpy())
