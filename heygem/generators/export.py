"""Export a generator graph to ONNX that onnxruntime 1.16 and 1.18 both load.

Legacy (TorchScript) exporter, opset <= 17, IR version <= 9 (ORT 1.16 reads IR 9 at
most), dynamic batch; parity against torch is checked before the file is published.
"""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from heygem.errors import PipelineError
from heygem.partial import partial_beside

if TYPE_CHECKING:  # torch is imported where an export happens, not with this module
    import torch
    from torch import nn

    from heygem.generators.graphs import Wav2LipGraph

log = logging.getLogger(__name__)

OPSET = 17
MAX_IR_VERSION = 9
PARITY_TOLERANCE = 2e-4


def example_inputs(
    size: int, batch: int = 2, seed: int = 0, graph: nn.Module | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded (face, condition) batch: a mel window, or the graph's own example
    condition when it has one (``example_condition``)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    face = torch.rand(batch, 3, size, size, generator=gen)
    example_condition = getattr(graph, "example_condition", None)
    if example_condition is not None:
        return face, example_condition(batch, gen)
    mel = torch.rand(batch, 1, 80, 16, generator=gen) * 8.0 - 4.0
    return face, mel


def condition_name(graph: nn.Module) -> str:
    """The graph's second input's name: ``mel`` unless the graph names another."""
    return str(getattr(graph, "condition_name", "mel"))


def export_onnx(graph: nn.Module, size: int, target: Path, *, opset: int = OPSET) -> Path:
    """Write ``target`` atomically; raise PipelineError if the export does not match torch."""

    if opset > OPSET:
        raise PipelineError(
            f"opset {opset} requested; onnxruntime 1.16 needs <= {OPSET}", stage="export"
        )
    tmp_name = _temporary(target)
    try:
        face, mel = example_inputs(size, graph=graph)
        second = condition_name(graph)
        _trace(graph, (face, mel), ["face", second], tmp_name, opset)
        _check_and_pin(Path(tmp_name))
        verify_parity(graph, Path(tmp_name), size)
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    log.info("exported %s (opset %d)", target, opset)
    return target


def export_face_split(graph: Wav2LipGraph, size: int, encoder: Path, decoder: Path) -> None:
    """Wav2Lip's face encoder and the rest as two graphs (heygem.generators.face_features),
    checked together against the whole torch graph; both files appear only when both
    exported and match."""
    import torch

    from heygem.generators.graphs import Wav2LipDecoder, Wav2LipFaceEncoder

    parts = (Wav2LipFaceEncoder(graph).eval(), Wav2LipDecoder(graph).eval())
    temporary = [_temporary(target) for target in (encoder, decoder)]
    try:
        face, mel = example_inputs(size, graph=graph)
        with torch.inference_mode():
            features = parts[0](face)
        _trace(parts[0], (face,), ["face"], temporary[0], OPSET, output="features")
        _trace(parts[1], (features, mel), ["features", "mel"], temporary[1], OPSET)
        for name in temporary:
            _check_and_pin(Path(name))
        _verify_split_parity(graph, size, Path(temporary[0]), Path(temporary[1]))
        os.replace(temporary[0], encoder)
        os.replace(temporary[1], decoder)
    except BaseException:
        for name in temporary:
            Path(name).unlink(missing_ok=True)
        raise
    log.info("exported %s and %s (opset %d)", encoder, decoder, OPSET)


def _temporary(target: Path) -> str:
    return str(partial_beside(target, what="the ONNX file", hint="choose a writable output path"))


def _trace(
    graph: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    names: list[str],
    target: str,
    opset: int,
    *,
    output: str = "face_out",
) -> None:
    """The legacy (TorchScript) exporter, batch dimension dynamic on every input/output."""
    import torch

    # torch >= 2.5 defaults towards the dynamo exporter; torch 2.1-2.4 has no `dynamo`
    # argument and always uses the legacy one.
    legacy_only = "dynamo" in inspect.signature(torch.onnx.export).parameters
    legacy: dict[str, Any] = {"dynamo": False} if legacy_only else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation notices
        torch.onnx.export(
            graph.eval(), inputs, target, input_names=names, output_names=[output],
            dynamic_axes={name: {0: "batch"} for name in [*names, output]},
            opset_version=opset, do_constant_folding=True, **legacy,
        )  # fmt: skip


def _check_and_pin(path: Path) -> None:
    import onnx

    model = onnx.load(str(path))
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
        onnx.save(model, str(path))
    onnx.checker.check_model(model)
    opsets = {imp.domain or "ai.onnx": imp.version for imp in model.opset_import}
    if opsets.get("ai.onnx", 0) > OPSET:
        raise PipelineError(f"exported opset {opsets} exceeds {OPSET}", stage="export")


def verify_parity(graph: nn.Module, onnx_path: Path, size: int) -> float:
    """Max abs difference between torch and ONNX Runtime (CPU) on a seeded batch."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    second = condition_name(graph)
    return _parity(graph, size, lambda face, mel: session.run(None, {"face": face, second: mel})[0])


def _verify_split_parity(graph: nn.Module, size: int, encoder: Path, decoder: Path) -> float:
    """The two halves on ONNX Runtime against the whole torch graph, as verify_parity."""
    import onnxruntime as ort

    cpu = ["CPUExecutionProvider"]
    encode = ort.InferenceSession(str(encoder), providers=cpu)
    decode = ort.InferenceSession(str(decoder), providers=cpu)

    def run(face: np.ndarray, mel: np.ndarray) -> Any:
        features = encode.run(None, {"face": face})[0]
        return decode.run(None, {"features": features, "mel": mel})[0]

    return _parity(graph, size, run)


def _parity(
    graph: nn.Module, size: int, run_onnx: Callable[[np.ndarray, np.ndarray], Any]
) -> float:
    """``run_onnx`` against the torch graph on a seeded batch; PipelineError beyond the
    tolerance."""
    import torch

    face, mel = example_inputs(size, batch=3, seed=1, graph=graph)
    with torch.inference_mode():
        expected = graph.eval()(face, mel).numpy()
    got = run_onnx(face.numpy(), mel.numpy())
    diff = float(np.max(np.abs(expected - got)))
    if not diff <= PARITY_TOLERANCE:
        raise PipelineError(
            f"ONNX export differs from torch by {diff:.2e} (tolerance {PARITY_TOLERANCE:.0e})",
            stage="export",
            hint="report this with `heygem-diagnose env` output",
        )
    return diff
