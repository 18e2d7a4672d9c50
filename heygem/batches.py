"""The load side: one sample per output frame, batched in the load thread or by torch's
DataLoader worker processes.

Samples are cheap slices of two memory-mapped files (the template's model-sized crops
and the job's mel spectrogram), so DataLoader workers started with ``spawn`` receive only
paths and open the maps themselves: nothing large is pickled, nothing is copied into
shared memory but the batches themselves.

With ``num_workers`` 0 there is no process to manage and a DataLoader would only loop
over samples in the calling thread: batches are then sliced from the maps whole, in
numpy, and torch is not imported at all (its import is ~1 s of a job's start-up). With
workers (HeyGem's ``num_threads`` knob) torch's DataLoader runs them.
"""

from __future__ import annotations

import errno
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from heygem.audio.features import MEL_STEPS, mel_window_start
from heygem.config import FaultInjection
from heygem.errors import FailureCause, StageCrashed
from heygem.media.frames import template_index
from heygem.runner.exits import OomWatch, describe_exit
from heygem.runner.faults import inject

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

# (index, crop uint8 [S,S,3] BGR, mel window float32 [1,80,16]); a batch stacks them:
# (indices [B], crops [B,S,S,3], mels [B,1,80,16]) as numpy arrays or torch tensors.
Sample = tuple[int, np.ndarray, np.ndarray]
# How long to wait for a dead worker's exit code after torch reported the failure: torch
# may notice the broken queue before the process is reaped (the SIGCHLD race).
_EXIT_WAIT = 1.0
# With workers, wait for a batch in slices this long (DataLoader's public ``timeout``), so
# the load stage can notice a torn-down job instead of sitting in torch's 5 s queue poll.
LOADER_POLL_SECONDS = 0.25


