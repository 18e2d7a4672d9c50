"""The knobs operators turn: DataLoader workers, ORT vs torch, ORT session options.

Each case is reported as a ratio to the default configuration measured in the same run
(workers 0, ONNX Runtime, the thread budget's intra-op threads with all optimisations).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.support import (
    DEFAULTS,
    MAIN,
    SCALE,
    Baselines,
    JobRun,
    Media,
    Models,
    Paired,
    Pipelines,
    pedantic_paired,
    random_batch,
    run_job,
)
from heygem.generators.runtime import ort_session_options
from heygem.pipeline import Pipeline
from heygem.resources import ThreadBudget

WORKERS = (0, 2, 4)
BACKENDS = ("onnxruntime", "torch")
ORT_THREADS = (1, 2)
# Highest first: the pipeline's own level is the baseline the others divide by.
ORT_LEVELS = ("all", "extended", "basic", "disable")
# wav2lip is ~100x heavier per frame than rewrite: a smaller batch keeps rounds short.
ORT_BATCH = {"rewrite": max(SCALE.batch_sizes), "wav2lip": min(8, max(SCALE.batch_sizes))}


def _job_info(paired: Paired, media: Media) -> dict[str, Any]:
    samples = paired.samples
    runs: list[JobRun] = samples.results
    result = runs[-1].result
    return {
        "resolution": MAIN,
        "frames": result.frames,
        "seconds": round(samples.best, 3),
        "fps": round(result.frames / samples.best, 2),
        "rtf": round(samples.best / media.audio_seconds("short"), 3),
        "cpu_util": round(samples.cpu_util, 2),
        "ttff_s": round(min(r.ttff for r in runs), 3),
        "timings": result.timings,
        "baseline_s": round(paired.base.best, 3),
        "cpu_ratio": round(paired.cpu_ratio, 3),
    }


def _job(pipeline: Pipeline, media: Media, name: str) -> Callable[[], JobRun]:
    audio, video, out = media.audio("short"), media.template(MAIN), media.output(name)
    return lambda: run_job(pipeline, audio, video, out)


@pytest.mark.benchmark(group="workers")
# More workers than cores is the point of the comparison, not a mistake to warn about.
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
@pytest.mark.parametrize("workers", WORKERS, ids=lambda w: f"workers{w}")
def test_dataloader_workers(
    benchmark: Any, media: Media, pipelines: Pipelines, baselines: Baselines, workers: int
) -> None:
    """The HeyGem ``num_threads`` knob, with spawn: worker start-up is part of every job."""
    pipeline = pipelines.get(workers=workers)
    pipelines.plan(MAIN)
    # Each round follows a workers=0 job (for workers=0 too: its ratio shows the noise).
    paired = pedantic_paired(
        benchmark,
        _job(pipeline, media, "workers"),
        _job(pipelines.get(workers=0), media, "workers0"),
        n_rounds=2,
    )
    info = _job_info(paired, media)
    info.update(
        kind="workers",
        workers=workers,
        start_method=pipeline.options.start_method,
        batch_size=pipeline.options.batch_size,
        ratio_to_workers0=round(paired.ratio, 3),
    )
    benchmark.extra_info.update(info)


@pytest.mark.benchmark(group="backend")
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_end_to_end(
    benchmark: Any, media: Media, pipelines: Pipelines, baselines: Baselines, backend: str
) -> None:
    """The same generator (rewrite) end to end on ONNX Runtime and on torch."""
    pipeline = pipelines.get(backend=backend)
    pipelines.plan(MAIN)
    paired = pedantic_paired(
        benchmark,
        _job(pipeline, media, "backend"),
        _job(pipelines.get(backend="onnxruntime"), media, "backend-ort"),
        n_rounds=2,
    )
    info = _job_info(paired, media)
    info.update(
        kind="backend",
        generator="rewrite",
        backend=backend,
        providers=list(paired.samples.last.result.providers_used),
        ratio_to_ort=round(paired.ratio, 3),
    )
    benchmark.extra_info.update(info)


def _session(path: str, threads: int, level: str = "all", setting: str = "runner") -> Any:
    """A session as OrtRunner makes it (``ort_session_options``), with one thing changed."""
    import onnxruntime as ort

    levels = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }
    options = ort_session_options(threads, spinning=setting != "no-spinning")
    options.graph_optimization_level = levels[level]
    if setting == "no-arena":
        options.enable_cpu_mem_arena = False
    if setting == "no-mem-pattern":
        options.enable_mem_pattern = False
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _model_threads(model: str) -> int:
    return ThreadBudget.for_machine(generator=model).model_threads


@pytest.mark.benchmark(group="ort-options")
@pytest.mark.parametrize(
    ("model", "threads", "level"),
    [(m, t, lv) for m in ("rewrite", "wav2lip") for t in ORT_THREADS for lv in ORT_LEVELS],
    ids=lambda v: f"threads{v}" if isinstance(v, int) else str(v),
)
def test_ort_session_options(
    benchmark: Any,
    models: Models,
    baselines: Baselines,
    budget: ThreadBudget,
    model: str,
    threads: int,
    level: str,
) -> None:
    path = str(models.onnx_path(model))
    _, spec = models.runner(model, "onnxruntime")
    batch = ORT_BATCH[model]
    face, mel = random_batch(spec.crop.size, batch, generator=model)
    feeds = {"face": face, ("control" if model == "rewrite" else "mel"): mel}
    start = time.perf_counter()
    session = _session(path, threads, level)
    created = time.perf_counter() - start
    session.run(None, feeds)  # first run allocates
    default = baselines.get(
        f"ort-session:{model}", lambda: _session(path, _model_threads(model), "all")
    )
    default.run(None, feeds)
    n_rounds = 10 if model == "rewrite" else 3
    # Each round follows a run of the pipeline's own configuration (OrtRunner's).
    paired = pedantic_paired(
        benchmark,
        lambda: session.run(None, feeds),
        lambda: default.run(None, feeds),
        n_rounds=n_rounds,
    )
    best = paired.samples.best
    benchmark.extra_info.update(
        kind="ort_options",
        model=model,
        threads=threads,
        level=level,
        batch=batch,
        seconds=round(best, 5),
        per_frame_ms=round(best / batch * 1000, 3),
        session_create_s=round(created, 3),
        default_threads=_model_threads(model),
        ratio_to_default=round(paired.ratio, 3),
    )


ORT_SETTINGS = ("runner", "no-spinning", "no-arena", "no-mem-pattern", "io-binding")


@pytest.mark.benchmark(group="ort-options")
@pytest.mark.parametrize(
    ("model", "setting"), [(m, st) for m in (DEFAULTS.generator, "wav2lip") for st in ORT_SETTINGS]
)
def test_ort_runtime_settings(
    benchmark: Any, models: Models, baselines: Baselines, model: str, setting: str
) -> None:
    """The runner's session (budget's threads) with spinning, the memory arena or the
    memory pattern off, or fed through I/O binding; each round after a runner run."""
    path = str(models.onnx_path(model))
    _, spec = models.runner(model, "onnxruntime")
    batch = ORT_BATCH[model]
    face, condition = random_batch(spec.crop.size, batch, generator=model)
    second = "mel" if spec.condition == "mel" else "control"
    feeds = {"face": face, second: condition}
    threads = _model_threads(model)
    session = _session(path, threads, setting=setting)
    default = baselines.get(f"ort-session:{model}", lambda: _session(path, threads))
    default.run(None, feeds)

    def run() -> Any:
        if setting != "io-binding":
            return session.run(None, feeds)
        binding = session.io_binding()
        binding.bind_cpu_input("face", face)
        binding.bind_cpu_input(second, condition)
        binding.bind_output("face_out")
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    run()
    paired = pedantic_paired(
        benchmark,
        run,
        lambda: default.run(None, feeds),
        n_rounds=3 if model == "wav2lip" else 10,
    )
    benchmark.extra_info.update(
        kind="ort_options",
        model=model,
        threads=threads,
        level=setting,
        batch=batch,
        seconds=round(paired.samples.best, 5),
        per_frame_ms=round(paired.samples.best / batch * 1000, 3),
        default_threads=threads,
        ratio_to_default=round(paired.ratio, 3),
    )
