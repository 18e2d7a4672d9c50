"""What counts as a GPU provider, and what a CPU fallback is: defined once.

The pipeline's result, the diagnostics probe, the service's metrics and the version
matrix all decide "the GPU fell back to CPU" with these two functions. Providers are
named as ONNX Runtime names its execution providers, and as torch names its devices.
"""

from __future__ import annotations

from collections.abc import Iterable

GPU_PROVIDERS = frozenset(
    {
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
        "DmlExecutionProvider",
        "cuda",  # torch device types
        "hip",
    }
)


def uses_gpu(providers: Iterable[str]) -> bool:
    return any(p in GPU_PROVIDERS for p in providers)


def is_cpu_fallback(requested: Iterable[str], used: Iterable[str]) -> bool:
    """A GPU provider was requested, the live session reports providers, none is a GPU."""
    used = tuple(used)
    return uses_gpu(requested) and bool(used) and not uses_gpu(used)