class SampleSource(Protocol):
    """A generator's per-frame samples: single items for DataLoader workers (a map-style
    dataset, picklable), whole batches for the in-thread path."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...

    def batch(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


class SharedMemoryFull(RuntimeError):
    """Raised in a DataLoader worker when a batch does not fit in /dev/shm.

    torch re-raises a worker's exception in the main process as the same class built
    from one message argument, so this type survives the trip and carries the cause.
    """


@dataclass(frozen=True)
class FrameTiming:
    n_frames: int
    out_fps: float
    template_fps: float
    n_template: int

    def template_frame(self, index: int) -> int:
        return template_index(index, self.out_fps, self.template_fps, self.n_template)


class FrameSamples:
    """Item i: (i, crop uint8 [S,S,3] BGR, mel window float32 [1,80,16]); a map-style
    dataset for torch's DataLoader, and whole batches for the in-thread path."""

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

    def _maps(self) -> tuple[np.ndarray, np.ndarray]:
        if self._crops is None or self._mel is None:
            self._crops = np.load(self.crops_path, mmap_mode="r")
            self._mel = np.load(self.mel_path, mmap_mode="r")
        return self._crops, self._mel

    def __getitem__(self, index: int) -> Sample:
        """One sample, in a DataLoader worker process."""
        crops, mels = self._maps()
        inject(self.fault, "load", index, in_worker=True)
        crop = np.array(crops[self.timing.template_frame(index)])
        start = mel_window_start(index, self.timing.out_fps)
        mel = np.array(mels[:, start : start + MEL_STEPS], dtype=np.float32)[None]
        return index, crop, mel

    def batch(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Samples ``start..stop-1`` stacked, sliced from the maps in one go."""
        crops, mels = self._maps()
        for index in range(start, stop):
            inject(self.fault, "load", index)
        indices = np.arange(start, stop, dtype=np.int64)
        frames = [self.timing.template_frame(int(i)) for i in indices]
        windows = np.empty((len(indices), 1, mels.shape[0], MEL_STEPS), dtype=np.float32)
        for row in range(len(indices)):
            begin = mel_window_start(start + row, self.timing.out_fps)
            windows[row, 0] = mels[:, begin : begin + MEL_STEPS]
        return indices, np.asarray(crops[frames]), windows


class InThreadBatches:
    """Batches in the calling thread (no worker processes), the last one partial."""

    def __init__(self, samples: SampleSource, batch_size: int) -> None:
        self.samples, self.batch_size = samples, batch_size

    def __len__(self) -> int:
        return -(-len(self.samples) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        total = len(self.samples)
        for start in range(0, total, self.batch_size):
            yield self.samples.batch(start, min(start + self.batch_size, total))


def collate_in_shared_memory(batch: list[Sample]) -> Any:
    """torch's collate; a full /dev/shm becomes SharedMemoryFull where it happens.

    Recent torch reserves a worker's batch pages up front and fails with ENOSPC; this is
    the one place that reads torch's error, converting it into a type with a cause.
    """
    from torch.utils.data import default_collate

    try:
        return default_collate(batch)
    except (RuntimeError, OSError) as exc:
        if getattr(exc, "errno", None) == errno.ENOSPC or "No space left on device" in str(exc):
            raise SharedMemoryFull(f"no space left on /dev/shm for a batch: {exc}") from None
        raise


def make_loader(
    samples: SampleSource, batch_size: int, num_workers: int, start_method: str
) -> DataLoader[Any] | InThreadBatches:
    """torch's DataLoader with ``num_workers`` spawned workers; without workers, batches
    sliced in the calling thread (what a worker-less DataLoader would do, sample by
    sample, plus torch's import)."""
    if num_workers > 0:
        from torch.utils.data import DataLoader, Dataset

        loader: DataLoader[Any] = DataLoader(
            cast("Dataset[Any]", samples),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate_in_shared_memory,
            pin_memory=False,
            drop_last=False,
            multiprocessing_context=start_method,
            prefetch_factor=2,
            persistent_workers=False,
            timeout=LOADER_POLL_SECONDS,
        )
        return loader
    return InThreadBatches(samples, batch_size)


def is_poll_timeout(exc: BaseException) -> bool:
    """torch's "no batch within ``timeout``": the iterator is intact, ask again."""
    return isinstance(exc, RuntimeError) and str(exc).startswith("DataLoader timed out")


def poll_batches(batches: Iterator[Any], stop: Callable[[], bool]) -> Iterator[Any]:
    """The batches of a loader iterator whose workers are polled in short slices: a poll
    that found no batch yet is asked again, unless ``stop()`` says the caller is leaving
    (then torch's timeout error propagates)."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except RuntimeError as exc:
            if is_poll_timeout(exc) and not stop():
                continue
            raise
        yield batch


def loader_failure(exc: BaseException, workers: Sequence[Any], oom: OomWatch) -> StageCrashed:
    """The typed error for an exception out of a DataLoader, decided by what is known.

    A worker that died names the cause by its exit (the first to die; the ones torch
    terminated afterwards are not the cause); a SharedMemoryFull names /dev/shm; with
    every worker alive the dataset code itself raised inside a worker; without workers
    it raised in the load stage.
    """
    if isinstance(exc, SharedMemoryFull):
        return _crash(
            f"stage 'load': {exc}",
            FailureCause.SHM_EXHAUSTED,
            "give the container more shared memory (docker run --shm-size=2g) or use "
            "--num-workers 0",
            exc,
        )
    died = _dead_workers(workers) if workers else []
    if died:
        pid, code = died[0]
        exit_ = describe_exit(code, oom_killed=oom.killed_since())
        message = f"stage 'load': worker process {pid} died: {exit_.what}"
        return _crash(message, exit_.cause, exit_.fix, exc)
    if workers:
        return _crash(
            f"stage 'load': the data loading code raised in a worker: {type(exc).__name__}: {exc}",
            FailureCause.WORKER_RAISED,
            "the worker's traceback above names the failing code; the worker itself is fine",
            exc,
        )
    return _crash(
        f"stage 'load' failed: {type(exc).__name__}: {exc}", FailureCause.STAGE_RAISED, None, exc
    )


def _dead_workers(workers: Sequence[Any]) -> list[tuple[int, int]]:
    deadline = time.monotonic() + _EXIT_WAIT
    while True:
        died = [(w.pid, w.exitcode) for w in workers if w.exitcode not in (None, 0)]
        if died or time.monotonic() >= deadline:
            # torch terminates the other workers after one died: SIGTERM is never the cause.
            return sorted(died, key=lambda item: item[1] == -signal.SIGTERM)
        time.sleep(0.02)


def _crash(message: str, cause: FailureCause, hint: str | None, exc: BaseException) -> StageCrashed:
    error = StageCrashed(message, stage="load", hint=hint, cause=cause)
    error.__cause__ = exc
    return error
