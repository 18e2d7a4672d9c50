"""What the Wav2Lip precision benchmarks need: a checkpoint whose activations have a
trained network's scale, real inputs, and the static int8 (QDQ) model.

The tests' random-init checkpoint outputs a nearly flat 0.5 (std ~0.02), so any
precision looks lossless on it. Re-estimating its BatchNorm statistics on template crops
(a few forward passes in train mode) normalises every layer's activations the way
training does; the output then spans most of 0..1 (std ~0.09), and the error of bf16 or
int8 arithmetic relative to the content is measured on realistic activation ranges. A
real checkpoint can be measured instead: HEYGEM_BENCH_WAV2LIP=/path/to/wav2lip.pth.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from heygem.audio.features import MEL_STEPS, melspectrogram
from heygem.media.audio import decode_audio_mono

REAL_CHECKPOINT_ENV = "HEYGEM_BENCH_WAV2LIP"


def model_inputs(crops: np.ndarray, audio: Path, n: int, offset: int = 0) -> dict[str, np.ndarray]:
    """``n`` generator inputs: template crops (BGR 0..1, NCHW) and mel windows of speech."""
    mel = melspectrogram(decode_audio_mono(audio))
    picks = (np.arange(n) * 7 + offset) % len(crops)
    starts = np.linspace(0, mel.shape[1] - MEL_STEPS, n).astype(int)
    face = crops[picks].transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    mels = np.stack([mel[:, s : s + MEL_STEPS] for s in starts])[:, None].astype(np.float32)
    return {"face": np.ascontiguousarray(face), "mel": np.ascontiguousarray(mels)}


def calibrated_checkpoint(source: Path, inputs: dict[str, np.ndarray], target: Path) -> Path:
    """``source`` with its BatchNorm statistics re-estimated on ``inputs`` (see above);
    a real checkpoint from HEYGEM_BENCH_WAV2LIP is used as it is."""
    real = os.environ.get(REAL_CHECKPOINT_ENV)
    if real:
        return Path(real)
    if target.exists():
        return target
    import torch

    from heygem.generators.graphs import Wav2LipGraph
    from heygem.generators.wav2lip import load_wav2lip_checkpoint, save_wav2lip_checkpoint

    model = load_wav2lip_checkpoint(source)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batches
    graph = Wav2LipGraph(model).train()
    face, mel = torch.from_numpy(inputs["face"]), torch.from_numpy(inputs["mel"])
    with torch.no_grad():
        for start in range(0, len(face), 16):
            graph(face[start : start + 16], mel[start : start + 16])
    return save_wav2lip_checkpoint(model.eval(), target)


def quantize_int8(onnx_path: Path, calibration: dict[str, np.ndarray], target: Path) -> Path:
    """Static QDQ int8 (per-channel weights, uint8 activations, MinMax ranges calibrated
    on ``calibration``): what ORT runs with VNNI integer kernels."""
    if target.exists():
        return target
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(
                {k: v[i : i + 8] for k, v in calibration.items()}
                for i in range(0, len(calibration["face"]), 8)
            )

        def get_next(self) -> dict[str, Any] | None:
            return next(self._batches, None)

    quantize_static(
        str(onnx_path),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        calibrate_method=CalibrationMethod.MinMax,
    )
    return target
