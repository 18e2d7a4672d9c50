"""Wav2Lip's face-encoder features, computed once per template frame and cached with it.

The face encoder sees only the template's crop (lower half masked, plus the crop itself as
the reference), never the audio, so its seven block outputs (the decoder's skip
connections) are the same in every job on the template. Measured on the project machine
(ONNX Runtime, 2 threads, 96x96 faces): the encoder is ~3.8 ms of Wav2Lip's ~43 ms a
frame; a job on a template seen before reads them instead (1.16 MB a frame, fp32 so the
output does not change).

The file is written under a temporary name and renamed into place when complete, so a
concurrent or cancelled job never reads half of it. Templates whose features would take
more than ``MAX_CACHED_BYTES`` are not cached (a 5-minute template would need ~8.7 GB):
their jobs run the whole network per frame as before.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from heygem.errors import OutputNotWritable
from heygem.generators.runtime import graph_faces
from heygem.partial import partial_beside

log = logging.getLogger(__name__)

# (channels, side) of each face-encoder block's output, 96x96 input (heygem.generators.wav2lip).
FACE_FEATURE_SHAPES = ((16, 96), (32, 48), (64, 24), (128, 12), (256, 6), (512, 3), (512, 1))
FACE_FEATURES = sum(channels * side * side for channels, side in FACE_FEATURE_SHAPES)
BYTES_PER_FRAME = FACE_FEATURES * 4
# ~920 template frames (37 s at 25 fps); longer templates are not cached.
MAX_CACHED_BYTES = 1 << 30
ENCODE_BATCH = 32


class FaceFeatureRunner(Protocol):
    """A generator run in two halves: the audio-independent face encoder and the rest."""

    def encode(self, face: np.ndarray) -> np.ndarray: ...

    def decode(self, features: np.ndarray, mel: np.ndarray) -> np.ndarray: ...


def features_file(crops_path: Path, fingerprint: str) -> Path:
    """Beside the template's crops (same cache entry, trimmed with it)."""
    return crops_path.with_name(f"face-features-{fingerprint}.npy")


def template_face_features(
    runner: FaceFeatureRunner,
    crops_path: Path,
    fingerprint: str,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    streams: int = 1,
) -> np.ndarray | None:
    """The features of every template frame as a read-only memory map [N, FACE_FEATURES]:
    read from the cache, or computed and cached now. None when the template is too long
    to cache (``MAX_CACHED_BYTES``)."""
    path = features_file(crops_path, fingerprint)
    crops = np.load(crops_path, mmap_mode="r")
    total = len(crops)
    if path.exists():
        try:
            cached = np.load(path, mmap_mode="r")
            if cached.shape == (total, FACE_FEATURES) and cached.dtype == np.float32:
                return cached
            log.warning("face features %s have shape %s; computing them again", path, cached.shape)
        except (OSError, ValueError) as exc:  # damaged: computed again, not fatal
            log.warning("face features %s unreadable (%s); computing them again", path, exc)
    if total * BYTES_PER_FRAME > MAX_CACHED_BYTES:
        log.info(
            "template has %d frames: its face features (%.1f GB) are not cached, every "
            "frame runs the whole network",
            total,
            total * BYTES_PER_FRAME / 1e9,
        )
        return None
    _compute(runner, crops, path, on_progress, streams)
    return np.load(path, mmap_mode="r")


def _encoded_batches(
    runner: FaceFeatureRunner, crops: np.ndarray, streams: int
) -> Iterator[tuple[int, np.ndarray]]:
    """(first frame, features) of every batch, in order, ``streams`` batches running at
    once (the sessions have one intra-op thread each, like the generate stage's). At most
    ``streams`` are in flight, so a cancel waits for no more than those."""

    def encode(start: int) -> np.ndarray:
        return runner.encode(graph_faces(crops[start : start + ENCODE_BATCH]))

    pending: deque[tuple[int, Future[np.ndarray]]] = deque()
    with ThreadPoolExecutor(max(1, streams), thread_name_prefix="heygem-face-features") as pool:
        try:
            for start in range(0, len(crops), ENCODE_BATCH):
                pending.append((start, pool.submit(encode, start)))
                if len(pending) >= streams:
                    first, future = pending.popleft()
                    yield first, future.result()
            while pending:
                first, future = pending.popleft()
                yield first, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def _compute(
    runner: FaceFeatureRunner,
    crops: np.ndarray,
    path: Path,
    on_progress: Callable[[int, int], None] | None,
    streams: int,
) -> None:
    total = len(crops)
    tmp = partial_beside(
        path, what="face features", hint="choose a writable --cache-dir with enough free space"
    )
    try:
        out = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.float32, shape=(total, FACE_FEATURES)
        )
        for start, features in _encoded_batches(runner, crops, streams):
            out[start : start + len(features)] = features
            if on_progress is not None:
                on_progress(start + len(features), total)
        out.flush()
        del out
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputNotWritable(
            f"cannot write face features to {str(path)!r}: {exc}",
            hint="free some space in --cache-dir (each template frame takes 1.2 MB)",
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class CachedFaces:
    """Runs the generator on cached face features: output frame -> template frame ->
    its features row, then only the audio-dependent half of the network."""

    runner: FaceFeatureRunner
    features: np.ndarray  # [N template frames, FACE_FEATURES], memory-mapped
    template_frame: Callable[[int], int]

    def run(self, indices: np.ndarray, mel: np.ndarray) -> np.ndarray:
        rows = [self.template_frame(int(i)) for i in indices]
        return self.runner.decode(np.asarray(self.features[rows]), mel)
