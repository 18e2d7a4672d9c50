"""CPU-fallback detection for ONNX Runtime: requested vs. actual providers, and why.

``get_available_providers()`` only lists what the build was compiled with; whether CUDA
really loads is known only after a session is created (``session.get_providers()``).
When it does not, ORT logs to the native stderr and silently runs on CPU, so this module
captures fd 2 and asks the dynamic loader which CUDA/cuDNN libraries it cannot find.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import logging
import os
import re
import site
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from diagnostics.findings import Finding, Severity
from diagnostics.probes.base import never_raises
from diagnostics.probes.versions import distribution_version, distributions_of
from heygem.generators.cuda_libs import (  # noqa: F401 - re-exported for the probes' users
    CUDA_PROVIDER_LIB,
    ElfDynamic,
    LddReport,
    elf_dynamic,
    find_cuda_provider_lib,
    missing_sonames,
    parse_ldd_output,
    run_ldd,
)

log = logging.getLogger(__name__)

CUDA_EP = "CUDAExecutionProvider"
CPU_EP = "CPUExecutionProvider"

# Substrings of ORT's own log lines (and Python warnings) that explain a fallback.
_ORT_EVIDENCE = (
    "Failed to load library",
    "Failed to create CUDAExecutionProvider",
    "cannot open shared object file",
    "not in available provider names",
    "Require cuDNN",
    "CUDA driver version is insufficient",
    "no CUDA-capable device",
)

# soname prefix -> the pip wheel family that ships it (suffix -cu11 / -cu12).
_PIP_PACKAGE = {
    "libcudart": "nvidia-cuda-runtime",
    "libcublasLt": "nvidia-cublas",
    "libcublas": "nvidia-cublas",
    "libcudnn": "nvidia-cudnn",
    "libcufft": "nvidia-cufft",
    "libcurand": "nvidia-curand",
    "libnvrtc": "nvidia-cuda-nvrtc",
}

VERSION_FACTS = (
    "PyPI onnxruntime-gpu 1.16.x-1.18.x are CUDA 11.8 + cuDNN 8 builds, >= 1.19 are "
    "CUDA 12 + cuDNN 9; PyPI torch 2.1.2 ships CUDA 12.1 + cuDNN 8.9, torch 2.4.1 ships "
    "CUDA 12.1 + cuDNN 9.1"
)


# --- the session check (reusable by the pipeline) -----------------------------------
def provider_name(provider: str | tuple[str, Mapping[str, Any]]) -> str:
    """ORT accepts 'Name' or ('Name', {options}); compare by name."""
    return provider if isinstance(provider, str) else provider[0]


def check_session_providers(
    session: Any,
    requested: Sequence[str | tuple[str, Mapping[str, Any]]],
    *,
    log_lines: Iterable[str] = (),
) -> Finding:
    """Compare the providers a live session really uses with the ones requested.

    FAIL when the first (preferred) provider is not in use: that is ORT's silent CPU
    fallback. WARN when only a lower-priority provider is missing. Never raises.
    """
    title = "ONNX Runtime session providers (requested vs. actual)"
    try:
        wanted = [provider_name(p) for p in requested]
        actual = list(session.get_providers())
    except Exception as exc:  # noqa: BLE001 - a check must never raise
        return Finding(
            "ort-session-providers",
            Severity.WARN,
            title,
            [f"could not read session providers: {type(exc).__name__}: {exc}"],
        )
    evidence = [f"requested: {wanted}", f"session.get_providers(): {actual}"]
    evidence += [f"ORT: {line}" for line in ort_evidence_lines(log_lines)]
    missing = [p for p in wanted if p not in actual]
    if not missing:
        return Finding("ort-session-providers", Severity.OK, title, evidence)
    evidence.append(f"not in use: {missing}")
    fix = (
        f"The session is running on {actual[0] if actual else 'nothing'}, not {missing[0]}. "
        "Run `heygem-diagnose env` (probe ort-cuda) to see which CUDA/cuDNN libraries the "
        "loader cannot find, or request only the providers you accept so a fallback "
        "cannot be silent."
    )
    status = Severity.FAIL if wanted and wanted[0] in missing else Severity.WARN
    return Finding("ort-session-providers", status, title, evidence, fix)


def ort_evidence_lines(lines: Iterable[str]) -> list[str]:
    """The lines of ORT's output that explain a provider failure, deduplicated."""
    seen: dict[str, None] = {}
    for line in lines:
        if any(marker in line for marker in _ORT_EVIDENCE):
            seen.setdefault(line.strip()[:400], None)
    return list(seen)


