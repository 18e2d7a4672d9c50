"""A DataLoader load shaped like a HeyGem 512x512 batch, through the pipeline's own loader.

The probe generation runs the rewrite generator, whose crops are only 192x192, so its
DataLoader batches never come near Docker's 64 MB ``/dev/shm``. HeyGem's do: each sample
is a 512x512 face crop twice (masked + reference, the 6-channel generator input, 1.5 MiB
as uint8) plus a mel window, and every batch a worker prepares travels through
``/dev/shm``. This step feeds such samples through ``heygem.batches.FrameSamples`` and
``make_loader`` (the pipeline's dataset and DataLoader settings: spawn workers,
prefetch 2) while the consumer is slower than the loaders, as a generator on a GPU-less
box is, so the prefetched batches pile up in shared memory the way they do in HeyGem.

A full ``/dev/shm`` fails in one of two ways, by a race: the worker's allocation raises
and the loader re-raises it (crashed), or the worker's queue feeder thread raises, the
batch is lost and the loader waits for it forever (HeyGem's stall). The consumer therefore
gives up after ``stall_seconds`` without a batch and reports "stalled".

Runs inside a cell's virtualenv (needs torch, numpy, heygem); prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from matrix.results import Outcome, StepResult

log = logging.getLogger("matrix.load_probe")

MIB = 1 << 20
_FPS = 25.0
_MEL_BINS, _MEL_STEPS = 80, 16
_PROBE_OUTCOMES = {
    "ok": Outcome.OK,
    "stalled": Outcome.STALLED,
    "crashed": Outcome.CRASHED,
    "bad-input": Outcome.ERROR,
    "error": Outcome.ERROR,
}


@dataclass(frozen=True)
class LoadConfig:
    workers: int = 4
    batch_size: int = 16  # the pipeline's default batch
    face_size: int = 512  # HeyGem's face crop
    channels: int = 6  # masked crop + reference
    batches: int = 12  # more than workers x prefetch, so the prefetch queue fills
    consumer_seconds: float = 0.1  # per batch: the generator is slower than the loaders
    # No batch for this long: stalled. Healthy loads with 4 spawn workers on 2 cores take
    # ~10-20 s in all, start-up included; the cell's outer timeout stays the backstop.
    stall_seconds: float = 60.0
    start_method: str = "spawn"

    @property
    def sample_bytes(self) -> int:
        return self.face_size * self.face_size * self.channels + _MEL_BINS * _MEL_STEPS * 4

    @property
    def in_flight_bytes(self) -> int:
        """What the prefetched batches hold in /dev/shm at once (0 without workers)."""
        if self.workers == 0:
            return 0
        return (self.workers * 2 + 1) * self.batch_size * self.sample_bytes


def _write_inputs(directory: Path, config: LoadConfig) -> tuple[Path, Path, int]:
    """A memory-mapped crop file (as the template cache stores it) and a mel spectrogram."""
    n_template = 25  # one second of template frames, ping-ponged like a real template
    size, channels = config.face_size, config.channels
    crops_path = directory / "crops.npy"
    crops = np.lib.format.open_memmap(
        crops_path, mode="w+", dtype=np.uint8, shape=(n_template, size, size, channels)
    )
    pattern = (np.arange(size * channels, dtype=np.uint32) % 251).astype(np.uint8)
    for index in range(n_template):
        crops[index] = (pattern.reshape(size, channels) + index)[None, :, :]
    crops.flush()
    del crops
    frames = config.batches * config.batch_size
    mel = np.zeros((_MEL_BINS, int(frames * 80 / _FPS) + _MEL_STEPS + 1), dtype=np.float32)
    mel_path = directory / "mel.npy"
    np.save(mel_path, mel)
    return crops_path, mel_path, n_template


class LoadStalled(Exception):
    """No batch within the stall deadline: the loader waits for one that never comes."""


@contextlib.contextmanager
def _stall_alarm(seconds: float) -> Iterator[Callable[[], None]]:
    """Raise LoadStalled in the main thread (where the consumer waits on the loader) when
    ``seconds`` pass without the yielded ``rearm()`` being called; 0 disables it."""

    def expired(signum: int, frame: object) -> None:
        raise LoadStalled(
            f"no batch for {seconds:g} s: the DataLoader is waiting for a batch that does not come"
        )

    def rearm() -> None:
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.0))

    previous = signal.signal(signal.SIGALRM, expired)
    rearm()
    try:
        yield rearm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_load(config: LoadConfig) -> StepResult:
    """Load ``batches`` batches; a failed load is the finding, never an exception."""
    from heygem.batches import FrameSamples, FrameTiming, make_loader, poll_batches

    started = time.perf_counter()
    detail: dict[str, object] = {
        "workers": config.workers,
        "batch_size": config.batch_size,
        "face_size": config.face_size,
        "channels": config.channels,
        "batch_mib": round(config.batch_size * config.sample_bytes / MIB, 1),
        "in_flight_mib": round(config.in_flight_bytes / MIB, 1),
    }
    loaded = 0
    batches: object = None  # the loader's iterator: its workers' exit codes tell why
    # Inputs on disk (/tmp), never in /dev/shm: only the batches may use shared memory.
    with tempfile.TemporaryDirectory(prefix="heygem-matrix-load-") as tmp:
        try:
            crops_path, mel_path, n_template = _write_inputs(Path(tmp), config)
            timing = FrameTiming(
                n_frames=config.batches * config.batch_size,
                out_fps=_FPS,
                template_fps=_FPS,
                n_template=n_template,
            )
            loader = make_loader(
                FrameSamples(crops_path, mel_path, timing),
                config.batch_size,
                config.workers,
                config.start_method,
            )
            with _stall_alarm(config.stall_seconds) as rearm:
                batches = iter(loader)
                for _, crops, _mel in poll_batches(batches, lambda: False):
                    int(crops[:, 0, 0, 0].sum())  # touch the shared pages
                    loaded += 1
                    time.sleep(config.consumer_seconds)
                    rearm()
        except Exception as exc:  # noqa: BLE001 - the failure is what this step measures
            workers = list(getattr(batches, "_workers", None) or [])
            outcome, cause = (
                (Outcome.STALLED, str(exc))
                if isinstance(exc, LoadStalled)
                else classify_load_error(exc, workers)
            )
            exits = _worker_exits(workers)
            detail["batches"] = loaded
            detail["worker_exits"] = [code for _, code in exits]
            evidence = _evidence(exc) + tuple(
                f"worker {pid}: {_describe(code)}" for pid, code in exits
            )
            return StepResult(
                outcome, cause, evidence, round(time.perf_counter() - started, 3), detail
            )
    seconds = time.perf_counter() - started
    detail["batches"] = loaded
    detail["mib_per_s"] = round(loaded * config.batch_size * config.sample_bytes / MIB / seconds, 1)
    return StepResult(Outcome.OK, None, (), round(seconds, 3), detail)


def _worker_exits(workers: Sequence[Any]) -> list[tuple[int, int]]:
    """(pid, exit code) of the workers that died, the first to die first. torch only says
    "exited unexpectedly" when the SIGCHLD race goes that way; the exit code says why.
    Workers torch terminated itself afterwards (SIGTERM) are not the cause."""
    died = [(w.pid, w.exitcode) for w in workers if w.exitcode not in (None, 0)]
    return sorted(died, key=lambda item: item[1] == -signal.SIGTERM)


def _describe(exitcode: int) -> str:
    from heygem.runner.exits import describe_exit

    return describe_exit(exitcode).what


def classify_load_error(exc: BaseException, workers: Sequence[Any]) -> tuple[Outcome, str]:
    """Classify as the pipeline does: ``heygem.batches.loader_failure`` types the error by
    the workers' exits (SIGBUS: older torch touching a full /dev/shm) or by the allocation
    failure a worker raised (ENOSPC: recent torch reserves the pages first); the probe's
    cause lookup names it."""
    from diagnostics.probe import classify_error
    from heygem.batches import loader_failure
    from heygem.runner.exits import OomWatch

    outcome, _, cause = classify_error(loader_failure(exc, workers, OomWatch()))
    return _PROBE_OUTCOMES.get(str(outcome), Outcome.ERROR), cause


def _evidence(exc: BaseException) -> tuple[str, ...]:
    """The first line (what torch says happened) and the last lines (the real error)."""
    # Indented lines are traceback frames and carets: the messages are flush left.
    lines = [
        line.rstrip()
        for line in f"{type(exc).__name__}: {exc}".splitlines()
        if line.strip() and not line[0].isspace()
    ]
    if len(lines) <= 4:
        return tuple(lines)
    return (lines[0], "...", *lines[-3:])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m matrix.load_probe", description=__doc__.split("\n\n")[0]
    )
    defaults = LoadConfig()
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--face-size", type=int, default=defaults.face_size)
    parser.add_argument("--batches", type=int, default=defaults.batches)
    parser.add_argument("--consumer-seconds", type=float, default=defaults.consumer_seconds)
    parser.add_argument("--stall-seconds", type=float, default=defaults.stall_seconds)
    parser.add_argument("--start-method", default=defaults.start_method)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    config = LoadConfig(
        workers=args.workers,
        batch_size=args.batch_size,
        face_size=args.face_size,
        batches=args.batches,
        consumer_seconds=args.consumer_seconds,
        start_method=args.start_method,
        stall_seconds=args.stall_seconds,
    )
    result = run_load(config)
    print(json.dumps(result.to_dict()))  # the parent reads this line: CLI output
    return 0 if result.outcome is Outcome.OK else 1


if __name__ == "__main__":
    sys.exit(main())
