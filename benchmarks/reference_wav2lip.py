"""A stand-in for the Wav2Lip repository's ``inference.py``, run as its own process.

The Wav2Lip speed target is stated against the reference implementation, so the
benchmark needs a process that does what that script does, step for step, on the same
checkpoint and inputs (written for this project; the upstream file is not vendored):

- imports what it imports at start-up (torch, scipy, cv2, librosa through its ``audio``
  module, tqdm);
- reads every frame of the template into memory with ``cv2.VideoCapture``;
- loads the audio with ``librosa.load(sr=16000)`` and computes its mel spectrogram the
  way its ``audio.py`` does (scipy ``lfilter`` pre-emphasis, ``librosa.stft``, librosa's
  mel filter bank, dB, symmetric normalisation with clipping);
- cuts 16-step mel chunks at ``int(i * 80 / fps)``, the last one aligned to the end;
- with a face box given (``--box``, no detection), crops the box from every full frame,
  resizes it to 96x96 and batches 128 frames: lower half zeroed, concatenated with the
  unmasked crop on channels, /255;
- loads the model on the first batch (``torch.load`` + ``module.`` prefix stripped) and
  runs a plain PyTorch forward of the whole model per batch under ``no_grad`` with
  torch's default threads;
- resizes each prediction back into the box of a copy of its full frame, writes it with
  ``cv2.VideoWriter`` (DIVX AVI), and finally muxes with the ``ffmpeg`` CLI
  (``-q:v 1``, libx264 + AAC at ffmpeg's defaults).

Run: ``python -m benchmarks.reference_wav2lip --checkpoint W --face V --audio A
--outfile O --box TOP BOTTOM LEFT RIGHT``; prints one JSON line with its timings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_STARTED = time.perf_counter()

import cv2  # noqa: E402  (imports are part of what the reference pays, timed from here)
import librosa  # noqa: E402
import librosa.filters  # noqa: E402
import numpy as np  # noqa: E402
import scipy  # noqa: E402, F401
import torch  # noqa: E402
from scipy import signal  # noqa: E402

from heygem.generators.wav2lip import Wav2Lip  # noqa: E402  (the same architecture)

IMG_SIZE = 96
MEL_STEP = 16
# Wav2Lip's hparams.py (the audio convention its checkpoints were trained on).
SAMPLE_RATE, N_FFT, HOP, WIN, N_MELS, FMIN, FMAX = 16000, 800, 200, 800, 80, 55, 7600
PREEMPHASIS, MIN_LEVEL_DB, REF_LEVEL_DB, MAX_ABS = 0.97, -100.0, 20.0, 4.0

_mel_basis: np.ndarray | None = None


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    global _mel_basis  # built once per process, as the reference does
    emphasised = signal.lfilter([1, -PREEMPHASIS], [1], wav)
    spec = librosa.stft(y=emphasised, n_fft=N_FFT, hop_length=HOP, win_length=WIN)
    if _mel_basis is None:
        _mel_basis = librosa.filters.mel(
            sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX
        )
    mel = np.dot(_mel_basis, np.abs(spec))
    db = 20 * np.log10(np.maximum(10 ** (MIN_LEVEL_DB / 20), mel)) - REF_LEVEL_DB
    scaled = (2 * MAX_ABS) * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS
    return np.clip(scaled, -MAX_ABS, MAX_ABS)


def read_frames(path: Path) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(path))
    fps = capture.get(cv2.CAP_PROP_FPS)
    frames: list[np.ndarray] = []
    while True:
        ok, frame = capture.read()
        if not ok:
            capture.release()
            return frames, fps
        frames.append(frame)


def mel_chunks(mel: np.ndarray, fps: float) -> list[np.ndarray]:
    chunks = []
    step = 80.0 / fps
    i = 0
    while True:
        start = int(i * step)
        if start + MEL_STEP > mel.shape[1]:
            chunks.append(mel[:, mel.shape[1] - MEL_STEP :])
            return chunks
        chunks.append(mel[:, start : start + MEL_STEP])
        i += 1


Batch = tuple[np.ndarray, np.ndarray, list[np.ndarray], list[tuple[int, int, int, int]]]


def batches(
    frames: list[np.ndarray], chunks: list[np.ndarray], box: tuple[int, int, int, int], size: int
) -> Iterator[Batch]:
    y1, y2, x1, x2 = box
    faces, mels, full, coords = [], [], [], []
    for i, chunk in enumerate(chunks):
        frame = frames[i % len(frames)].copy()
        faces.append(cv2.resize(frame[y1:y2, x1:x2].copy(), (IMG_SIZE, IMG_SIZE)))
        mels.append(chunk)
        full.append(frame)
        coords.append(box)
        if len(faces) >= size or i == len(chunks) - 1:
            crops = np.asarray(faces)
            masked = crops.copy()
            masked[:, IMG_SIZE // 2 :] = 0
            images = np.concatenate((masked, crops), axis=3) / 255.0
            mel_batch = np.asarray(mels)
            yield images, mel_batch.reshape(*mel_batch.shape, 1), full, coords
            faces, mels, full, coords = [], [], [], []


def load_model(path: Path) -> torch.nn.Module:
    checkpoint = torch.load(path, map_location=lambda storage, loc: storage)
    state = {k.replace("module.", ""): v for k, v in checkpoint["state_dict"].items()}
    model = Wav2Lip()
    model.load_state_dict(state)
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--face", type=Path, required=True)
    parser.add_argument("--audio", type=Path, required=True)
    parser.add_argument("--outfile", type=Path, required=True)
    parser.add_argument("--box", type=int, nargs=4, required=True, help="top bottom left right")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    marks: dict[str, float] = {"imports": time.perf_counter() - _STARTED}

    start = time.perf_counter()
    frames, fps = read_frames(args.face)
    marks["read_frames"] = time.perf_counter() - start
    start = time.perf_counter()
    wav = librosa.load(str(args.audio), sr=SAMPLE_RATE)[0]
    chunks = mel_chunks(melspectrogram(wav), fps)
    marks["audio"] = time.perf_counter() - start
    frames = frames[: len(chunks)]

    y1, y2, x1, x2 = args.box
    model_seconds = 0.0
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="w2l-ref-") as temp:
        avi = Path(temp) / "result.avi"
        writer: Any = None
        for i, (images, mels, full, coords) in enumerate(
            batches(frames, chunks, (y1, y2, x1, x2), args.batch_size)
        ):
            if i == 0:
                model = load_model(args.checkpoint)
                height, width = frames[0].shape[:-1]
                writer = cv2.VideoWriter(
                    str(avi), cv2.VideoWriter.fourcc(*"DIVX"), fps, (width, height)
                )
            face_t = torch.FloatTensor(np.transpose(images, (0, 3, 1, 2)))
            mel_t = torch.FloatTensor(np.transpose(mels, (0, 3, 1, 2)))
            t0 = time.perf_counter()
            with torch.no_grad():
                pred = model(mel_t, face_t)
            model_seconds += time.perf_counter() - t0
            out = pred.cpu().numpy().transpose(0, 2, 3, 1) * 255.0
            for p, frame, (y1, y2, x1, x2) in zip(out, full, coords, strict=True):
                frame[y1:y2, x1:x2] = cv2.resize(p.astype(np.uint8), (x2 - x1, y2 - y1))
                writer.write(frame)
        writer.release()
        marks["generate_loop"] = time.perf_counter() - start
        marks["model_forward"] = model_seconds
        start = time.perf_counter()
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-nostdin", "-y", "-i", str(args.audio),
             "-i", str(avi), "-strict", "-2", "-q:v", "1", str(args.outfile)],
            check=True,
        )  # fmt: skip
        marks["ffmpeg_mux"] = time.perf_counter() - start
    marks["total"] = time.perf_counter() - _STARTED
    print(json.dumps({"frames": len(chunks), **{k: round(v, 3) for k, v in marks.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