@contextlib.contextmanager
def capture_native_stderr() -> Iterator[list[str]]:
    """Capture everything written to file descriptor 2 (C++ logs included).

    ORT's default logger writes to std::cerr, which Python's sys.stderr never sees.
    The list yielded is filled when the block exits. Affects the whole process while
    active, so keep the block short.
    """
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield lines
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read().decode(errors="replace").splitlines())


def tiny_identity_model() -> bytes:
    """An in-memory ONNX model (Identity, IR 8, opset 17) every ORT >= 1.14 can load."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return bytes(model.SerializeToString())


def session_with_evidence(
    ort: Any, providers: Sequence[str], model: bytes | None = None
) -> tuple[Any | None, list[str]]:
    """Create a session; return it with ORT's native log lines and Python warnings.

    On failure the session is None and the last line says why (the log lines that explain
    it are kept either way).
    """
    session, error = None, None
    with capture_native_stderr() as native, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            session = ort.InferenceSession(
                model or tiny_identity_model(), providers=list(providers)
            )
        except Exception as exc:  # noqa: BLE001 - the failure is the evidence
            error = f"InferenceSession failed: {type(exc).__name__}: {exc}"
    lines = native + [str(w.message) for w in caught]
    return session, lines + ([error] if error else [])


def cuda_majors(sonames: Iterable[str]) -> tuple[int | None, int | None]:
    """(CUDA major, cuDNN major) implied by sonames like libcudart.so.11.0, libcudnn.so.8."""
    cuda = cudnn = None
    for name in sonames:
        if m := re.match(r"lib(?:cudart|cublas|cublasLt)\.so\.(\d+)", name):
            cuda = cuda or int(m.group(1))
        elif m := re.match(r"libcudnn\.so\.(\d+)", name):
            cudnn = cudnn or int(m.group(1))
    return cuda, cudnn


def pip_wheel_for(soname: str, cuda_major: int | None) -> str | None:
    stem = soname.split(".so", 1)[0]
    family = _PIP_PACKAGE.get(stem)
    if family is None or cuda_major is None:
        return None
    return f"{family}-cu{cuda_major}"


def pip_nvidia_copies(sonames: Iterable[str]) -> dict[str, Path]:
    """Sonames present in site-packages/nvidia/*/lib (pip CUDA wheels) but maybe off-path."""
    roots = {Path(p) for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]}
    found: dict[str, Path] = {}
    for root in roots:
        for name in sonames:
            for hit in (root / "nvidia").glob(f"*/lib/{name}"):
                found.setdefault(name, hit)
    return found


