"""Turn per-frame detections into a smooth, gap-filled face track.

Haar boxes jitter by a few pixels frame to frame and occasionally miss or misfire; a
pasted mouth that jitters is worse than none. So: drop size outliers, fill short gaps by
interpolation, smooth each continuous run, and leave long gaps empty (those frames pass
through unchanged).
"""

from __future__ import annotations

import itertools

import numpy as np

MAX_FILLED_GAP = 4  # frames; a longer miss means the face really left
SMOOTH_WINDOW = 9


def smooth_track(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``raw`` is (N, 4) x, y, w, h with NaN rows for misses -> (boxes, valid)."""
    boxes = raw.astype(np.float64).copy()
    valid = np.asarray(~np.isnan(boxes).any(axis=1), dtype=bool)
    _drop_size_outliers(boxes, valid)
    _fill_short_gaps(boxes, valid)
    for start, stop in _runs(valid):
        boxes[start:stop] = _moving_average(boxes[start:stop], SMOOTH_WINDOW)
    boxes[~valid] = np.nan
    return boxes.astype(np.float32), valid


def _drop_size_outliers(boxes: np.ndarray, valid: np.ndarray) -> None:
    idx = np.flatnonzero(valid)
    if idx.size < 3:
        return
    sizes = boxes[idx, 2]
    for k, i in enumerate(idx):
        neighbours = sizes[max(0, k - 7) : k + 8]
        median = float(np.median(neighbours))
        if abs(sizes[k] - median) > 0.35 * median:
            valid[i] = False
            boxes[i] = np.nan


def _fill_short_gaps(boxes: np.ndarray, valid: np.ndarray) -> None:
    idx = np.flatnonzero(valid)
    for before, after in itertools.pairwise(idx):
        gap = after - before - 1
        if 0 < gap <= MAX_FILLED_GAP:
            weights = np.linspace(0, 1, gap + 2)[1:-1, None]
            boxes[before + 1 : after] = boxes[before] * (1 - weights) + boxes[after] * weights
            valid[before + 1 : after] = True


def _runs(valid: np.ndarray) -> list[tuple[int, int]]:
    padded = np.concatenate([[False], valid, [False]]).astype(np.int8)
    changes = np.flatnonzero(np.diff(padded))
    return list(zip(changes[::2].tolist(), changes[1::2].tolist(), strict=True))


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < 3:
        return values
    window = min(window, len(values) if len(values) % 2 else len(values) - 1)
    half = window // 2
    padded = np.pad(values, ((half, half), (0, 0)), mode="edge")
    kernel = np.ones(window) / window
    return np.stack([np.convolve(padded[:, c], kernel, mode="valid") for c in range(4)], axis=1)
