from __future__ import annotations

import subprocess
import sys
import warnings

import librosa
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

from heygem.audio import features, melbank
from heygem.audio.synth import synth_speech


def librosa_melspectrogram(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's ``audio.melspectrogram`` as written upstream: scipy + librosa."""
    emphasised = signal.lfilter([1.0, -0.97], [1.0], wav.astype(np.float64))
    spec = np.abs(librosa.stft(y=emphasised, n_fft=800, hop_length=200, win_length=800))
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    db = 20 * np.log10(np.maximum(1e-5, basis @ spec)) - 20
    return np.clip(8 * ((db + 100) / 100) - 4, -4, 4).astype(np.float32)


def test_shipped_filter_bank_is_librosas() -> None:
    np.testing.assert_allclose(
        melbank.mel_basis(),
        melbank.librosa_mel_basis(),
        atol=1e-7,
        err_msg="librosa's mel filters changed: rebuild with `python -m heygem.audio.melbank`",
    )


@settings(max_examples=25, deadline=None)
@given(
    seconds=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**16),
    gain_db=st.floats(-60.0, 0.0),
    kind=st.sampled_from(["speech", "noise", "tone"]),
)
def test_mel_matches_librosa(seconds: float, seed: int, gain_db: float, kind: str) -> None:
    n = max(1, round(seconds * 16000))
    rng = np.random.default_rng(seed)
    if kind == "speech":
        wav = synth_speech(max(seconds, 0.05), seed=seed)[:n]
    elif kind == "noise":
        wav = rng.standard_normal(n).astype(np.float32)
    else:
        wav = np.sin(2 * np.pi * rng.uniform(60, 7000) * np.arange(n) / 16000).astype(np.float32)
    wav = (wav / max(1e-9, float(np.abs(wav).max())) * 10 ** (gain_db / 20)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns that n_fft exceeds a short input
        expected = librosa_melspectrogram(wav)
    got = features.melspectrogram(wav)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_mel_needs_neither_librosa_nor_scipy_at_run_time() -> None:
    code = (
        "import sys, numpy as np; from heygem.audio import features; "
        "features.melspectrogram(np.ones(16000, np.float32)); "
        "print(sorted(m for m in ('librosa', 'scipy', 'numba') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_mel_follows_the_wav2lip_convention() -> None:
    wav = synth_speech(2.0, seed=5)
    mel = features.melspectrogram(wav)
    assert mel.shape == (80, 1 + wav.size // 200)  # 80 mels, hop 200, centred frames
    assert mel.dtype == np.float32 and mel.min() >= -4.0 and mel.max() <= 4.0
    # Independent recomputation of one column straight from the definition.
    emphasised = np.append(wav[0], wav[1:] - 0.97 * wav[:-1]).astype(np.float64)
    spec = np.abs(librosa.stft(y=emphasised, n_fft=800, hop_length=200, win_length=800))
    basis = librosa.filters.mel(sr=16000, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    db = 20 * np.log10(np.maximum(1e-5, basis @ spec[:, 40])) - 20
    expected = np.clip(8 * (db + 100) / 100 - 4, -4, 4)
    np.testing.assert_allclose(mel[:, 40], expected, atol=1e-4)


def test_silence_sits_at_the_floor() -> None:
    mel = features.melspectrogram(np.zeros(16000, np.float32))
    assert np.all(mel == -4.0)


@pytest.mark.parametrize("fps", [25.0, 30.0, 29.97])
def test_every_frame_gets_a_full_window(fps: float) -> None:
    wav = synth_speech(1.3, seed=1)
    n = features.frame_count(wav.size, fps)
    mel = features.pad_mel_for_frames(features.melspectrogram(wav), n, fps)
    assert n == int(np.ceil(1.3 * fps - 1e-6))
    for i in (0, n // 2, n - 1):
        window = features.mel_window(mel, i, fps)
        assert window.shape == (80, 16)
    assert features.mel_window_start(10, 25.0) == 32  # int(10 * 80 / 25)


def test_voice_activity_marks_lead_silence_and_speech() -> None:
    wav = synth_speech(4.0, seed=2, lead_silence=0.6)
    track = features.voice_activity(wav, 100, 25.0)
    assert not track.active[:12].any()  # the first 0.48 s are silent
    assert track.active.mean() > 0.5
    assert 0.0 < track.silent_fraction < 0.5
