"""Synthetic speech-like audio: voiced syllables at a natural rate, with pauses.

Used by ``heygem demo`` and the tests, so that nothing has to be downloaded: a glottal
pulse train with a drifting pitch, shaped by vowel formants, 3-6 syllables a second in
phrases separated by silences, with short fricative bursts at some onsets.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

# (F1, F2, F3) in Hz for a few vowels.
_VOWELS = ((730, 1090, 2440), (530, 1840, 2480), (270, 2290, 3010), (570, 840, 2410),
           (300, 870, 2240), (660, 1720, 2410))  # fmt: skip


def _resonator(x: np.ndarray, freq: float, bandwidth: float, sample_rate: int) -> np.ndarray:
    r = np.exp(-np.pi * bandwidth / sample_rate)
    theta = 2 * np.pi * freq / sample_rate
    a = [1.0, -2 * r * np.cos(theta), r * r]
    return signal.lfilter([1.0 - r], a, x)


def _syllable(rng: np.random.Generator, length: int, f0: float, sample_rate: int) -> np.ndarray:
    t = np.arange(length) / sample_rate
    pitch = f0 * (1.0 + 0.06 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)) * (1 - 0.1 * t)
    phase = np.cumsum(pitch / sample_rate)
    pulses = (np.diff(np.floor(phase), prepend=0.0) > 0).astype(np.float64)
    source = signal.lfilter([1.0], [1.0, -0.97], pulses)  # spectral tilt of a real glottis
    vowel = _VOWELS[int(rng.integers(len(_VOWELS)))]
    voiced = sum(_resonator(source, f, 80 + 0.05 * f, sample_rate) for f in vowel)
    envelope = np.sin(np.pi * np.linspace(0, 1, length)) ** 0.6
    out = voiced * envelope
    if rng.random() < 0.4:  # a fricative onset ("s", "f", "sh")
        burst = min(length, int(0.05 * sample_rate))
        noise = rng.standard_normal(burst)
        sos = signal.butter(
            4, [3000, min(7000, sample_rate / 2 - 100)], "bandpass", fs=sample_rate, output="sos"
        )
        out[:burst] += 0.3 * signal.sosfilt(sos, noise) * np.linspace(1, 0, burst)
    return out


def synth_speech(
    seconds: float,
    *,
    sample_rate: int = 16000,
    seed: int = 0,
    lead_silence: float = 0.4,
    syllables_per_second: float = 4.5,
) -> np.ndarray:
    """Return ``seconds`` of mono float32 speech-like audio peaking at -3 dBFS.

    Starts with ``lead_silence`` seconds of silence and has 0.35-0.8 s pauses between
    phrases of 3-7 syllables, so silence handling is always exercised.
    """
    rng = np.random.default_rng(seed)
    total = round(seconds * sample_rate)
    out = np.zeros(total, dtype=np.float64)
    pos = int(lead_silence * sample_rate)
    f0 = rng.uniform(105, 190)
    while pos < total:
        for _ in range(int(rng.integers(3, 8))):
            length = int(sample_rate * rng.uniform(0.7, 1.3) / syllables_per_second)
            if pos + length > total:
                break
            out[pos : pos + length] += _syllable(
                rng, length, f0 * rng.uniform(0.9, 1.1), sample_rate
            )
            pos += length + int(sample_rate * rng.uniform(0.01, 0.05))
        pos += int(sample_rate * rng.uniform(0.35, 0.8))
    peak = float(np.max(np.abs(out))) or 1.0
    return (out / peak * 10 ** (-3 / 20)).astype(np.float32)
