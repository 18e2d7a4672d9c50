"""GPU visibility: torch CUDA and NVML (pynvml from nvidia-ml-py), both imported lazily."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from diagnostics.findings import Finding, Severity
from diagnostics.probes.base import fmt_bytes, never_raises
from diagnostics.probes.versions import distribution_version

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    memory_total: int
    memory_used: int
    utilization_percent: int | None


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    device_index: int
    used_memory: int | None  # None when the driver does not say (e.g. no permission)
    sm_percent: int | None = None


@dataclass(frozen=True)
class NvmlSnapshot:
    """What NVML reports; ``available`` False with a reason when it cannot be asked."""

    available: bool
    reason: str | None = None
    driver: str | None = None
    devices: list[GpuDevice] = field(default_factory=list)
    processes: list[GpuProcess] = field(default_factory=list)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_snapshot() -> NvmlSnapshot:
    """Devices and per-PID GPU use via NVML. Never raises.

    NVML reports host PIDs: inside a container without the host PID namespace they will
    not match the PIDs seen here.
    """
    try:
        import pynvml
    except ImportError:
        return NvmlSnapshot(False, "pynvml not installed (pip install nvidia-ml-py)")
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded...
        return NvmlSnapshot(False, f"NVML unavailable: {type(exc).__name__}: {exc}")
    try:
        return _collect(pynvml)
    except Exception as exc:  # noqa: BLE001
        return NvmlSnapshot(False, f"NVML query failed: {type(exc).__name__}: {exc}")
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            log.debug("nvmlShutdown failed", exc_info=True)


def _collect(nv: Any) -> NvmlSnapshot:
    devices, processes = [], []
    for index in range(nv.nvmlDeviceGetCount()):
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        mem = nv.nvmlDeviceGetMemoryInfo(handle)
        try:
            util: int | None = nv.nvmlDeviceGetUtilizationRates(handle).gpu
        except nv.NVMLError:
            util = None
        devices.append(
            GpuDevice(index, _text(nv.nvmlDeviceGetName(handle)), mem.total, mem.used, util)
        )
        sm = _sm_by_pid(nv, handle)
        for getter in (
            nv.nvmlDeviceGetComputeRunningProcesses,
            nv.nvmlDeviceGetGraphicsRunningProcesses,
        ):
            try:
                running = getter(handle)
            except nv.NVMLError:
                continue
            for p in running:
                used = p.usedGpuMemory if isinstance(p.usedGpuMemory, int) else None
                processes.append(GpuProcess(p.pid, index, used, sm.get(p.pid)))
    return NvmlSnapshot(True, None, _text(nv.nvmlSystemGetDriverVersion()), devices, processes)


def _sm_by_pid(nv: Any, handle: Any) -> dict[int, int]:
    try:
        return {s.pid: s.smUtil for s in nv.nvmlDeviceGetProcessUtilization(handle, 0)}
    except nv.NVMLError:
        return {}  # NOT_FOUND when no samples yet; unsupported on some boards


@never_raises("gpu", "GPU visible to torch and NVML")
def probe_gpu() -> Finding:
    title = "GPU visible to torch and NVML"
    snap = nvml_snapshot()
    evidence = [snap.reason or f"NVML driver {snap.driver}: {len(snap.devices)} GPU(s)"]
    evidence += [
        f"GPU {d.index}: {d.name}, {fmt_bytes(d.memory_used)} / "
        f"{fmt_bytes(d.memory_total)} used, utilisation {d.utilization_percent}%"
        for d in snap.devices
    ]
    torch_installed = distribution_version("torch") is not None
    torch_cuda: str | None = None
    torch_sees = 0
    if torch_installed:
        import torch

        torch_cuda = torch.version.cuda
        torch_sees = torch.cuda.device_count() if torch.cuda.is_available() else 0
        evidence.append(
            f"torch CUDA build: {torch_cuda}; torch.cuda.is_available(): "
            f"{torch_sees > 0} ({torch_sees} device(s))"
        )
    else:
        evidence.append("torch not installed")
    gpus = max(len(snap.devices), torch_sees)
    if gpus and torch_cuda and not torch_sees:
        return Finding(
            "gpu",
            Severity.FAIL,
            title,
            evidence,
            "NVML sees a GPU but torch cannot use it: the driver is older than "
            f"torch's CUDA {torch_cuda} needs; update the driver or install a "
            "torch wheel for an older CUDA.",
        )
    if gpus and torch_installed and not torch_cuda:
        return Finding(
            "gpu",
            Severity.WARN,
            title,
            evidence,
            "torch is a CPU build while a GPU is present: install a CUDA "
            "wheel (e.g. --index-url https://download.pytorch.org/whl/cu121).",
        )
    if not gpus and torch_cuda:
        return Finding(
            "gpu",
            Severity.WARN,
            title,
            evidence,
            "torch is a CUDA build but no GPU is visible: start the container "
            "with --gpus all (NVIDIA Container Toolkit) or check "
            "NVIDIA_VISIBLE_DEVICES / CUDA_VISIBLE_DEVICES.",
        )
    if not gpus:
        return Finding("gpu", Severity.INFO, title, evidence + ["no GPU: CPU-only run"])
    return Finding("gpu", Severity.OK, title, evidence)
