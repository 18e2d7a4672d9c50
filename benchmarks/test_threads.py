"""The thread budget proven on this machine: whole jobs with the budget's split and with
the alternatives, each round right after a job with the budget's own split.

``ratio_to_budget`` > 1 means the alternative is slower than what heygem.resources
chose; the budget's own row shows the noise (ratio ~1). Codec-heavy (the default
generator, 720p) and model-heavy (Wav2Lip, 720x528) each get their alternatives: the
other generator's split, both cores to everything, and the old one-thread-model split.
"""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.support import (
    DEFAULTS,
    MAIN,
    SMOKE,
    JobRun,
    Media,
    Pipelines,
    pedantic_paired,
    run_job,
)
from heygem.cgroups import usable_cpus
from heygem.pipeline import Pipeline
from heygem.resources import ThreadBudget

# Whole processes and whole models take minutes on 2 shared cores (pytest's default: 300 s).
pytestmark = pytest.mark.timeout(1800)
W2L_SIZE, W2L_SPEECH_S = ((256, 256), 1.0) if SMOKE else ((720, 528), 4.0)
CPUS = usable_cpus()

# (generator, name, model_streams, model_threads, x264_threads); the first per generator
# is the budget's own split, the others the alternatives.
SPLITS = [
    (DEFAULTS.generator, "budget", None, None, None),
    (DEFAULTS.generator, "model-all-cores", 1, CPUS, CPUS),
    (DEFAULTS.generator, "x264-one-thread", 1, 1, 1),
    ("wav2lip", "budget", None, None, None),
    ("wav2lip", "intra-op-threads", 1, CPUS, 1),
    ("wav2lip", "one-model-thread", 1, 1, CPUS),  # the budget before issue 15
    ("wav2lip", "x264-all-cores", CPUS, 1, CPUS),
]


def _pipeline(pipelines: Pipelines, generator: str, split: tuple[Any, Any, Any]) -> Pipeline:
    streams, threads, x264 = split
    budget = ThreadBudget.for_machine(generator=generator)
    if streams is not None:
        budget = budget.with_threads(
            model_streams=streams, model_threads=threads, x264_threads=x264
        )
    pipeline = Pipeline(pipelines.options(generator=generator), budget=budget)  # type: ignore[arg-type]
    pipeline.load()
    return pipeline


@pytest.mark.benchmark(group="threads")
@pytest.mark.parametrize(
    ("generator", "name", "streams", "threads", "x264"),
    SPLITS,
    ids=[f"{g}-{n}" for g, n, *_ in SPLITS],
)
def test_thread_split(
    benchmark: Any,
    media: Media,
    pipelines: Pipelines,
    generator: str,
    name: str,
    streams: int | None,
    threads: int | None,
    x264: int | None,
) -> None:
    if generator == "wav2lip":
        video, audio = media.template_sized(*W2L_SIZE, 2.0), media.speech(W2L_SPEECH_S)
    else:
        video, audio = media.template(MAIN), media.audio("short")
    chosen = _pipeline(pipelines, generator, (None, None, None))
    candidate = _pipeline(pipelines, generator, (streams, threads, x264))
    out = media.output(f"threads-{generator}")
    run_job(chosen, audio, video, out)  # template cached for both

    paired = pedantic_paired(
        benchmark,
        lambda: run_job(candidate, audio, video, out),
        lambda: run_job(chosen, audio, video, out),
        n_rounds=2,
    )
    runs: list[JobRun] = paired.samples.results
    budget = candidate.budget
    benchmark.extra_info.update(
        kind="threads",
        generator=generator,
        split=name,
        model=f"{budget.model_streams} x {budget.model_threads}",
        x264_threads=budget.x264_threads,
        frames=runs[-1].result.frames,
        seconds=round(paired.samples.best, 3),
        ratio_to_budget=round(paired.ratio, 3),
        cpu_ratio_to_budget=round(paired.cpu_ratio, 3),
        cpu_util=round(paired.samples.cpu_util, 2),
    )
