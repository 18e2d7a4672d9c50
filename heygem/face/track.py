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
        boxes[start:stop] = _smooth_columns(boxes[start:stop], SMOOTH_WINDOW)
    boxes[~valid] = np.nan
    return boxes.astype(np.float32), valid


def _drop_size_outliers(boxes: np.ndarray, valid: np.ndarray) -> None:
    idx = np.flatnonzero(valid)
    if idx.size < 3:
        return
    sizes = boxes[idx, 2]
    # The median of each size's neighbours (7 either side, fewer at the ends): whole
    # windows at once, the shortened ones at the ends one by one.
    medians = np.empty_like(sizes)
    if sizes.size >= 15:
        medians[7:-7] = np.median(np.lib.stride_tricks.sliding_window_view(sizes, 15), axis=1)
    for k in [*range(min(7, sizes.size)), *range(max(7, sizes.size - 7), sizes.size)]:
        medians[k] = np.median(sizes[max(0, k - 7) : k + 8])
    outliers = np.abs(sizes - medians) > 0.35 * medians
    valid[idx[outliers]] = False
    boxes[idx[outliers]] = np.nan


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


STABLE_WINDOW = 7  # nose and eyes: smoothed harder than the moving mouth and jaw
MOVING_WINDOW = 3


def smooth_landmarks(raw: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``raw``: (N, 68, 2) with NaN where no face was measured; ``valid``: the frames the
    box track kept. Fills those frames' gaps by interpolation and smooths each run over
    time (nose and eyes harder than the mouth, whose motion is the signal)."""
    from heygem.face.landmarks import STABLE

    points = raw.reshape(len(raw), -1).astype(np.float64)
    measured = ~np.isnan(points).any(axis=1) & valid
    filled = points.copy()
    idx = np.flatnonzero(measured)
    for before, after in itertools.pairwise(idx):
        gap = after - before - 1
        if gap > 0 and valid[before + 1 : after].all():
            weights = np.linspace(0, 1, gap + 2)[1:-1, None]
            filled[before + 1 : after] = points[before] * (1 - weights) + points[after] * weights
    usable = valid & ~np.isnan(filled).any(axis=1)
    stable_cols = np.zeros(68 * 2, dtype=bool)
    stable_cols[[2 * i + c for i in STABLE for c in (0, 1)]] = True
    for start, stop in _runs(usable):
        run = filled[start:stop]
        filled[start:stop, stable_cols] = _smooth_columns(run[:, stable_cols], STABLE_WINDOW)
        filled[start:stop, ~stable_cols] = _smooth_columns(run[:, ~stable_cols], MOVING_WINDOW)
    filled[~usable] = np.nan
    return filled.reshape(raw.shape).astype(np.float32)


def _smooth_columns(values: np.ndarray, window: int) -> np.ndarray:
    if len(values) < 3:
        return values
    window = min(window, len(values) if len(values) % 2 else len(values) - 1)
    half = window // 2
    padded = np.pad(values, ((half, half), (0, 0)), mode="edge")
    kernel = np.ones(window) / window
    return np.stack(
        [np.convolve(padded[:, c], kernel, mode="valid") for c in range(values.shape[1])], axis=1
    )
