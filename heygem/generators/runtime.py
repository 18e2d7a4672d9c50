"""Run a generator graph on ONNX Runtime or torch, with verified providers.

Provider selection is explicit and checked against what the live session reports
(``session.get_providers()``): an installed onnxruntime-gpu whose CUDA libraries are
missing silently runs on CPU, and that must show up as a warning, not be assumed away.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import cv2
import numpy as np

from heygem.errors import OutputNotWritable, ProviderUnavailable
from heygem.generators.cuda_libs import ort_cuda_provider_missing_libs
from heygem.partial import partial_beside
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


def graph_faces(crops: np.ndarray) -> np.ndarray:
    """uint8 BGR crops [B,S,S,3] -> the graphs' ``face`` input [B,3,S,S] float32 0..1."""
    planar = np.asarray(crops).transpose(0, 3, 1, 2)
    face = np.empty(planar.shape, dtype=np.float32)  # (one pass, written in order)
    return np.multiply(planar, np.float32(1.0 / 255.0), out=face)


def crops_from_graph(face: np.ndarray) -> np.ndarray:
    """The graphs' ``face`` output [B,3,S,S] 0..1 -> uint8 BGR crops [B,S,S,3], rounded."""
    # Rounded while planar (contiguous), interleaved as bytes by OpenCV: 2x faster than
    # the same arithmetic on the transposed floats.
    levels = np.multiply(face, np.float32(255.0), dtype=np.float32)
    levels += np.float32(0.5)
    np.clip(levels, 0.0, 255.0, out=levels)
    planes = levels.astype(np.uint8)
    crops = np.empty(planes.transpose(0, 2, 3, 1).shape, dtype=np.uint8)
    for crop, into in zip(planes, crops, strict=True):
        cv2.merge(list(crop), dst=into)  # written in place (no stacked copy)
    return crops


class GraphRunner(Protocol):
    info: BackendInfo

    def run(self, face: np.ndarray, mel: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class CropRunner(Protocol):
    """A runner that also takes and returns the uint8 crops themselves (``run_crops``):
    it converts only what its graph actually computes."""

    def run_crops(self, crops: np.ndarray, condition: np.ndarray) -> np.ndarray: ...


def run_on_crops(runner: GraphRunner, crops: np.ndarray, condition: np.ndarray) -> np.ndarray:
    """uint8 BGR crops [B,S,S,3] in, the generated uint8 crops out."""
    if isinstance(runner, CropRunner):
        return runner.run_crops(crops, condition)
    return crops_from_graph(runner.run(graph_faces(crops), condition))


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
    """One ONNX Runtime session. On the CPU the session's optimised graph (fusions, NCHWc
    layouts) is saved once in ``optimized_dir`` and loaded from there afterwards: the
    optimisation passes took ~0.25 s of every Wav2Lip job's start-up, loading the saved
    graph ~0.09 s. The saved graph is specific to this ONNX Runtime version and CPU, and
    its name says so."""

    def __init__(
        self,
        onnx_path: Path,
        device: str,
        threads: int,
        require_gpu: bool,
        *,
        optimized_dir: Path | None = None,
    ) -> None:
        import onnxruntime as ort

        available = ort.get_available_providers()
        wants_cuda = device == "cuda" or (device == "auto" and CUDA_EP in available)
        requested = (CUDA_EP, CPU_EP) if wants_cuda else (CPU_EP,)
        saved = None
        if not wants_cuda and optimized_dir is not None:
            saved = _optimized_path(onnx_path, optimized_dir)
        self._session = _open_session(onnx_path, threads, requested, saved)
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
        return self.run_inputs(face, mel)

    def run_inputs(self, *arrays: np.ndarray) -> np.ndarray:
        """The first output, the inputs given in the graph's order."""
        out = self._session.run(None, dict(zip(self._inputs, arrays, strict=True)))[0]
        return np.asarray(out)


def _open_session(
    onnx_path: Path, threads: int, providers: tuple[str, ...], saved: Path | None
) -> Any:
    """The session, from the saved optimised graph when there is one (a damaged one is
    deleted and made again), else optimised now and saved for the next job."""
    import onnxruntime as ort

    if saved is not None and saved.is_file():
        options = ort_session_options(threads)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            return ort.InferenceSession(str(saved), options, providers=list(providers))
        except Exception as exc:  # noqa: BLE001 - ORT's error types derive from Exception only
            log.warning("saved optimised graph %s unreadable (%s); optimising again", saved, exc)
            saved.unlink(missing_ok=True)
    options = ort_session_options(threads)
    partial = _partial_path(saved) if saved is not None else None
    if partial is not None:
        options.optimized_model_filepath = str(partial)
    try:
        session = ort.InferenceSession(str(onnx_path), options, providers=list(providers))
    except BaseException:
        if partial is not None:
            partial.unlink(missing_ok=True)
        raise
    if saved is not None and partial is not None:
        _publish(partial, saved)
    return session


def _optimized_path(onnx_path: Path, directory: Path) -> Path:
    import platform

    import onnxruntime as ort

    machine = hashlib.blake2b(_cpu_flags().encode(), digest_size=4).hexdigest()
    tag = f"ort{ort.__version__}-{platform.machine()}-{machine}"
    return directory / f"{onnx_path.stem}.{tag}.opt.onnx"


@functools.cache
def _cpu_flags() -> str:
    """The CPU's feature flags: the saved graph may use kernels only this CPU has."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


def _partial_path(target: Path) -> Path | None:
    try:
        return partial_beside(target, what="the optimised graph", hint="")
    except OutputNotWritable as exc:  # only a speed-up: the session optimises in memory
        log.debug("%s", exc)
        return None


def _publish(partial: Path, target: Path) -> None:
    """Rename the graph ONNX Runtime wrote into place (never a half-written file)."""
    try:
        if partial.is_file() and partial.stat().st_size > 0:
            os.replace(partial, target)
    except OSError as exc:
        log.debug("cannot publish the optimised graph %s: %s", target, exc)
    finally:
        partial.unlink(missing_ok=True)


class FaceFeatureOrtRunner:
    """Wav2Lip as two sessions: the face encoder (run once per template frame, its output
    cached with the template: heygem.generators.face_features) and the rest. ``run``
    runs both, so it stands in for the whole graph anywhere."""

    def __init__(
        self,
        encoder: Path,
        decoder: Path,
        device: str,
        threads: int,
        require_gpu: bool,
        *,
        optimized_dir: Path | None = None,
    ) -> None:
        self._encoder = OrtRunner(
            encoder, device, threads, require_gpu, optimized_dir=optimized_dir
        )
        self._decoder = OrtRunner(
            decoder, device, threads, require_gpu, optimized_dir=optimized_dir
        )
        self.info = self._decoder.info

    def encode(self, face: np.ndarray) -> np.ndarray:
        return self._encoder.run_inputs(face)

    def decode(self, features: np.ndarray, mel: np.ndarray) -> np.ndarray:
        return self._decoder.run_inputs(features, mel)

    def run(self, face: np.ndarray, mel: np.ndarray) -> np.ndarray:
        return self.decode(self.encode(face), mel)


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
