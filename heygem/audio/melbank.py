"""Wav2Lip's mel filter bank, built once by librosa and shipped with the package.

librosa defines the convention (Slaney-style filters, ``librosa.filters.mel`` with
Wav2Lip's sr/n_fft/n_mels/fmin/fmax), but building the bank at run time costs the first
run on a machine ~2 s (librosa's lazy submodules and numba's JIT cache). The bank is a
constant of those five numbers, so it is built here once, stored as a package asset,
and loaded in a millisecond; a test checks the asset against the installed librosa.

Rebuild after a librosa change of convention: ``python -m heygem.audio.melbank``.
"""

from __future__ import annotations

import functools
import io
from importlib import resources
from pathlib import Path

import numpy as np

ASSET = "wav2lip_mel_basis.npz"
SAMPLE_RATE = 16000
N_FFT = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0


def librosa_mel_basis() -> np.ndarray:
    """The bank as the installed librosa builds it (slow on a fresh machine)."""
    import librosa

    # librosa >= 0.10 accepts keyword arguments only.
    basis: np.ndarray = librosa.filters.mel(
        sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX
    )
    return basis


@functools.cache
def mel_basis() -> np.ndarray:
    """(80, 401) float32, read-only: the shipped bank."""
    data = resources.files("heygem.assets").joinpath(ASSET).read_bytes()
    with np.load(io.BytesIO(data)) as archive:
        basis = np.ascontiguousarray(archive["basis"], dtype=np.float32)
    if basis.shape != (N_MELS, N_FFT // 2 + 1):
        raise RuntimeError(f"bundled {ASSET} has shape {basis.shape}; reinstall heygem-harness")
    basis.setflags(write=False)
    return basis


def write_asset(target: Path) -> Path:
    np.savez_compressed(target, basis=librosa_mel_basis().astype(np.float32))
    return target


if __name__ == "__main__":
    folder = Path(__file__).resolve().parent.parent / "assets"
    print(f"wrote {write_asset(folder / ASSET)}")
