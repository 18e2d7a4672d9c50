"""Fix advice derived from what the log quotes, not fixed prose.

onnxruntime says what its CUDA provider needs ("Require cuDNN 9.* and CUDA 12.*") and which
library the loader could not find ("libcublasLt.so.11: cannot open shared object file");
the advice names exactly those versions. A soname's major version maps to the CUDA or cuDNN
release it belongs to (cuBLAS/cudart N = CUDA N; cuFFT 10 = CUDA 11, 11 = CUDA 12).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = [
    "FIX_CONSUMER_DEAD",
    "FIX_HUNG",
    "FIX_STOPPED",
    "CudaNeeds",
    "cpu_fallback_fix",
    "cpu_fix",
    "cuda_needs",
]

_REQUIRE = re.compile(r"Require cuDNN (\d+)\.\*? and CUDA (\d+)\.\*?", re.I)
_LIBRARY = r"(?:lib[\w+\-]+\.so(?:\.\d+)*|[\w+\-]+\.dll)"
_MISSING = re.compile(
    rf"({_LIBRARY})\s*:\s*cannot open shared object file"
    rf"|(?:error loading|could not load|cannot load)\s+(?:library\s+)?({_LIBRARY})",
    re.I,
)
_CUDNN = re.compile(r"^(?:libcudnn(?:_\w+)?\.so\.(\d+)|cudnn(?:_\w+)?64_(\d+)\.dll)$", re.I)
_CUDA = re.compile(
    r"^(?:lib(?:cublas|cublasLt|cudart)\.so\.(\d+)|(?:cublas|cublasLt)64_(\d+)\.dll)$"
)
_CUDART_DLL = re.compile(r"^cudart64_(\d\d)\d*\.dll$", re.I)
_CUFFT = re.compile(r"^libcufft\.so\.(\d+)$")
_CUFFT_TO_CUDA = {"10": "11", "11": "12"}
_TENSORRT = re.compile(r"^libnvinfer(?:_\w+)?\.so\.(\d+)$")
# "Specified provider 'CUDAExecutionProvider' is not in available provider names.Available
# providers: 'AzureExecutionProvider, CPUExecutionProvider'": a CPU-only onnxruntime.
_AVAILABLE = re.compile(r"Available providers:\s*(.*)", re.I)


@dataclass(frozen=True)
class CudaNeeds:
    """What the log says the CUDA provider needs."""

    cuda: tuple[str, ...] = ()  # major versions, e.g. ("12",)
    cudnn: tuple[str, ...] = ()
    tensorrt: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()  # libraries the dynamic loader could not find
    cpu_build: bool = False  # the installed onnxruntime has no CUDA provider at all

    @property
    def known(self) -> bool:
        return bool(self.cuda or self.cudnn)


def cuda_needs(texts: Iterable[str]) -> CudaNeeds:
    texts = list(texts)
    cuda: list[str] = []
    cudnn: list[str] = []
    tensorrt: list[str] = []
    missing: list[str] = []
    for text in texts:
        for match in _REQUIRE.finditer(text):
            _add(cudnn, match[1])
            _add(cuda, match[2])
        for match in _MISSING.finditer(text):
            name = match[1] or match[2]
            _add(missing, name)
            if soname := _CUDNN.match(name):
                _add(cudnn, soname[1] or soname[2])
            elif soname := _CUDA.match(name):
                _add(cuda, soname[1] or soname[2])
            elif soname := _CUDART_DLL.match(name):
                _add(cuda, soname[1].lstrip("0") or "0")
            elif (soname := _CUFFT.match(name)) and soname[1] in _CUFFT_TO_CUDA:
                _add(cuda, _CUFFT_TO_CUDA[soname[1]])
            elif soname := _TENSORRT.match(name):
                _add(tensorrt, soname[1])
    cpu_build = any(
        (m := _AVAILABLE.search(text)) is not None and "CUDAExecutionProvider" not in m[1]
        for text in texts
    )
    return CudaNeeds(tuple(cuda), tuple(cudnn), tuple(tensorrt), tuple(missing), cpu_build)


def _add(values: list[str], value: str) -> None:
    if value not in values:
        values.append(value)


def cpu_fallback_fix(needs: CudaNeeds) -> str:
    """What to install, from the versions the log names."""
    check = (
        " Then check that a live session lists CUDAExecutionProvider first "
        "(`session.get_providers()`; `get_available_providers()` proves nothing), and run "
        "`heygem-diagnose env` where the service runs: it shows which CUDA libraries load."
    )
    if needs.cpu_build and not needs.known:
        return (
            "The installed onnxruntime has no CUDA provider at all (its available providers "
            "lack CUDAExecutionProvider): it is the CPU-only `onnxruntime` package. Install "
            "`onnxruntime-gpu` instead (`pip uninstall -y onnxruntime && pip install "
            "onnxruntime-gpu`; the two packages shadow each other), matching the machine's "
            "CUDA." + check
        )
    if not needs.known:
        missing = (
            f" (the loader could not find {', '.join(needs.missing)})" if needs.missing else ""
        )
        return (
            f"onnxruntime could not use CUDA{missing}, and the log does not say which CUDA/cuDNN "
            "its build needs: run `heygem-diagnose env` where the service runs, it lists the "
            "libraries onnxruntime-gpu needs and whether the dynamic loader finds them; install "
            "those (or the onnxruntime-gpu build made for the CUDA you have)." + check
        )
    parts = []
    if needs.cuda:
        parts.append(" or ".join(f"CUDA {v}.x" for v in needs.cuda))
    if needs.cudnn:
        parts.append(" or ".join(f"cuDNN {v}.x" for v in needs.cudnn))
    needed = " and ".join(parts)
    unknown = ""
    if not needs.cuda:
        unknown = " (the log does not say which CUDA)"
    elif not needs.cudnn:
        unknown = " (the log does not say which cuDNN)"
    missing = f"; the loader could not find {', '.join(needs.missing)}" if needs.missing else ""
    packages = _pip_packages(needs)
    install = (
        f"install them into the service's environment (`pip install {packages}`) and add their "
        "lib directories to LD_LIBRARY_PATH, or build the image on a matching CUDA base image"
    )
    if needs.cuda and needs.cudnn:
        install += f" (CUDA {needs.cuda[0]} + cuDNN {needs.cudnn[0]})"
    return (
        f"This onnxruntime-gpu build needs {needed}{unknown}, as onnxruntime says{missing}. "
        f"Make exactly those visible to the service: {install}; or install the onnxruntime-gpu "
        "build made for the CUDA/cuDNN the machine has." + check
    )


def _pip_packages(needs: CudaNeeds) -> str:
    packages = []
    for cuda in needs.cuda or ("<your CUDA major>",):
        if needs.cuda:
            packages += [f"nvidia-cuda-runtime-cu{cuda}", f"nvidia-cublas-cu{cuda}"]
        packages += [f"'nvidia-cudnn-cu{cuda}=={cudnn}.*'" for cudnn in needs.cudnn]
    return " ".join(packages)


def cpu_fix(provider_texts: Sequence[str]) -> str:
    """Advice for slow (CPU-like) inference: from onnxruntime's words when the log has them."""
    if provider_texts:
        return cpu_fallback_fix(cuda_needs(provider_texts))
    return (
        "Check that inference runs on the GPU: `heygem-diagnose env` shows the providers a "
        "live onnxruntime session uses and whether the CUDA/cuDNN libraries load; watch "
        "`nvidia-smi` during a task. Several tasks sharing one GPU also slow each one down."
    )


