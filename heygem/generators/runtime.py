"""Run a generator graph on ONNX Runtime or torch, with verified providers.

Provider selection is explicit and checked against what the live session reports
(``session.get_providers()``): an installed onnxruntime-gpu whose CUDA libraries are
missing silently runs on CPU, and that must show up as a warning, not be assumed away.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from heygem.errors import ProviderUnavailable
from heygem.generators.cuda_libs import ort_cuda_provider_missing_libs
from heygem.providers import is_cpu_fallback

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"


@dataclass(frozen=True)
class BackendInfo:
    backend: str
    requested: tuple[str, ...]
    used: tuple[str, ...]
    warnings: tuple[str, ...] = field(default_factory=tuple)
    precision: str = "fp32"

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


def ort_session_options(threads: int, *, spinning: bool = True) -> Any:
    """The CPU session settings the runners use, chosen by ``benchmarks/test_tuning.py``
    (2 cores): all graph optimisations (Conv+BN+ReLU fusion, NCHWc layouts), ``threads``
    intra-op threads from the thread budget, one inter-op thread (the graphs are a single
    chain), the memory arena and memory pattern on (off, the rewrite renderer ran 2.2x and
    1.2x slower; Wav2Lip did not care), plain ``run`` (I/O binding ran the renderer 1.6x
    slower and Wav2Lip no faster: inputs are host arrays already). Spinning matters only
    with several intra-op threads, which the budget no longer gives the model."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OrtRunner:
    def __init__(self, onnx_path: Path, device: str, threads: int, require_gpu: bool) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wants_cuda = device == "cuda" or (device == "auto" and CUDA_EP in available)
        requested = (CUDA_EP, CPU_EP) if wants_cuda else (CPU_EP,)
        options = ort_session_options(threads)
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


def native_bf16() -> bool:
    """oneDNN has bf16 kernels for this CPU (AVX512-BF16 or AMX); elsewhere bf16 is
    emulated and slower than fp32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class TorchRunner:
    """A torch module in eval mode; ``precision="bf16"`` runs it under autocast (oneDNN's
    bf16 convolutions on CPUs that have them: ~2x the fp32 speed for Wav2Lip, at a
    quality cost the benchmarks measure). On CPU the graph runs channels-last, which
    oneDNN's convolutions prefer (measured ~1.2x faster than contiguous for Wav2Lip)."""

    def __init__(
        self,
        graph: nn.Module,
        device: str,
        threads: int,
        require_gpu: bool,
        *,
        precision: str = "fp32",
    ) -> None:
        import torch

        torch.set_num_threads(threads)
        cuda_ok = torch.cuda.is_available()
        wants_cuda = device == "cuda" or (device == "auto" and cuda_ok)
        requested = ("cuda",) if wants_cuda else ("cpu",)
        warnings: list[str] = []
        target = "cuda" if wants_cuda and cuda_ok else "cpu"
        if wants_cuda and not cuda_ok:
            warnings.append(_fallback_warning("torch", "cuda", "cpu", require_gpu))
        if precision == "bf16" and target == "cpu" and not native_bf16():
            message = (
                "bf16 requested but this CPU has no native bf16 (AVX512-BF16/AMX): it is "
                "emulated and likely slower than fp32"
            )
            log.warning(message)
            warnings.append(message)
        self._device = torch.device(target)
        self._precision = precision
        self._channels_last = target == "cpu"
        graph = graph.to(self._device).eval()
        if self._channels_last:
            # nn.Module.to takes memory_format; torch's stubs do not list it.
            graph = graph.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._graph = graph
        # Verified, not assumed: where do the parameters/buffers actually live?
        tensors = [*self._graph.parameters(), *self._graph.buffers()]
        actual = tensors[0].device.type if tensors else target
        self.info = BackendInfo("torch", requested, (actual,), tuple(warnings), precision)

    def run(self, face: np.ndarray, mel: np.ndarray) -> np.ndarray:
        import torch

        face_t = torch.from_numpy(face).to(self._device)
        if self._channels_last:
            face_t = face_t.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(
            self._device.type, dtype=torch.bfloat16, enabled=self._precision == "bf16"
        )
        with torch.inference_mode(), autocast:
            out = self._graph(face_t, torch.from_numpy(mel).to(self._device))
        return np.ascontiguousarray(out.float().cpu().numpy())