def missing_libs_fix(
    missing: Sequence[str],
    needed: Sequence[str],
    ort_version: str | None,
    off_path: Mapping[str, Path],
) -> str:
    """Name the missing libraries, the majors this build needs and the two ways out."""
    cuda, cudnn = cuda_majors([*needed, *missing])
    wheels = sorted({w for s in missing if (w := pip_wheel_for(s, cuda)) is not None})
    wheels = [f"'{w}=={cudnn}.*'" if w.startswith("nvidia-cudnn") and cudnn else w for w in wheels]
    install = (
        f"pip install {' '.join(wheels)} and add their site-packages/nvidia/*/lib dirs to "
        "LD_LIBRARY_PATH before Python starts"
        if wheels
        else "install the CUDA/cuDNN runtime and add it to LD_LIBRARY_PATH before start"
    )
    text = (
        f"onnxruntime-gpu {ort_version or '?'} is a CUDA {cuda or '?'} + cuDNN {cudnn or '?'} "
        f"build and the loader cannot find {', '.join(missing)}. Either make those majors "
        f"loadable ({install}), or install the onnxruntime-gpu build whose CUDA/cuDNN majors "
        f"match what you have (e.g. what torch brings). Facts: {VERSION_FACTS}."
    )
    if off_path:
        where = "; ".join(f"{k} in {v.parent}" for k, v in sorted(off_path.items()))
        text += (
            f" Present but not on the loader path: {where}: export those dirs in "
            "LD_LIBRARY_PATH before start, `import torch` before onnxruntime when the majors "
            "match (torch preloads its copies), or call onnxruntime.preload_dlls() "
            "(onnxruntime-gpu >= 1.21)."
        )
    return text


def diagnose_cuda_provider(ort: Any, package_dir: Path, ort_version: str | None) -> Finding:
    """Ask for CUDA for real; on fallback, name the libraries the loader cannot find."""
    title = "ONNX Runtime CUDA provider actually loads"
    requested = [CUDA_EP, CPU_EP]
    session, lines = session_with_evidence(ort, requested)
    if session is None:  # some builds raise instead of falling back
        check = Finding(
            "ort-session-providers", Severity.FAIL, title, [f"ORT: {line}" for line in lines[-5:]]
        )
    else:
        check = check_session_providers(session, requested, log_lines=lines)
    if check.severity is Severity.OK:
        return dataclasses.replace(check, id="ort-cuda", title=title)
    evidence = list(check.evidence)
    lib = find_cuda_provider_lib(package_dir)
    if lib is None:
        evidence.append(f"no {CUDA_PROVIDER_LIB} under {package_dir}")
        return Finding(
            "ort-cuda",
            Severity.FAIL,
            title,
            evidence,
            "This onnxruntime has no CUDA provider library: a CPU 'onnxruntime' install "
            "probably overwrote onnxruntime-gpu's files. pip uninstall -y onnxruntime "
            "onnxruntime-gpu, then pip install onnxruntime-gpu only.",
        )
    needed = elf_dynamic(lib).needed
    missing = missing_sonames(lib)
    evidence.append(f"{lib.name} needs: {', '.join(needed)}")
    if not missing:
        evidence.append("every library it needs resolves (ldd)")
        return Finding(
            "ort-cuda",
            Severity.FAIL,
            title,
            evidence,
            "The libraries load, so CUDA failed at run time: check the driver (nvidia-smi), "
            "that the container has the GPU (--gpus all / NVIDIA_VISIBLE_DEVICES), and the "
            "ORT lines above.",
        )
    evidence.append(f"the loader cannot find: {', '.join(missing)}")
    off_path = pip_nvidia_copies(missing)
    return Finding(
        "ort-cuda",
        Severity.FAIL,
        title,
        evidence,
        missing_libs_fix(missing, needed, ort_version, off_path),
    )


@never_raises("ort-cuda", "ONNX Runtime CUDA provider actually loads")
def probe_ort_cuda() -> Finding:
    title = "ONNX Runtime CUDA provider actually loads"
    dists = distributions_of("onnxruntime")
    if not dists:
        return Finding("ort-cuda", Severity.INFO, title, ["onnxruntime is not installed"])
    import onnxruntime as ort

    available = list(ort.get_available_providers())
    version = distribution_version("onnxruntime")
    evidence = [
        f"distribution(s): {', '.join(dists)} {version}",
        f"available providers (build-time list only): {available}",
    ]
    if "onnxruntime-gpu" not in dists and CUDA_EP not in available:
        return Finding(
            "ort-cuda",
            Severity.INFO,
            title,
            evidence + ["CPU-only onnxruntime build: CUDA is not expected"],
            None,
        )
    result = diagnose_cuda_provider(ort, Path(ort.__file__).parent, version)
    return dataclasses.replace(result, evidence=[*evidence, *result.evidence])