FIX_CONSUMER_DEAD = (
    "Check that the consumer (HeyGem's audio_transfer process, or DataLoader workers) is "
    "alive: `heygem-diagnose ps --pid <service pid>`; a missing or `<defunct>` child died "
    "(look for 'Killed', SIGBUS/-7, SIGSEGV before the first send). In Docker give the "
    "container shared memory: `docker run --shm-size=2g` (compose: `shm_size: '2g'`); the "
    "64 MB default kills DataLoader workers with SIGBUS. Confirm with DataLoader "
    "`num_workers=0` (HeyGem `num_threads` 0). Check that onnxruntime-gpu finds its "
    "CUDA/cuDNN libraries (`heygem-diagnose env`): a consumer stuck creating its CUDA session "
    "never takes its first item. Restart the service before retrying: the blocked producer "
    "keeps later tasks stuck too."
)
FIX_STOPPED = (
    "The consumer worked and then stopped: read the log around its last batch for a "
    "traceback, 'Killed' or 'Segmentation fault'; `heygem-diagnose ps --pid <service pid>` "
    "shows whether the process is gone, `<defunct>` or stuck; `dmesg | grep -i -E 'killed "
    "process|out of memory'` shows the OOM killer. In Docker raise shared memory "
    "(`--shm-size=2g`) and memory limits, then restart the service: HeyGem does not recover "
    "the stuck task."
)
FIX_HUNG = (
    "The service is probably hung: `heygem-diagnose ps --pid <service pid>` shows stuck or "
    "`<defunct>` children; look for 'Killed' / OOM around the task's last line (`dmesg | grep "
    "-i -E 'killed process|out of memory'`). Restart the service: HeyGem does not time out a "
    "stuck task, and later tasks queue behind it."
)
