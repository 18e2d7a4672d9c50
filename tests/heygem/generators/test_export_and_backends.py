"""ONNX export that ORT 1.16 loads, parity with torch, and the Wav2Lip generator end to end."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from heygem.config import BackendName, GenerateOptions
from heygem.generators.export import MAX_IR_VERSION, OPSET, export_onnx, verify_parity
from heygem.generators.graphs import build_graph
from heygem.generators.rewrite import Control, MouthRenderer
from heygem.generators.runtime import OrtRunner, TorchRunner
from heygem.pipeline import Pipeline
from tests.helpers import stream_summary


def _assert_loadable_by_old_ort(path: Path) -> None:
    model = onnx.load(str(path))
    assert model.ir_version <= MAX_IR_VERSION
    assert max(i.version for i in model.opset_import if i.domain in ("", "ai.onnx")) <= OPSET


def test_rewrite_renderer_export_matches_torch(tmp_path: Path) -> None:
    graph, spec = build_graph("rewrite", None)
    path = export_onnx(graph, spec.crop.size, tmp_path / "rw.onnx")
    _assert_loadable_by_old_ort(path)
    assert verify_parity(graph, path, spec.crop.size) < 2e-4


def test_wav2lip_checkpoint_exports_and_runs_on_both_backends(
    wav2lip_checkpoint: Path, tmp_path: Path
) -> None:
    graph, spec = build_graph("wav2lip", wav2lip_checkpoint)
    assert spec.crop.size == 96 and spec.crop.kind == "face"
    path = export_onnx(graph, 96, tmp_path / "w2l.onnx")
    _assert_loadable_by_old_ort(path)
    rng = np.random.default_rng(0)
    face = rng.random((2, 3, 96, 96), dtype=np.float32)
    mel = (rng.random((2, 1, 80, 16), dtype=np.float32) * 8 - 4).astype(np.float32)
    via_ort = OrtRunner(path, "cpu", 1, require_gpu=False).run(face, mel)
    via_torch = TorchRunner(graph, "cpu", 1, require_gpu=False).run(face, mel)
    assert via_ort.shape == (2, 3, 96, 96)
    np.testing.assert_allclose(via_ort, via_torch, atol=2e-4)


def test_renderer_is_the_identity_without_extra_opening() -> None:
    model = MouthRenderer()
    face = torch.rand(2, 3, model.size, model.size)
    control = model.example_condition(2, torch.Generator().manual_seed(0))
    closed = control.clone()
    closed[:, Control.OPEN] = 0.0
    assert torch.equal(model(face, closed), face)
    assert (model(face, control) - face).abs().mean() > 0.005


def test_cpu_fallback_is_detected_when_cuda_is_requested(tmp_path: Path) -> None:
    # On a machine without a usable CUDA provider, asking for it must be reported, never
    # assumed: that is the silent HeyGem fallback.
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() and torch.cuda.is_available():
        pytest.skip("a working GPU is present")
    graph, spec = build_graph("rewrite", None)
    path = export_onnx(graph, spec.crop.size, tmp_path / "rw.onnx")
    runner = OrtRunner(path, "cuda", 1, require_gpu=False)
    assert runner.info.cpu_fallback and "CPU fallback" in runner.info.warnings[0]
    from heygem.generators.cuda_libs import ort_cuda_provider_missing_libs

    lib, missing = ort_cuda_provider_missing_libs()  # the reason is named, whichever it is
    expected = (
        "no CUDA provider (CPU-only wheel)"
        if lib is None
        else (missing[0] if missing else "present and its libraries resolve")
    )
    assert expected in runner.info.warnings[0]
    from heygem.errors import ProviderUnavailable

    with pytest.raises(ProviderUnavailable, match="CPU fallback"):
        OrtRunner(path, "cuda", 1, require_gpu=True)


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_wav2lip_generator_end_to_end(
    backend: BackendName,
    wav2lip_checkpoint: Path,
    speech_wav: Path,
    template_mp4: Path,
    tmp_path: Path,
) -> None:
    options = GenerateOptions(
        generator="wav2lip",
        checkpoint=wav2lip_checkpoint,
        backend=backend,
        cache_dir=tmp_path / "c",
        batch_size=16,
    )
    out = tmp_path / "w2l.mp4"
    result = Pipeline(options).generate(speech_wav, template_mp4, out)
    assert stream_summary(out)["frames"] == result.frames == 125
    assert result.backend == backend


def test_wav2lip_needs_checkpoint_option() -> None:
    from heygem.errors import InvalidOption

    with pytest.raises(InvalidOption, match="needs a checkpoint"):
        replace(GenerateOptions(), generator="wav2lip").validated()