# --- torch vs. ORT CUDA majors ------------------------------------------------------
def cudnn_major(version: int | None) -> int | None:
    """torch reports cuDNN as 8902 (8.9.2) or 90100 (9.1.0)."""
    if not version:
        return None
    return version // 10000 if version >= 10000 else version // 1000


def compare_cuda_builds(
    torch_cuda: str | None, torch_cudnn: int | None, ort_cuda: int | None, ort_cudnn: int | None
) -> tuple[Severity, list[str], str | None]:
    torch_major = int(torch_cuda.split(".")[0]) if torch_cuda else None
    evidence = [
        f"torch: CUDA {torch_cuda}, cuDNN major {torch_cudnn}",
        f"onnxruntime: CUDA major {ort_cuda}, cuDNN major {ort_cudnn}",
    ]
    if torch_major is None or ort_cuda is None:
        return (
            Severity.INFO,
            evidence + ["at least one side is a CPU build: nothing to match"],
            None,
        )
    clashes = []
    if torch_major != ort_cuda:
        clashes.append(f"CUDA {torch_major} (torch) vs {ort_cuda} (onnxruntime)")
    if torch_cudnn and ort_cudnn and torch_cudnn != ort_cudnn:
        clashes.append(f"cuDNN {torch_cudnn} (torch) vs {ort_cudnn} (onnxruntime)")
    if not clashes:
        return Severity.OK, evidence, None
    return (
        Severity.WARN,
        evidence + [f"different majors: {c}" for c in clashes],
        "torch's pip wheels bring only their own CUDA/cuDNN majors, so onnxruntime-gpu "
        "finds nothing to load and silently runs on CPU unless the other majors are also "
        f"installed. Pick an onnxruntime-gpu build matching torch. Facts: {VERSION_FACTS}.",
    )


def _ort_cuda_majors() -> tuple[int | None, int | None, str]:
    try:
        info: Any = importlib.import_module("onnxruntime.capi.build_and_package_info")
    except ImportError:  # not shipped by e.g. the 1.18.0 wheels: read the provider library
        info = None

    cuda_v, cudnn_v = getattr(info, "cuda_version", None), getattr(info, "cudnn_version", None)
    if cuda_v:
        cudnn = int(str(cudnn_v).split(".")[0]) if cudnn_v else None
        return int(str(cuda_v).split(".")[0]), cudnn, "build_and_package_info"
    import onnxruntime as ort

    lib = find_cuda_provider_lib(Path(ort.__file__).parent)
    if lib is None:
        return None, None, "no CUDA provider library (CPU build)"
    cuda, cudnn = cuda_majors(elf_dynamic(lib).needed)
    return cuda, cudnn, f"DT_NEEDED of {lib.name}"


@never_raises("cuda-consistency", "torch and onnxruntime CUDA/cuDNN majors")
def probe_cuda_consistency() -> Finding:
    title = "torch and onnxruntime CUDA/cuDNN majors"
    if distribution_version("torch") is None or distribution_version("onnxruntime") is None:
        return Finding(
            "cuda-consistency",
            Severity.INFO,
            title,
            ["torch or onnxruntime not installed: nothing to compare"],
        )
    import torch

    torch_cudnn = cudnn_major(torch.backends.cudnn.version()) if torch.version.cuda else None
    ort_cuda, ort_cudnn, source = _ort_cuda_majors()
    status, evidence, fix = compare_cuda_builds(
        torch.version.cuda, torch_cudnn, ort_cuda, ort_cudnn
    )
    return Finding(
        "cuda-consistency", status, title, evidence + [f"onnxruntime majors from {source}"], fix
    )
