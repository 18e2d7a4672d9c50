"""Which shared libraries ONNX Runtime's CUDA provider needs, and which the loader lacks.

This is the evidence behind a silent GPU->CPU fallback: PyPI's onnxruntime-gpu 1.16/1.18
link CUDA 11 + cuDNN 8, and when those sonames are not on the loader path ORT logs a line
to native stderr and runs on CPU. The pipeline names the missing libraries in its
fallback warning; ``heygem-diagnose env`` builds its fix from the same functions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path

CUDA_PROVIDER_LIB = "libonnxruntime_providers_cuda.so"


@dataclasses.dataclass(frozen=True)
class LddReport:
    resolved: dict[str, str]
    missing: list[str]


_LDD_LINE = re.compile(r"^\s*(\S+)\s+=>\s+(.*?)\s*(?:\(0x[0-9a-f]+\))?\s*$")


def parse_ldd_output(text: str) -> LddReport:
    """Parse ``ldd`` output: 'libx.so.1 => /path (0x..)' or 'libx.so.1 => not found'."""
    resolved: dict[str, str] = {}
    missing: list[str] = []
    for line in text.splitlines():
        m = _LDD_LINE.match(line)
        if not m:
            continue  # vdso / interpreter lines have no '=>'
        soname, target = m.groups()
        if target == "not found":
            if soname not in missing:
                missing.append(soname)
        else:
            resolved[soname] = target
    return LddReport(resolved, missing)


def run_ldd(path: Path, timeout: float = 30.0) -> LddReport | None:
    """ldd's view, with this process's environment (LD_LIBRARY_PATH included)."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    proc = subprocess.run([ldd, str(path)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 and "=>" not in proc.stdout:
        raise RuntimeError(f"ldd {path} failed: {(proc.stderr or proc.stdout).strip()}")
    return parse_ldd_output(proc.stdout)


@dataclasses.dataclass(frozen=True)
class ElfDynamic:
    needed: list[str]
    runpath: list[str]


def elf_dynamic(path: Path) -> ElfDynamic:
    """DT_NEEDED and RUNPATH/RPATH of an ELF shared object, read with seeks only.

    The CUDA provider library is hundreds of MB, so nothing beyond the headers, the
    dynamic segment and the string table is read.
    """
    with open(path, "rb") as f:
        ident = f.read(16)
        if ident[:4] != b"\x7fELF":
            raise ValueError(f"{path} is not an ELF file")
        is64, end = ident[4] == 2, "<" if ident[5] == 1 else ">"
        head = f.read(48 if is64 else 36)
        header = struct.unpack(end + ("HHIQQQIHHHHHH" if is64 else "HHIIIIIHHHHHH"), head)
        phoff, phentsize, phnum = header[4], header[8], header[9]
        loads: list[tuple[int, int, int]] = []
        dynamic: tuple[int, int] | None = None
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            raw = f.read(phentsize)
            if is64:
                p_type, _, off, vaddr, _, filesz = struct.unpack(end + "IIQQQQ", raw[:40])
            else:
                p_type, off, vaddr, _, filesz = struct.unpack(end + "IIIII", raw[:20])
            if p_type == 1:  # PT_LOAD
                loads.append((vaddr, off, filesz))
            elif p_type == 2:  # PT_DYNAMIC
                dynamic = (off, filesz)
        if dynamic is None:
            return ElfDynamic([], [])
        f.seek(dynamic[0])
        raw = f.read(dynamic[1])
        fmt, size = (end + "qQ", 16) if is64 else (end + "iI", 8)
        entries = [
            struct.unpack(fmt, raw[i : i + size]) for i in range(0, len(raw) - size + 1, size)
        ]
        tags: dict[int, list[int]] = {}
        for tag, val in entries:
            if tag == 0:
                break
            tags.setdefault(tag, []).append(val)
        strtab_vaddr, strsz = tags.get(5, [0])[0], tags.get(10, [0])[0]
        strtab_off = next(
            (o + strtab_vaddr - v for v, o, n in loads if v <= strtab_vaddr < v + n), None
        )
        if strtab_off is None:
            raise ValueError(f"{path}: string table outside loadable segments")
        f.seek(strtab_off)
        strtab = f.read(strsz)

    def string(offset: int) -> str:
        return strtab[offset : strtab.index(b"\0", offset)].decode(errors="replace")

    runpath = [p for v in tags.get(29, []) + tags.get(15, []) for p in string(v).split(":") if p]
    return ElfDynamic([string(v) for v in tags.get(1, [])], runpath)


def _loader_dirs(lib: Path, runpath: Iterable[str]) -> list[Path]:
    dirs = [Path(p.replace("$ORIGIN", str(lib.parent))) for p in runpath]
    dirs += [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        cache = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10)
        dirs += [
            Path(line.rsplit("=> ", 1)[1]).parent
            for line in cache.stdout.splitlines()
            if "=> " in line
        ]
    return dirs + [
        Path(p)
        for p in (
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib",
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
        )
    ]


def missing_sonames(lib: Path) -> list[str]:
    """Sonames ``lib`` needs that the dynamic loader cannot find (ldd, else DT_NEEDED)."""
    report = run_ldd(lib)
    if report is not None:
        return report.missing
    # No ldd (e.g. a distroless image): direct dependencies only, searched like ld.so.
    dyn = elf_dynamic(lib)
    dirs = _loader_dirs(lib, dyn.runpath)
    return [name for name in dyn.needed if not any((d / name).exists() for d in dirs)]


def find_cuda_provider_lib(package_dir: Path) -> Path | None:
    hits = sorted(package_dir.rglob(CUDA_PROVIDER_LIB))
    return hits[0] if hits else None


def ort_cuda_provider_missing_libs() -> tuple[Path | None, list[str]]:
    """(CUDA provider library of the installed onnxruntime or None, sonames it lacks)."""
    import onnxruntime

    lib = find_cuda_provider_lib(Path(onnxruntime.__file__).parent)
    if lib is None:
        return None, []
    try:
        return lib, missing_sonames(lib)
    except (OSError, ValueError, RuntimeError, subprocess.SubprocessError):
        return lib, []
