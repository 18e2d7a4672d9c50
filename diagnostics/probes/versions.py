"""Library versions and the binary-compatibility rules between them."""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import platform
import sys
from collections.abc import Mapping
from types import ModuleType

from diagnostics.findings import Finding, Severity
from diagnostics.probes.base import never_raises, version_lt

log = logging.getLogger(__name__)

# First releases built against the numpy-2 ABI. Older builds fail to import under numpy 2
# ("_ARRAY_API not found", "compiled using NumPy 1.x cannot be run in NumPy 2").
NUMPY2_FIRST_COMPATIBLE = {"onnxruntime": "1.19", "torch": "2.3"}

# import name -> whether the pipeline cannot run without it
_LIBRARIES = {
    "numpy": True,
    "torch": False,
    "onnxruntime": True,
    "cv2": True,
    "librosa": True,
    "av": True,
}


def distributions_of(import_name: str) -> list[str]:
    """Installed distributions providing a top-level package (e.g. onnxruntime-gpu)."""
    names = md.packages_distributions().get(import_name, [])
    return sorted({n.lower().replace("_", "-") for n in names})


def distribution_version(import_name: str) -> str | None:
    """Version from metadata, without importing (works even when the import is broken)."""
    for dist in distributions_of(import_name):
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            continue
    return None


def numpy2_conflicts(numpy_version: str | None, versions: Mapping[str, str | None]) -> list[str]:
    """Libraries in ``versions`` that are too old for the installed numpy 2.x."""
    if numpy_version is None or version_lt(numpy_version, "2"):
        return []
    return [
        f"{name} {ver} (numpy-2 builds start at {NUMPY2_FIRST_COMPATIBLE[name]})"
        for name, ver in versions.items()
        if ver is not None
        and name in NUMPY2_FIRST_COMPATIBLE
        and version_lt(ver, NUMPY2_FIRST_COMPATIBLE[name])
    ]


def numpy_ort_incompatible(numpy_version: str, ort_version: str) -> bool:
    """numpy >= 2 with onnxruntime < 1.19: the ORT extension cannot load."""
    return bool(numpy2_conflicts(numpy_version, {"onnxruntime": ort_version}))


@never_raises("numpy-abi", "numpy 2 vs. libraries built for numpy 1")
def probe_numpy_abi() -> Finding:
    numpy_version = distribution_version("numpy")
    others = {name: distribution_version(name) for name in NUMPY2_FIRST_COMPATIBLE}
    evidence = [f"numpy {numpy_version}"] + [f"{k} {v}" for k, v in others.items()]
    if numpy_version is None:
        return Finding(
            "numpy-abi",
            Severity.INFO,
            "numpy 2 vs. libraries built for numpy 1",
            evidence + ["numpy is not installed; rule not applicable"],
        )
    conflicts = numpy2_conflicts(numpy_version, others)
    if not conflicts:
        return Finding(
            "numpy-abi", Severity.OK, "numpy 2 vs. libraries built for numpy 1", evidence
        )
    return Finding(
        "numpy-abi",
        Severity.FAIL,
        "numpy 2 vs. libraries built for numpy 1",
        evidence + [f"built for numpy 1.x: {c}" for c in conflicts],
        "Install 'numpy<2' (onnxruntime 1.16/1.18 and torch 2.1/2.2 wheels were compiled "
        "against numpy 1.x), or upgrade to onnxruntime>=1.19 / torch>=2.3.",
    )


def _import(name: str) -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module(name), None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # noqa: BLE001 - a broken import is evidence, not a crash
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]


def _describe(name: str, module: ModuleType) -> str:
    version = getattr(module, "__version__", "?")
    if name == "torch":
        cudnn = module.backends.cudnn.version() if module.backends.cudnn.is_available() else None
        return f"torch {version} (CUDA build: {module.version.cuda}, cuDNN: {cudnn})"
    if name == "onnxruntime":
        providers = ", ".join(module.get_available_providers())
        return f"onnxruntime {version} (available providers: {providers})"
    if name == "cv2":
        return f"opencv {version}"
    if name == "av":
        libs = getattr(module, "library_versions", {})
        ffmpeg = getattr(module, "ffmpeg_version_info", "?")
        libs_text = ", ".join(f"{k} {'.'.join(map(str, v))}" for k, v in sorted(libs.items()))
        return f"av {version} (FFmpeg {ffmpeg}: {libs_text})"
    return f"{name} {version}"


@never_raises("versions", "Library versions")
def probe_versions() -> Finding:
    evidence = [
        f"python {platform.python_version()} ({platform.python_implementation()}) "
        f"at {sys.executable}",
        f"platform {platform.platform()}",
    ]
    broken: list[str] = []
    duplicated: list[str] = []
    for name, required in _LIBRARIES.items():
        dists = distributions_of(name)
        if len(dists) > 1:
            duplicated.append(f"{name}: {', '.join(dists)}")
        module, error = _import(name)
        source = f" [distribution: {', '.join(dists)}]" if dists else ""
        if module is not None:
            evidence.append(_describe(name, module) + source)
        elif not dists:
            evidence.append(f"{name}: not installed")
            if required:
                broken.append(f"{name} is not installed")
        else:
            evidence.append(f"{name} {distribution_version(name)}{source}: import fails: {error}")
            broken.append(f"{name} does not import ({error})")
    if duplicated:
        evidence += [f"several distributions own one package: {d}" for d in duplicated]
    if broken:
        return Finding(
            "versions",
            Severity.FAIL,
            "Library versions",
            evidence,
            "Fix the imports listed: " + "; ".join(broken),
        )
    if duplicated:
        return Finding(
            "versions",
            Severity.WARN,
            "Library versions",
            evidence,
            "Uninstall all but one of the distributions sharing a package directory "
            "(e.g. pip uninstall onnxruntime onnxruntime-gpu, then install only the one "
            "you want): the last one installed silently overwrote the other's files.",
        )
    return Finding("versions", Severity.INFO, "Library versions", evidence)


def installed_versions(distributions: Mapping[str, tuple[str, ...]]) -> dict[str, str | None]:
    """Versions from package metadata (no imports: a broken build still shows).

    ``distributions`` maps a name to the distributions that provide it, first match
    wins; ``<name>_distribution`` notes which one when it is not the plain name (e.g.
    onnxruntime-gpu providing onnxruntime).
    """
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name, dists in distributions.items():
        versions[name] = None
        for dist in dists:
            try:
                versions[name] = md.version(dist)
            except md.PackageNotFoundError:
                continue
            if dist != name:
                versions[f"{name}_distribution"] = dist
            break
    return versions
