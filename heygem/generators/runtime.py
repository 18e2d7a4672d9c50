"""Run a generator graph on ONNX Runtime or torch, with verified providers.

Provider selection is explicit and checked against what the live session reports
(``session.get_providers()``): an installed onnxruntime-gpu whose CUDA libraries are
missing silently runs on CPU, and that must show up as a warning, not be assumed away.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from heygem.errors import ProviderUnavailable
from heygem.generators.cuda_libs import ort_cuda_provider_missing_libs
from heygem.providers import is_cpu_fallback

log = logging.getLogger(__name__)

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


@dataclass(frozen=True)
class BackendInfo:
    backend: str
    requested: tuple[str, ...]
    used: tuple[str, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def cpu_fallback(self) -> bool:
        return is_cpu_fallback(self.requested, self.used)


class GraphRunner(Protocol):
    info: BackendInfo

    def run(self, face: np.ndarray, mel: np.ndarray) -> np.ndarray: ...


def _fallback_warning(
    what: str, requested: str, used: str, require_gpu: bool, reason: str = ""
) -> str:
    message = f"{what}: requested {requested} but the session runs on {used} (CPU fallback)"
    if reason:
        message += f": {reason}"
    if require_gpu:
        raise ProviderUnavailable(
            message,
            stage="generate",
            hint="run `heygem-diagnose env` to see which CUDA/cuDNN libraries are missing",
        )
    log.warning("%s; run `heygem-diagnose env` to see why", message)
    return message


def _why_no_cuda_provider() -> str:
    """Name what is missing, so nobody has to guess (the HeyGem 1.18 -> 1.16 downgrades)."""
    lib, missing = ort_cuda_provider_missing_libs()
    if lib is None:
        return (
            "this onnxruntime build has no CUDA provider (CPU-only wheel); install "
            "onnxruntime-gpu instead of onnxruntime"
        )
    if missing:
        return f"{lib.name} cannot load: the dynamic loader does not find {', '.join(missing)}"
    return f"{lib.name} is present and its libraries resolve; check the GPU driver / device"


class OrtRunner:
    def __init__(self, onnx_path: Path, device: str, threads: int, require_gpu: bool) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wants_cuda = device == "cuda" or (device == "auto" and CUDA_EP in available)
        requested = (CUDA_EP, CPU_EP) if wants_cuda else (CPU_EP,)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(onnx_path), options, providers=list(requested))
        # (face, condition) by position: the condition is "mel" or "control".
        self._inputs = [i.name for i in self._session.get_inputs()]
        used = tuple(self._session.get_providers())
        warnings: tuple[str, ...] = ()
        if wants_cuda and used[0] != CUDA_EP:
            warnings = (
                _fallback_warning(
                    "onnxruntime", CUDA_EP, used[0], require_gpu, _why_no_cuda_provider()
                ),
            )
        self.info = BackendInfo("onnxruntime", requested, used, warnings)

    def run(self, face: np.ndarray, mel: np.ndarray) -> np.ndarray:
        out = self._session.run(None, dict(zip(self._inputs, (face, mel), strict=True)))[0]
        return np.asarray(out)


class TorchRunner:
    def __init__(self, graph: nn.Module, device: str, threads: int, require_gpu: bool) -> None:
        torch.set_num_threads(threads)
        cuda_ok = torch.cuda.is_available()
        wants_cuda = device == "cuda" or (device == "auto" and cuda_ok)
        requested = ("cuda",) if wants_cuda else ("cpu",)
        warnings: tuple[str, ...] = ()
        target = "cuda" if wants_cuda and cuda_ok else "cpu"
        if wants_cuda and not cuda_ok:
            warnings = (_fallback_warning("torch", "cuda", "cpu", require_gpu),)
        self._device = torch.device(target)
        self._graph = graph.to(self._device).eval()
        # Verified, not assumed: where do the parameters/buffers actually live?
        tensors = [*self._graph.parameters(), *self._graph.buffers()]
        actual = tensors[0].device.type if tensors else target
        self.info = BackendInfo("torch", requested, (actual,), warnings)

    def run(self, face: np.ndarray, mel: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self._graph(
                torch.from_numpy(face).to(self._device), torch.from_numpy(mel).to(self._device)
            )
        return out.float().cpu().numpy()
