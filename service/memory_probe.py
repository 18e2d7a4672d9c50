"""Measure a service worker's memory across jobs: ``python -m service.memory_probe``.

Runs the worker's own code path (warm pipelines, per-job options, the memory release
after each job) in this process, one job after another, each on a new template (as client
uploads are), and prints the resident memory (psutil) and the Python heap (tracemalloc)
after each job. ``--unbounded`` turns off what the worker does to bound its memory, to
compare. Media are generated; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.memory_probe", description=__doc__)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="speech length per job")
    parser.add_argument("--size", default="1280x720", help="template size WxH")
    parser.add_argument("--unbounded", action="store_true", help="no arena limit, no trim")
    parser.add_argument("--work-dir", type=Path, help="default: a temporary directory")
    args = parser.parse_args(argv)

    from service import worker

    worker.limit_threads(2)
    if not args.unbounded:
        worker.limit_arenas()  # before any thread exists, as in worker_main
    import psutil

    from heygem.audio.synth import synth_speech
    from heygem.config import GenerateOptions
    from heygem.demo import iter_template_frames, write_video, write_wav

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="heygem-memprobe-"))
    work.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))
    process = psutil.Process()

    def mib() -> float:
        return process.memory_info().rss / 2**20

    audio = write_wav(work / "speech.wav", synth_speech(args.seconds, seed=1))
    templates = [
        write_video(
            work / f"template-{n}.mp4",
            iter_template_frames(3.0, size=(width, height), sway=0.5 + 0.1 * n),
        )
        for n in range(args.jobs)
    ]
    pipelines = worker.WarmPipelines(worker.thread_budget(2))
    base = GenerateOptions(cache_dir=work / "cache", batch_size=16)
    pipelines.get(base).load()
    print(f"warm: rss {mib():.0f} MiB", flush=True)
    tracemalloc.start(1)
    for n, template in enumerate(templates, 1):
        started = time.perf_counter()
        pipelines.get(base).generate(audio, template, work / f"result-{n}.mp4")
        if not args.unbounded:
            worker.release_memory()
        heap = tracemalloc.get_traced_memory()[0] / 2**20
        print(
            f"job {n}: rss {mib():.0f} MiB, python heap {heap:.1f} MiB, "
            f"{time.perf_counter() - started:.1f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
