"""The DataLoader side: one sample per output frame, batched by torch's DataLoader.

Samples are cheap slices of two memory-mapped files (the template's model-sized crops
and the job's mel spectrogram), so DataLoader workers started with ``spawn`` receive only
paths and open the maps themselves: nothing large is pickled, nothing is copied into
shared memory but the batches themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from heygem.audio.features import MEL_STEPS, mel_window_start
from heygem.config import FaultInjection
from heygem.media.frames import template_index
from heygem.runner.faults import inject


@dataclass(frozen=True)
class FrameTiming:
    n_frames: int
    out_fps: float
    template_fps: float
    n_template: int

    def template_frame(self, index: int) -> int:
        return template_index(index, self.out_fps, self.template_fps, self.n_template)


class FrameSamples(Dataset[tuple[int, torch.Tensor, torch.Tensor]]):
    """Item i: (i, crop uint8 [S,S,3] BGR, mel window float32 [1,80,16])."""

    def __init__(
        self,
        crops_path: Path,
        mel_path: Path,
        timing: FrameTiming,
        fault: FaultInjection | None = None,
    ) -> None:
        self.crops_path, self.mel_path, self.timing = crops_path, mel_path, timing
        self.fault = fault if fault is not None and fault.stage == "load" else None
        self._crops: np.ndarray | None = None
        self._mel: np.ndarray | None = None

    def __len__(self) -> int:
        return self.timing.n_frames

    def __getstate__(self) -> dict[str, object]:
        # Workers reopen the memory maps; open maps are not pickled.
        return {**self.__dict__, "_crops": None, "_mel": None}

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, torch.Tensor]:
        if self._crops is None or self._mel is None:
            self._crops = np.load(self.crops_path, mmap_mode="r")
            self._mel = np.load(self.mel_path, mmap_mode="r")
        in_worker = torch.utils.data.get_worker_info() is not None
        inject(self.fault, "load", index, in_worker=in_worker)
        crop = np.array(self._crops[self.timing.template_frame(index)])
        start = mel_window_start(index, self.timing.out_fps)
        mel = np.array(self._mel[:, start : start + MEL_STEPS], dtype=np.float32)[None]
        return index, torch.from_numpy(crop), torch.from_numpy(mel)


def make_loader(
    samples: FrameSamples, batch_size: int, num_workers: int, start_method: str
) -> DataLoader[tuple[int, torch.Tensor, torch.Tensor]]:
    extra: dict[str, object] = {}
    if num_workers > 0:
        extra = {
            "multiprocessing_context": start_method,
            "prefetch_factor": 2,
            "persistent_workers": False,
        }
    return DataLoader(
        samples,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=False,
        drop_last=False,
        **extra,
    )  # type: ignore[arg-type]
