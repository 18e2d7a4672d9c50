"""The environment doctor (`heygem-diagnose env`).

Styled after torch's ``collect_env``: collecting is separate from formatting, and no probe
ever raises. Each probe returns a ``Finding`` (ok / warn / fail / info, evidence,
fix); ``run_doctor`` gathers them into a ``Report`` (rendered by
``diagnostics.findings``). Heavy libraries (torch,
onnxruntime, pynvml) are imported inside the probes that need them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

from diagnostics.findings import Finding, Report
from diagnostics.probes.base import fmt_bytes, never_raises
from diagnostics.probes.gpu import probe_gpu
from diagnostics.probes.landmarks import probe_landmarks
from diagnostics.probes.media import probe_av_codecs
from diagnostics.probes.multiproc import probe_start_method, probe_thread_env
from diagnostics.probes.ort_cuda import (
    check_session_providers,
    probe_cuda_consistency,
    probe_ort_cuda,
)
from diagnostics.probes.system import (
    SHM_SAFETY_FACTOR,
    dataloader_shm_need_bytes,
    probe_container,
    probe_cpus,
    probe_ld_library_path,
    probe_memory,
    probe_shm,
)
from diagnostics.probes.versions import numpy_ort_incompatible, probe_numpy_abi, probe_versions
from heygem.errors import InvalidOption

__all__ = [
    "DoctorConfig",
    "Finding",
    "check_session_providers",
    "dataloader_shm_need_bytes",
    "numpy_ort_incompatible",
    "run_doctor",
]

log = logging.getLogger(__name__)

DOCTOR_TITLE = "heygem environment doctor"

_MIB = 1 << 20


@dataclass(frozen=True)
class DoctorConfig:
    """The workload the doctor checks the machine against.

    Defaults model a HeyGem-like generation batch: 4 samples, each a 512x512x3 uint8 face
    crop twice (the masked crop and the unmasked reference: the 6-channel generator
    input) plus one 80x16 float32 mel window, loaded by 4 DataLoader workers.
    """

    batch_size: int = 4
    face_size: int = 512
    face_channels: int = 3
    faces_per_sample: int = 2
    mel_bins: int = 80
    mel_steps: int = 16
    num_workers: int = 4
    prefetch_factor: int = 2
    # Resident memory of the main process (torch + ORT + models + codec buffers) and of
    # each spawned DataLoader worker (re-imports torch): rough, measured-order figures.
    main_process_bytes: int = 2048 * _MIB
    worker_process_bytes: int = 512 * _MIB
    child_timeout_s: float = 20.0
    shm_path: str = "/dev/shm"

    def __post_init__(self) -> None:
        positive = ("batch_size", "face_size", "face_channels", "prefetch_factor")
        bad = [n for n in positive if getattr(self, n) < 1]
        bad += [
            n
            for n in (
                "faces_per_sample",
                "mel_bins",
                "mel_steps",
                "num_workers",
                "main_process_bytes",
                "worker_process_bytes",
            )
            if getattr(self, n) < 0
        ]
        if self.child_timeout_s <= 0:
            bad.append("child_timeout_s")
        if bad:
            raise InvalidOption(
                f"DoctorConfig: invalid {', '.join(bad)}",
                hint="sizes and counts must be >= 0 (>= 1 for batch/face/"
                "prefetch), the timeout > 0",
            )

    @property
    def sample_bytes(self) -> int:
        face = self.face_size * self.face_size * self.face_channels  # uint8
        return self.faces_per_sample * face + self.mel_bins * self.mel_steps * 4  # float32

    @property
    def shm_need_bytes(self) -> int:
        return dataloader_shm_need_bytes(
            self.batch_size, self.sample_bytes, self.num_workers, self.prefetch_factor
        )

    @property
    def memory_need_bytes(self) -> int:
        return (
            self.main_process_bytes
            + self.num_workers * self.worker_process_bytes
            + self.shm_need_bytes
        )

    def shm_detail(self) -> str:
        return (
            f"({self.num_workers} workers x prefetch {self.prefetch_factor} + 1) batches x "
            f"{self.batch_size} samples x {fmt_bytes(self.sample_bytes)} x safety "
            f"{SHM_SAFETY_FACTOR:g}"
        )

    def memory_detail(self) -> str:
        return (
            f"main {fmt_bytes(self.main_process_bytes)} + {self.num_workers} workers x "
            f"{fmt_bytes(self.worker_process_bytes)} + shm {fmt_bytes(self.shm_need_bytes)}"
        )


Probe = Callable[[DoctorConfig], Finding]

# Order matters once: start-method must run before thread-env, whose spawn child would
# otherwise fix the process's start method before it is read.
PROBES: dict[str, Probe] = {
    "versions": lambda c: probe_versions(),
    "numpy-abi": lambda c: probe_numpy_abi(),
    "ort-cuda": lambda c: probe_ort_cuda(),
    "cuda-consistency": lambda c: probe_cuda_consistency(),
    "gpu": lambda c: probe_gpu(),
    "start-method": lambda c: probe_start_method(),
    "thread-env": lambda c: probe_thread_env(c.child_timeout_s),
    "shm": lambda c: probe_shm(c.shm_need_bytes, c.shm_detail(), c.shm_path),
    "cpus": lambda c: probe_cpus(),
    "cgroup-memory": lambda c: probe_memory(c.memory_need_bytes, c.memory_detail()),
    "av-codecs": lambda c: probe_av_codecs(),
    "landmarks": lambda c: probe_landmarks(),
    "container": lambda c: probe_container(),
    "ld-library-path": lambda c: probe_ld_library_path(),
}


def run_doctor(
    config: DoctorConfig | None = None, *, only: Collection[str] | None = None
) -> Report:
    """Run every probe (or those named in ``only``) and collect the results."""
    config = config or DoctorConfig()
    unknown = sorted(set(only or ()) - PROBES.keys())
    if unknown:
        raise InvalidOption(
            f"unknown probe(s): {', '.join(unknown)}", hint=f"choose from {', '.join(PROBES)}"
        )
    results = []
    for probe_id, probe in PROBES.items():
        if only is not None and probe_id not in only:
            continue
        started = time.perf_counter()
        result = never_raises(probe_id, probe_id)(probe)(config)
        log.debug("probe %s: %s in %.2fs", probe_id, result.severity, time.perf_counter() - started)
        results.append(result)
    return Report("env", DOCTOR_TITLE, tuple(results))
