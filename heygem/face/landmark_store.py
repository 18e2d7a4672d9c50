"""The landmark model's arrays, converted once per user and mapped by every later job.

Where: ``<user cache>/landmarks/<model stem>-<digest>/`` (``leaves.npy``, memory-mapped,
and ``rest.npz``), the digest naming the installed model file (path, size, mtime) and
the converter's version, so a reinstalled model is converted again. The user cache, not
a job's ``--cache-dir``: the arrays come from the installed package, so jobs with caches
of their own share them.

When: the first job that needs them starts the conversion in a child process (~1.5 s of
one core, at low priority) and runs on dlib's own reader meanwhile (the same
landmarks), so no job waits for it; the parent waits for the child only when it exits,
so none outlives its job. A conversion that fails leaves a ``.failed`` note naming why:
later jobs use dlib's reader without trying again (delete the note to retry).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from heygem.errors import HeygemError
from heygem.face.dlib_model import ShapeModelArrays, read_dlib_shape_predictor
from heygem.face.shape_predictor import ShapePredictor, kernel_available, require_kernel

log = logging.getLogger(__name__)

CONVERTER_VERSION = 1  # bump when the stored arrays' layout or meaning changes
CONVERSION_WAIT_S = 120.0  # at exit, at most (a conversion takes ~1.5 s)


def entry_for(model: Path, store: Path) -> Path:
    """Where the arrays of ``model`` (this file, as installed) live in ``store``."""
    stat = model.stat()
    identity = f"{model.resolve()}:{stat.st_size}:{stat.st_mtime_ns}:{CONVERTER_VERSION}"
    digest = hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()
    return store / f"{model.stem}-{digest}"


def failure_note(entry: Path) -> Path:
    return entry.with_name(entry.name + ".failed")


def load(model: Path, store: Path) -> ShapePredictor | None:
    """The predictor on the stored arrays; None when they are not stored (a damaged
    entry is removed, to be converted again)."""
    entry = entry_for(model, store)
    if not (entry / "leaves.npy").exists():
        return None
    try:
        leaves = np.load(entry / "leaves.npy", mmap_mode="r")
        with np.load(entry / "rest.npz") as rest:
            arrays = ShapeModelArrays(leaves=leaves, **{k: rest[k] for k in rest.files})
        return ShapePredictor(arrays)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("stored landmark model %s unreadable (%s): converting it again", entry, exc)
        shutil.rmtree(entry, ignore_errors=True)
        return None


def convert(model: Path, store: Path) -> Path:
    """Read ``model`` and store its arrays: complete or not at all (written aside, then
    renamed into place, so a concurrent job sees either nothing or all of it)."""
    entry = entry_for(model, store)
    if (entry / "leaves.npy").exists():
        return entry
    require_kernel()  # (before the try: no failure note, a reinstall with a compiler fixes it)
    try:
        arrays = read_dlib_shape_predictor(model)
        ShapePredictor(arrays)  # a model it cannot run is a failure now, not in every job
    except Exception as exc:
        store.mkdir(parents=True, exist_ok=True)
        failure_note(entry).write_text(f"{type(exc).__name__}: {exc}\n")
        raise
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=store))
    try:
        np.save(staging / "leaves.npy", arrays.leaves)
        rest = {k: v for k, v in vars(arrays).items() if k != "leaves"}
        np.savez(staging / "rest.npz", **rest)
        try:
            staging.rename(entry)
        except OSError:  # another process stored it first
            if not (entry / "leaves.npy").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return entry


class _Conversion:
    """A converting child and the thread that reaps it the moment it ends."""

    def __init__(self, model: Path, store: Path) -> None:
        command = [sys.executable, "-m", "heygem.face.landmark_store", str(model), str(store)]
        self.entry = entry_for(model, store)
        self.child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.reaper = threading.Thread(
            target=self._reap, name="heygem-landmark-conversion", daemon=True
        )
        self.reaper.start()

    def _reap(self) -> None:
        _, err = self.child.communicate()
        if self.child.returncode == 0:
            log.info("landmark model converted into %s", self.entry)
            return
        lines = err.decode(errors="replace").strip().splitlines()
        reason = lines[-1] if lines else f"exit code {self.child.returncode}"
        log.warning("landmark model conversion into %s failed: %s", self.entry, reason)

    def finish(self, timeout: float) -> None:
        self.reaper.join(timeout)
        if self.reaper.is_alive():
            self.child.kill()
            self.reaper.join()
            log.warning("landmark model conversion stopped after %.0f s", timeout)


_running: dict[Path, _Conversion] = {}
_running_lock = threading.Lock()


def start_conversion(model: Path, store: Path) -> None:
    """Convert ``model`` in a child process unless it is stored, being converted by this
    process, or failed before (its note), or the kernel that would run the arrays is not
    built. Never raises: dlib's reader remains."""
    if not kernel_available():
        return
    entry = entry_for(model, store)
    if (entry / "leaves.npy").exists() or failure_note(entry).exists():
        return
    with _running_lock:
        running = _running.get(entry)
        if running is not None and running.reaper.is_alive():
            return
        try:
            store.mkdir(parents=True, exist_ok=True)
            if not _running:
                atexit.register(wait_for_conversions)
            _running[entry] = _Conversion(model, store)
        except OSError as exc:  # e.g. a read-only home: every job keeps dlib's reader
            log.info("landmark model not converted (%s): dlib's reader is used", exc)


def wait_for_conversions(timeout: float = CONVERSION_WAIT_S) -> None:
    """Let running conversions finish (a child still running after ``timeout`` is
    killed): none outlives its parent."""
    with _running_lock:
        conversions = list(_running.values())
        _running.clear()
    for conversion in conversions:
        conversion.finish(timeout)


def main(argv: list[str]) -> int:
    """``python -m heygem.face.landmark_store MODEL STORE``: the child's work. Without
    arguments: the installed model into the user's store (an image build step, so that
    no container's first job converts it)."""
    if len(argv) not in (0, 2):
        sys.stderr.write("usage: python -m heygem.face.landmark_store [MODEL STORE]\n")
        return 2
    if not argv:
        from heygem.face.landmarks import default_store, model_path

        try:
            sys.stdout.write(f"{convert(model_path(), default_store())}\n")
        except HeygemError as exc:  # (a person or an image build reads this)
            sys.stderr.write(f"error: {exc.message}\n")
            return 1
        return 0
    os.nice(5)  # beside a running job: the job's own work comes first
    convert(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
