"""Whole jobs against the transcode floor, the template cache, and memory growth.

Tests run in file order: the floors are measured first so every end-to-end ratio divides
by a floor from the same run (a test selected alone measures its floor on demand).
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.support import (
    MAIN,
    SCALE,
    Baselines,
    FreshJobs,
    JobRun,
    Media,
    Paired,
    Pipelines,
    best_of,
    floor_key,
    frames_for,
    pedantic,
    pedantic_paired,
    run_floor,
    run_job,
)
from heygem.pipeline import Pipeline
from heygem.resources import ThreadBudget

RESOLUTIONS = list(SCALE.resolutions)
CACHE_SPEEDUP_TARGET = 2.0  # time to first frame, first job / second job
MEMORY_GROWTH_TARGET = 1.2  # peak RSS, 60 s job / 10 s job


def _e2e_info(
    paired: Paired,
    *,
    res: str,
    cache: str,
    audio_seconds: float,
) -> dict[str, Any]:
    samples = paired.samples
    runs: list[JobRun] = samples.results
    result = runs[-1].result
    best = samples.best
    return {
        "kind": "e2e",
        "resolution": res,
        "cache": cache,
        "frames": result.frames,
        "audio_s": audio_seconds,
        "seconds": round(best, 3),
        "fps": round(result.frames / best, 2),
        "rtf": round(best / audio_seconds, 3),  # processing time / media time; < 1 is faster
        "floor_s": round(paired.base.best, 3),
        # Median of per-round ratios, each round against the floor run just before it.
        "ratio_to_floor": round(paired.ratio, 3),
        "cpu_ratio_to_floor": round(paired.cpu_ratio, 3),
        "cpu_util": round(samples.cpu_util, 2),
        "ttff_s": round(min(run.ttff for run in runs), 3),
        "timings": result.timings,
        "providers": list(result.providers_used),
    }


@pytest.mark.benchmark(group="floor")
@pytest.mark.parametrize("res", RESOLUTIONS)
def test_transcode_floor(
    benchmark: Any, media: Media, budget: ThreadBudget, baselines: Baselines, res: str
) -> None:
    audio_seconds = media.audio_seconds("short")
    n_frames = frames_for(audio_seconds)
    media.template(res)  # generated outside the timing
    samples = pedantic(benchmark, lambda: run_floor(media, budget, res, n_frames), n_rounds=3)
    assert samples.last == n_frames
    baselines.add_samples(floor_key(res, n_frames), samples.wall)
    benchmark.extra_info.update(
        kind="floor",
        resolution=res,
        frames=n_frames,
        audio_s=audio_seconds,
        seconds=round(samples.best, 3),
        fps=round(n_frames / samples.best, 2),
        rtf=round(samples.best / audio_seconds, 3),
        cpu_util=round(samples.cpu_util, 2),
        x264_threads=budget.x264_threads,
    )


@pytest.mark.benchmark(group="e2e")
@pytest.mark.parametrize("res", RESOLUTIONS)
def test_end_to_end_warm(
    benchmark: Any,
    media: Media,
    pipelines: Pipelines,
    baselines: Baselines,
    budget: ThreadBudget,
    fresh_jobs: FreshJobs,
    res: str,
) -> None:
    pipeline = pipelines.get()
    pipelines.plan(res)  # template cache warm: the steady state of a service
    audio, video, out = media.audio("short"), media.template(res), media.output(f"e2e-{res}")
    n_frames = frames_for(media.audio_seconds("short"))
    paired = pedantic_paired(
        benchmark,
        lambda: run_job(pipeline, audio, video, out),
        lambda: run_floor(media, budget, res, n_frames),
        n_rounds=3,
    )
    assert paired.samples.last.result.template_from_cache
    baselines.record(f"e2e:{res}", paired.samples.best)
    baselines.add_samples(floor_key(res, n_frames), paired.base.wall)
    info = _e2e_info(paired, res=res, cache="warm", audio_seconds=media.audio_seconds("short"))
    fresh = fresh_jobs.get(res, "short")  # untimed; its own process for a true peak RSS
    info.update(
        peak_rss_mb=fresh["peak_rss_mb"],
        rss_before_job_mb=fresh["rss_before_job_mb"],
        job_rss_mb=round(fresh["peak_rss_mb"] - fresh["rss_before_job_mb"], 1),
        fresh_cpu_util=fresh["cpu_util"],
        fresh_seconds=fresh["wall_s"],
    )
    benchmark.extra_info.update(info)


def _warm_seconds(pipelines: Pipelines, media: Media, res: str) -> float:
    pipeline = pipelines.get()
    pipelines.plan(res)
    return best_of(
        2,
        lambda: run_job(
            pipeline, media.audio("short"), media.template(res), media.output(f"e2e-{res}")
        ),
    )


@pytest.mark.benchmark(group="e2e")
def test_end_to_end_cold(
    benchmark: Any, media: Media, pipelines: Pipelines, baselines: Baselines, budget: ThreadBudget
) -> None:
    """First job on a template: face detection + crop extraction included (model warm)."""
    res = MAIN
    audio, video, out = media.audio("short"), media.template(res), media.output(f"cold-{res}")
    n_frames = frames_for(media.audio_seconds("short"))
    cold: list[Pipeline] = []

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        cold.append(pipelines.cold())  # empty template cache, model already loaded
        return (cold[-1],), {}

    paired = pedantic_paired(
        benchmark,
        lambda p: run_job(p, audio, video, out),
        lambda: run_floor(media, budget, res, n_frames),
        n_rounds=1,
        setup=setup,
    )
    first: JobRun = paired.samples.last
    assert not first.result.template_from_cache
    baselines.add_samples(floor_key(res, n_frames), paired.base.wall)
    # The cache test below runs its second job on this pipeline's now-warm cache.
    baselines.record("cache:first-pipeline", cold[-1])
    baselines.record("cache:first-ttff", first.ttff)
    info = _e2e_info(paired, res=res, cache="cold", audio_seconds=media.audio_seconds("short"))
    warm = baselines.get(f"e2e:{res}", lambda: _warm_seconds(pipelines, media, res))
    info["ratio_to_warm"] = round(paired.samples.best / warm, 3)
    benchmark.extra_info.update(info)


@pytest.mark.benchmark(group="cache")
def test_template_cache_second_job(
    benchmark: Any, media: Media, pipelines: Pipelines, baselines: Baselines
) -> None:
    """Time to first frame of a second job on the same avatar vs the first (target >= 2x)."""
    res = MAIN
    audio, video, out = media.audio("short"), media.template(res), media.output(f"cache-{res}")
    pipeline: Pipeline | None = baselines.peek("cache:first-pipeline")
    first_ttff: float | None = baselines.peek("cache:first-ttff")
    if pipeline is None or first_ttff is None:
        pipeline = pipelines.cold()
        first = run_job(pipeline, audio, video, out)
        first_ttff = first.ttff
    samples = pedantic(benchmark, lambda: run_job(pipeline, audio, video, out), n_rounds=2)
    assert samples.last.result.template_from_cache
    second_ttff = min(run.ttff for run in samples.results)
    speedup = first_ttff / second_ttff
    benchmark.extra_info.update(
        kind="cache",
        resolution=res,
        ttff_first_s=round(first_ttff, 3),
        ttff_second_s=round(second_ttff, 3),
        speedup=round(speedup, 2),
        target=CACHE_SPEEDUP_TARGET,
        meets_target=bool(speedup >= CACHE_SPEEDUP_TARGET),
        second_job_s=round(samples.best, 3),
        face_track_second_s=samples.last.result.timings["face_track"],
    )


@pytest.mark.benchmark(group="memory")
def test_memory_growth(benchmark: Any, media: Media, fresh_jobs: FreshJobs) -> None:
    """Peak RSS of a long job vs a short one, each in a fresh process (target <= 1.2x)."""
    res = MAIN
    short = fresh_jobs.get(res, "short")
    samples = pedantic(benchmark, lambda: fresh_jobs.run(res, "long"), n_rounds=1)
    long = samples.last
    ratio = long["peak_rss_mb"] / short["peak_rss_mb"]
    # What the job itself adds over the loaded process: more sensitive than whole RSS.
    job_short = max(short["peak_rss_mb"] - short["rss_before_job_mb"], 1.0)
    job_long = long["peak_rss_mb"] - long["rss_before_job_mb"]
    benchmark.extra_info.update(
        kind="memory",
        resolution=res,
        short_audio_s=media.audio_seconds("short"),
        long_audio_s=media.audio_seconds("long"),
        rss_short_mb=short["peak_rss_mb"],
        rss_long_mb=long["peak_rss_mb"],
        ratio=round(ratio, 3),
        job_rss_short_mb=round(job_short, 1),
        job_rss_long_mb=round(job_long, 1),
        job_ratio=round(job_long / job_short, 3),
        frames_long=long["frames"],
        long_fps=round(long["frames"] / long["wall_s"], 2),
        target=MEMORY_GROWTH_TARGET,
        meets_target=bool(ratio <= MEMORY_GROWTH_TARGET),
    )
