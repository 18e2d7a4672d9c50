"""One generation in a fresh interpreter; prints one JSON line with its memory and CPU use.

Run by the benchmarks as ``python -m benchmarks.fresh_job ...``: peak RSS is a property
of a whole process, so a job must have a process of its own to be measured.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import psutil

from heygem.config import GenerateOptions
from heygem.pipeline import Pipeline


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_kib() -> int:
    """This process's own high-water RSS in KiB.

    Not ``ru_maxrss``: Linux carries the forking parent's high-water mark across exec, so
    a job started from a 1 GB pytest process would report >= 1 GB whatever it used.
    ``VmHWM`` belongs to the address space created by exec, i.e. to this job alone.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--audio", type=Path, required=True)
    parser.add_argument("--video", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    # CPU, and a stall timeout for a busy 2-core box: a stall is not what is measured.
    base = GenerateOptions(device="cpu", stall_timeout=120.0)
    GenerateOptions.add_arguments(parser, base=base)
    args = parser.parse_args(argv)
    options = GenerateOptions.from_arguments(args, base)
    pipeline = Pipeline(options)
    pipeline.load()
    # Baseline after imports and model load: what the job itself adds is peak - this.
    rss_before = psutil.Process().memory_info().rss
    first: list[float] = []
    cpu0, start = _cpu(), time.perf_counter()
    result = pipeline.generate(
        args.audio,
        args.video,
        args.output,
        progress=lambda done, total: (
            first.append(time.perf_counter() - start) if not first else None
        ),
    )
    wall = time.perf_counter() - start
    cpu = _cpu() - cpu0
    print(
        json.dumps(
            {
                "peak_rss_mb": round(peak_rss_kib() / 1024.0, 1),
                "rss_before_job_mb": round(rss_before / (1024.0 * 1024.0), 1),
                "wall_s": round(wall, 3),
                "cpu_s": round(cpu, 3),
                "cpu_util": round(cpu / wall, 3) if wall > 0 else 0.0,
                "ttff_s": round(first[0], 3) if first else None,
                "frames": result.frames,
                "duration_s": round(result.duration, 3),
                "template_from_cache": result.template_from_cache,
                "timings": result.timings,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
