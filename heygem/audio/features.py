"""Wav2Lip's log-mel spectrogram, its per-video-frame windows, and voice activity.

The constants are Wav2Lip's ``hparams.py``; a checkpoint trained on them only works when
features match, so they are fixed here rather than configurable. librosa defines the
convention (``librosa.stft`` with its defaults: periodic Hann window, centred frames,
zero padding; ``librosa.filters.mel``), computed here in numpy without librosa at run
time: its numba JIT made the first run on a machine ~14 s slower and importing it costs
~0.5 s on every run. The filter bank is librosa's own, shipped as an asset
(``heygem.audio.melbank``); tests check both against librosa.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from heygem.audio.melbank import mel_basis

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN = 55.0
FMAX = 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS = 4.0
MEL_STEPS = 16  # mel frames per window fed to the generator (0.2 s)
MEL_FPS = SAMPLE_RATE / HOP  # 80 mel frames per second
# STFT frames per block: bounds memory (an hour of audio is 288k frames) at ~2.6 MB.
_BLOCK_FRAMES = 1024


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Normalised log-mel, shape (80, T), values in [-4, 4] (Wav2Lip's ``audio.melspectrogram``)."""
    emphasised = preemphasis(wav.astype(np.float64))
    basis = mel_basis()
    min_level = math.pow(10.0, MIN_LEVEL_DB / 20.0)
    out = np.empty((N_MELS, _stft_frame_count(emphasised.size)), dtype=np.float32)
    for start, magnitude in _stft_magnitude_blocks(emphasised):
        mel = basis @ magnitude
        db = 20.0 * np.log10(np.maximum(min_level, mel)) - REF_LEVEL_DB
        normalised = (2 * MAX_ABS) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS
        out[:, start : start + magnitude.shape[1]] = np.clip(normalised, -MAX_ABS, MAX_ABS)
    return out


def preemphasis(wav: np.ndarray, coefficient: float = PREEMPHASIS) -> np.ndarray:
    """``y[n] = x[n] - c * x[n-1]`` (scipy's ``lfilter([1, -c], [1], x)``, zero state)."""
    out = np.empty_like(wav)
    out[:1] = wav[:1]
    np.subtract(wav[1:], coefficient * wav[:-1], out=out[1:])
    return out


def _hann_periodic(length: int) -> np.ndarray:
    """``scipy.signal.get_window("hann", length, fftbins=True)``, librosa's STFT window."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


def _stft_frame_count(n_samples: int) -> int:
    return 1 + (n_samples + 2 * (N_FFT // 2) - N_FFT) // HOP


def _stft_magnitude_blocks(y: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """|STFT| as librosa computes it (centred, zero-padded, Hann), in blocks of frames:
    (first frame index, (N_FFT // 2 + 1, frames) float64)."""
    padded = np.pad(y, N_FFT // 2)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP]
    window = _hann_periodic(WIN)
    for start in range(0, frames.shape[0], _BLOCK_FRAMES):
        chunk = frames[start : start + _BLOCK_FRAMES] * window
        yield start, np.abs(np.fft.rfft(chunk, axis=1)).T


def frame_count(n_samples: int, fps: float, sample_rate: int = SAMPLE_RATE) -> int:
    """Output frames for the audio: enough to cover every sample (duration = audio duration)."""
    return max(1, math.ceil(n_samples * fps / sample_rate - 1e-6))


def pad_mel_for_frames(mel: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    """Pad the end with silence so frame ``n_frames - 1`` still gets a full window."""
    needed = mel_window_start(n_frames - 1, fps) + MEL_STEPS
    if mel.shape[1] >= needed:
        return mel
    pad = np.full((mel.shape[0], needed - mel.shape[1]), -MAX_ABS, dtype=mel.dtype)
    return np.concatenate([mel, pad], axis=1)


def mel_window_start(frame_index: int, fps: float) -> int:
    return int(frame_index * MEL_FPS / fps)


def mel_window(mel: np.ndarray, frame_index: int, fps: float) -> np.ndarray:
    start = mel_window_start(frame_index, fps)
    return mel[:, start : start + MEL_STEPS]


@dataclass(frozen=True)
class ActivityTrack:
    """Per output frame: loudness (dBFS) and whether someone is speaking."""

    loudness_db: np.ndarray
    active: np.ndarray

    @property
    def silent_fraction(self) -> float:
        return float(1.0 - self.active.mean()) if self.active.size else 1.0


def voice_activity(
    wav: np.ndarray,
    n_frames: int,
    fps: float,
    *,
    sample_rate: int = SAMPLE_RATE,
    floor_db: float = -45.0,
    below_peak_db: float = 30.0,
    hangover_frames: int = 2,
) -> ActivityTrack:
    """Energy-based activity per video frame.

    A frame is active when its RMS is above both an absolute floor and ``below_peak_db``
    under the loudest frame; ``hangover_frames`` keeps short gaps inside words open so the
    mouth does not flap shut between syllables.
    """
    edges = np.round(np.arange(n_frames + 1) * sample_rate / fps).astype(np.int64)
    edges = np.clip(edges, 0, wav.size)
    squared = np.concatenate([[0.0], np.cumsum(wav.astype(np.float64) ** 2)])
    counts = np.maximum(edges[1:] - edges[:-1], 1)
    rms = np.sqrt((squared[edges[1:]] - squared[edges[:-1]]) / counts)
    loudness = 20.0 * np.log10(np.maximum(rms, 1e-6))
    threshold = max(floor_db, float(loudness.max()) - below_peak_db)
    active = loudness > threshold
    if hangover_frames > 0 and active.any():
        kernel = np.ones(hangover_frames + 1, dtype=np.int64)
        active = np.convolve(active.astype(np.int64), kernel)[: active.size] > 0
    return ActivityTrack(loudness.astype(np.float32), active)
