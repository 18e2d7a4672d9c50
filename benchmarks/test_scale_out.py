"""Jobs per minute through the API on the celery executor: 1 worker process vs 2.

The same short job (2 s of speech on a 480x360 template, template cache warm) is
submitted ``JOBS`` times at once to an API backed by a real Redis and ``heygem worker``
processes; the figure is jobs per minute from the first submit to the last result. The
two-process run is reported as a ratio against the one-process run of the same session.
On this 2-core machine expect well under 2x: two warm pipelines share the same two cores
(each process gets one core's thread budget instead of two), so the gain is what one
process leaves idle (its serial parts: probing, face tracking, muxing, Redis round trips).
``extra_info`` says where the time goes: pipeline steps per job, the wait in the queue,
the executor's overhead (running time the pipeline did not account for: reporting,
acknowledging, the API's polling) and how busy the CPUs were.

    pytest benchmarks/test_scale_out.py --benchmark-json=bench-results/scale-out.json
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
from fastapi.testclient import TestClient

from benchmarks.support import SMOKE
from heygem.audio.synth import synth_speech
from heygem.demo import iter_template_frames, write_video, write_wav
from service.app import create_app
from service.celery_app import make_celery
from service.settings import ServiceSettings
from tests.helpers import wait_for
from tests.service.cluster import RedisServer, start_workers, stop_workers, warm_workers

JOBS = 2 if SMOKE else 8
SPEECH_SECONDS = 1.0 if SMOKE else 2.0
FINAL = ("succeeded", "failed", "cancelled")
_results: dict[str, float] = {}


@pytest.fixture(scope="module")
def scale_out(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("scale-out-bench")
    media = base / "media"
    media.mkdir()
    write_wav(media / "speech.wav", synth_speech(SPEECH_SECONDS, seed=3))
    write_video(media / "template.mp4", iter_template_frames(2.0, size=(480, 360)))
    redis = RedisServer(base / "redis")
    redis.start()
    try:
        yield {"base": base, "media": media, "redis": redis}
    finally:
        redis.stop()


def _settings(scale_out: dict[str, Any], name: str) -> ServiceSettings:
    return ServiceSettings(
        data_dir=scale_out["base"] / name,
        media_root=scale_out["media"],
        executor="celery",
        broker_url=scale_out["redis"].url,
        celery_queue=f"bench-{name}",
        max_queue=JOBS,
        pipeline={"cache_dir": scale_out["base"] / "cache", "batch_size": 16},
    )


def _run(client: TestClient, jobs: int) -> dict[str, Any]:
    """Submit ``jobs`` jobs at once; wait for all; the statuses and the wall time."""
    refs = {"audio_path": "speech.wav", "video_path": "template.mp4"}
    cpu_before = psutil.cpu_times()
    started = time.perf_counter()
    ids = [client.post("/v1/generations", data=refs).json()["id"] for _ in range(jobs)]

    def all_final() -> list[dict[str, Any]] | None:
        statuses = [client.get(f"/v1/generations/{job_id}").json() for job_id in ids]
        return statuses if all(s["state"] in FINAL for s in statuses) else None

    statuses: list[dict[str, Any]] = wait_for(all_final, timeout=600, interval=0.1)
    wall = time.perf_counter() - started
    cpu_after = psutil.cpu_times()
    busy = sum(
        getattr(cpu_after, f) - getattr(cpu_before, f)
        for f in ("user", "system", "nice", "irq", "softirq")
    )
    assert [s["state"] for s in statuses] == ["succeeded"] * jobs, statuses
    return {"statuses": statuses, "wall": wall, "cpu_busy": busy}


def _where_the_time_goes(
    run: dict[str, Any], processes: int, settings: ServiceSettings
) -> dict[str, Any]:
    """Per job: the pipeline's steps; the task around them on the worker (the start
    checks, progress reports to Redis, releasing memory); the API's lag in seeing the end
    (its follower looks every half second); the wait in the queue."""
    backend = make_celery(settings).backend
    statuses, wall = run["statuses"], run["wall"]
    steps: dict[str, list[float]] = {}
    task_overhead, api_lag = [], []
    for status in statuses:
        timings = status["timings"]
        for step, seconds in timings.items():
            steps.setdefault(step, []).append(seconds)
        task = float(backend.get_task_meta(status["id"])["result"]["task_seconds"])
        running = _seconds(status["finished_at"]) - _seconds(status["started_at"])
        task_overhead.append(task - timings.get("total", 0.0))
        api_lag.append(running - task)
    cores = psutil.cpu_count() or 1
    return {
        "jobs": len(statuses),
        "worker_processes": processes,
        "wall_seconds": round(wall, 2),
        "jobs_per_minute": round(60 * len(statuses) / wall, 2),
        "mean_step_seconds": {k: round(statistics.mean(v), 3) for k, v in steps.items()},
        "mean_task_overhead_seconds": round(statistics.mean(task_overhead), 3),
        "mean_api_lag_seconds": round(statistics.mean(api_lag), 3),
        "cpu_utilisation": round(run["cpu_busy"] / (wall * cores), 3),
        "cores": cores,
    }


def _seconds(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


def _measure(
    benchmark: Any, scale_out: dict[str, Any], name: str, machines: int, concurrency: int
) -> dict[str, Any]:
    settings = _settings(scale_out, name)
    with TestClient(create_app(settings)) as client:
        workers = start_workers(
            settings, scale_out["base"] / f"{name}-machines", machines, concurrency
        )
        try:
            warm_workers(client, machines * concurrency)
            _run(client, 1)  # template cache and every process's first job: not measured
            if machines * concurrency > 1:
                _run(client, machines * concurrency)
            run = benchmark.pedantic(lambda: _run(client, JOBS), rounds=1, iterations=1)
        finally:
            stop_workers(workers)
    info = _where_the_time_goes(run, machines * concurrency, settings)
    benchmark.extra_info.update(info)
    return info


@pytest.mark.benchmark(group="scale-out")
def test_one_worker_process(benchmark: Any, scale_out: dict[str, Any]) -> None:
    info = _measure(benchmark, scale_out, "one", machines=1, concurrency=1)
    _results["one"] = info["jobs_per_minute"]


@pytest.mark.benchmark(group="scale-out")
def test_two_worker_processes(benchmark: Any, scale_out: dict[str, Any]) -> None:
    info = _measure(benchmark, scale_out, "two", machines=1, concurrency=2)
    if "one" in _results:
        ratio = info["jobs_per_minute"] / _results["one"]
        benchmark.extra_info["ratio_vs_one_process"] = round(ratio, 3)


@pytest.mark.benchmark(group="scale-out")
def test_two_worker_machines(benchmark: Any, scale_out: dict[str, Any]) -> None:
    """Two ``heygem worker`` of one process each: what two machines would be, squeezed
    onto the same two cores (each process sizes its threads for the whole machine)."""
    info = _measure(benchmark, scale_out, "machines", machines=2, concurrency=1)
    if "one" in _results:
        ratio = info["jobs_per_minute"] / _results["one"]
        benchmark.extra_info["ratio_vs_one_process"] = round(ratio, 3)
