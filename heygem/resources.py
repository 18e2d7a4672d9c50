"""One place that decides how many threads each consumer gets.

torch intra-op threads, ORT intra-op threads, x264 threads and DataLoader workers
together must not oversubscribe the CPUs this process may actually use: the affinity
mask and the cgroup CPU quota (``heygem.cgroups.usable_cpus``, which the doctor reports
too), not ``os.cpu_count()`` (HeyGem's NumExpr saw 72 cores in a
container limited to a few).
"""

from __future__ import annotations

from dataclasses import dataclass

from heygem.cgroups import usable_cpus


@dataclass(frozen=True)
class ThreadBudget:
    cpus: int
    torch_threads: int
    ort_threads: int
    x264_threads: int
    decode_threads: int

    @classmethod
    def for_machine(cls, cpus: int | None = None) -> ThreadBudget:
        cpus = usable_cpus() if cpus is None else cpus
        # Decode and encode dominate a talking-head job; the model only sees mouth crops,
        # so one or two compute threads are plenty and leave the codecs their cores.
        compute = max(1, min(2, cpus // 2))
        return cls(
            cpus=cpus,
            torch_threads=compute,
            ort_threads=compute,
            x264_threads=cpus,
            decode_threads=max(1, min(4, cpus)),
        )
