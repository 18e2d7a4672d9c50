"""What the benchmark modules share: input scale, timing wrappers, the transcode floor,
same-run baselines, warm pipelines and fresh-subprocess jobs.

Every figure a benchmark reports is a ratio against something measured in the same run
(the transcode floor, the cold run, the default configuration), because the machine is
small and shared: absolute seconds move with whatever else runs, ratios much less.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np

from heygem.audio.features import SAMPLE_RATE, frame_count
from heygem.config import BackendName, GenerateOptions, GeneratorName
from heygem.demo import iter_template_frames, write_video, write_wav
from heygem.face.template import TemplatePlan
from heygem.generators.graphs import GeneratorSpec
from heygem.generators.runtime import GraphRunner
from heygem.media.writer import video_rate
from heygem.pipeline import GenerationResult, Pipeline
from heygem.resources import ThreadBudget

DEFAULTS = GenerateOptions()

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOKE = os.environ.get("HEYGEM_BENCH_SMOKE", "") not in ("", "0")
FPS = 25.0
MAIN = "720p"  # the resolution stage benchmarks and tuning comparisons use


@dataclass(frozen=True)
class Scale:
    resolutions: dict[str, tuple[int, int]]
    template_seconds: float
    audio_seconds: dict[str, float]
    batch_sizes: tuple[int, ...]


# Smoke mode keeps every id (480p, 720p, ...) so the same tests run, on tiny inputs.
SCALE = (
    Scale({"480p": (256, 256), "720p": (256, 256), "1080p": (256, 256)}, 1.0,
          {"short": 1.0, "long": 2.0}, (1, 2))
    if SMOKE else
    Scale({"480p": (854, 480), "720p": (1280, 720), "1080p": (1920, 1080)}, 10.0,
          {"short": 10.0, "long": 60.0}, (1, 8, 32))
)  # fmt: skip


def rounds(n: int) -> int:
    """Smoke runs are about wiring, not numbers: one round each."""
    return 1 if SMOKE else n


def frames_for(audio_seconds: float) -> int:
    """Output frames of a job on ``audio_seconds`` of audio (the pipeline's own rule)."""
    return frame_count(round(audio_seconds * SAMPLE_RATE), FPS)


# -- timing ------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (DataLoader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Samples:
    """Our own record of each timed call, so ratios also work under --benchmark-disable."""

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)

    @property
    def last(self) -> Any:
        return self.results[-1] if self.results else None

    @property
    def best(self) -> float:
        # The minimum: the least disturbed by other work on the machine.
        return min(self.wall)

    @property
    def cpu_util(self) -> float:
        """CPU seconds per wall second over all rounds (2.0 = both cores busy)."""
        return sum(self.cpu) / sum(self.wall) if self.cpu and sum(self.wall) > 0 else 0.0


Setup = Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]


def timed(
    fn: Callable[..., Any], samples: Samples, *, with_cpu: bool, keep: bool = True
) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cpu0 = cpu_seconds() if with_cpu else 0.0
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        samples.wall.append(time.perf_counter() - start)
        if with_cpu:
            samples.cpu.append(cpu_seconds() - cpu0)
        if keep:
            samples.results.append(out)
        return out

    return wrapper


def pedantic(
    benchmark: Any, fn: Callable[..., Any], *, n_rounds: int, setup: Setup | None = None
) -> Samples:
    """Slow things: a fixed number of rounds, one call each."""
    samples = Samples()
    benchmark.pedantic(
        timed(fn, samples, with_cpu=True), setup=setup, rounds=rounds(n_rounds), iterations=1
    )
    return samples


@dataclass
class Paired:
    """Rounds of a benchmark, each right after an untimed run of its baseline.

    The machine is shared and its load drifts over seconds; a ratio is only fair
    between runs that saw the same load, so each round is divided by its own baseline
    run and the median of those ratios is reported.
    """

    samples: Samples
    base: Samples

    @property
    def ratio(self) -> float:
        ratios = sorted(s / b for s, b in zip(self.samples.wall, self.base.wall, strict=True))
        return statistics.median(ratios)

    @property
    def cpu_ratio(self) -> float:
        """CPU seconds per CPU second of the baseline: barely moved by other processes."""
        base = sum(self.base.cpu)
        return sum(self.samples.cpu) / base if base > 0 else float("nan")


def pedantic_paired(
    benchmark: Any,
    fn: Callable[..., Any],
    baseline: Callable[[], object],
    *,
    n_rounds: int,
    setup: Setup | None = None,
) -> Paired:
    base = Samples()
    run_base = timed(baseline, base, with_cpu=True, keep=False)

    def paired_setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        run_base()
        return setup() if setup is not None else ((), {})

    return Paired(pedantic(benchmark, fn, n_rounds=n_rounds, setup=paired_setup), base)


def auto(benchmark: Any, fn: Callable[..., Any], *args: Any) -> Samples:
    """Fast things: let pytest-benchmark calibrate; no getrusage in the hot loop."""
    samples = Samples()
    # Calibration calls fn thousands of times: keep only the timings, not every result.
    benchmark(timed(fn, samples, with_cpu=False, keep=False), *args)
    return samples


class Baselines:
    """Figures measured earlier in this run that later benchmarks divide by.

    A benchmark selected on its own (``-k``) measures the baseline it needs on demand,
    so every ratio is always against the same run.
    """

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._samples: dict[str, list[float]] = {}

    def record(self, key: str, value: Any) -> None:
        self._values[key] = value

    def get(self, key: str, measure: Callable[[], Any]) -> Any:
        if key not in self._values:
            self._values[key] = measure()
        return self._values[key]

    def peek(self, key: str) -> Any:
        return self._values.get(key)

    def add_samples(self, key: str, seconds: Iterable[float]) -> None:
        self._samples.setdefault(key, []).extend(seconds)

    def best(self, key: str) -> float | None:
        samples = self._samples.get(key)
        return min(samples) if samples else None


def best_of(n: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(rounds(n)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# -- the transcode floor -----------------------------------------------------------------
def transcode_floor(
    source: Path, target: Path, n_frames: int, *, preset: str, crf: int, threads: int
) -> int:
    """Plain PyAV decode + libx264 re-encode of ``n_frames`` frames, looping the source.

    The least any pipeline must do for the same output: same decoder threading, encoder
    preset/crf/threads as ``Mp4Writer``; no audio, no model, no compositing.
    """
    with av.open(str(source)) as probe:
        rate = video_rate(float(probe.streams.video[0].average_rate or FPS))
    time_base = 1 / rate
    written = 0
    with av.open(str(target), mode="w", format="mp4") as out:
        stream: Any = None
        while written < n_frames:
            before = written
            with av.open(str(source)) as inp:
                video = inp.streams.video[0]
                video.thread_type = "AUTO"
                for frame in inp.decode(video):
                    if stream is None:
                        stream = out.add_stream("libx264", rate=rate)
                        stream.width, stream.height = frame.width, frame.height
                        stream.pix_fmt = "yuv420p"
                        stream.codec_context.time_base = time_base
                        stream.options = {
                            "preset": preset,
                            "crf": str(crf),
                            "threads": str(threads),
                        }
                    if frame.format.name != "yuv420p":
                        frame = frame.reformat(format="yuv420p")
                    frame.pts = written
                    frame.time_base = time_base
                    for packet in stream.encode(frame):
                        out.mux(packet)
                    written += 1
                    if written >= n_frames:
                        break
            if written == before:
                raise RuntimeError(f"{source} decoded no frames")
        for packet in stream.encode(None):
            out.mux(packet)
    return written


# -- inputs ------------------------------------------------------------------------------
class Media:
    """Generated inputs, each made once per session on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.out = root / "out"
        self.out.mkdir(exist_ok=True)

    def size(self, res: str) -> tuple[int, int]:
        return SCALE.resolutions[res]

    def template(self, res: str) -> Path:
        width, height = self.size(res)
        path = self.root / f"template-{res}-{width}x{height}.mp4"
        if not path.exists():
            write_video(
                path,
                iter_template_frames(SCALE.template_seconds, fps=FPS, size=(width, height)),
                fps=FPS,
            )
        return path

    def audio_seconds(self, which: str) -> float:
        return SCALE.audio_seconds[which]

    def audio(self, which: str) -> Path:
        from heygem.audio.synth import synth_speech

        seconds = self.audio_seconds(which)
        path = self.root / f"speech-{seconds:g}s.wav"
        if not path.exists():
            write_wav(path, synth_speech(seconds, seed=7))
        return path

    def output(self, name: str) -> Path:
        return self.out / f"{name}.mp4"

    def template_sized(self, width: int, height: int, seconds: float) -> Path:
        """The demo template at any size (the Wav2Lip comparison uses 720x528)."""
        path = self.root / f"template-{width}x{height}-{seconds:g}s.mp4"
        if not path.exists():
            write_video(path, iter_template_frames(seconds, fps=FPS, size=(width, height)), fps=FPS)
        return path

    def speech(self, seconds: float, seed: int = 7) -> Path:
        from heygem.audio.synth import synth_speech

        path = self.root / f"speech-{seconds:g}s-seed{seed}.wav"
        if not path.exists():
            write_wav(path, synth_speech(seconds, seed=seed))
        return path


class Models:
    """Generators exported to ONNX once, in a model cache every job cache links to."""

    def __init__(self, root: Path, budget: ThreadBudget) -> None:
        self.root = root
        self.budget = budget
        self.onnx_dir = root / "model-cache" / "onnx"
        self.onnx_dir.mkdir(parents=True, exist_ok=True)
        self._runners: dict[tuple[str, str], tuple[GraphRunner, GeneratorSpec]] = {}

    def checkpoint(self, generator: str) -> Path | None:
        if generator != "wav2lip":
            return None
        path = self.root / "wav2lip-random-init.pth"
        if not path.exists():
            import torch

            from heygem.generators.wav2lip import Wav2Lip, save_wav2lip_checkpoint

            torch.manual_seed(0)
            save_wav2lip_checkpoint(Wav2Lip().eval(), path)
        return path

    def runner(self, generator: str, backend: str) -> tuple[GraphRunner, GeneratorSpec]:
        key = (generator, backend)
        if key not in self._runners:
            from heygem.generators.loader import load_generator

            self._runners[key] = load_generator(
                generator,
                self.checkpoint(generator),
                backend=backend,
                device="cpu",
                threads=self.budget.model_threads,
                require_gpu=False,
                cache_dir=self.onnx_dir.parent,
            )
        return self._runners[key]

    def onnx_path(self, generator: str) -> Path:
        """The ONNX file jobs run: shipped with the package (rewrite) or exported."""
        from heygem.generators.loader import prepare_generator

        self.runner(generator, "onnxruntime")  # exported on first use
        prepared = prepare_generator(
            generator,
            self.checkpoint(generator),
            backend="onnxruntime",
            cache_dir=self.onnx_dir.parent,
        )
        assert prepared.onnx is not None and not prepared.needs_export
        return prepared.onnx.onnx

    def job_cache(self, path: Path) -> Path:
        """A job cache with the exported models linked in: cold for templates only."""
        path.mkdir(parents=True, exist_ok=True)
        link = path / "onnx"
        if not link.exists():
            link.symlink_to(self.onnx_dir, target_is_directory=True)
        return path


class Pipelines:
    """Warm pipelines (model loaded, template cache filled), one per configuration."""

    def __init__(self, media: Media, models: Models, budget: ThreadBudget) -> None:
        self.media, self.models, self.budget = media, models, budget
        self.warm_cache = models.job_cache(media.root / "warm-cache")
        self._pipelines: dict[tuple[Any, ...], Pipeline] = {}
        self._counter = 0

    def options(
        self,
        *,
        generator: GeneratorName = DEFAULTS.generator,
        backend: BackendName = DEFAULTS.backend,
        workers: int = 0,
        batch_size: int = DEFAULTS.batch_size,
        cache_dir: Path | None = None,
    ) -> GenerateOptions:
        return GenerateOptions(
            generator=generator,
            checkpoint=self.models.checkpoint(generator),
            backend=backend,
            device="cpu",
            batch_size=batch_size,
            num_workers=workers,
            start_method="spawn",
            cache_dir=cache_dir or self.warm_cache,
            # Spawned workers import torch on a busy 2-core box; a stall is not what we time.
            stall_timeout=120.0,
        )

    def get(self, **config: Any) -> Pipeline:
        key = tuple(sorted(config.items()))
        if key not in self._pipelines:
            pipeline = Pipeline(self.options(**config), budget=self.budget)
            pipeline.load()
            self._pipelines[key] = pipeline
        return self._pipelines[key]

    def fresh_cache(self) -> Path:
        """An empty template cache (exported models linked in)."""
        self._counter += 1
        return self.models.job_cache(
            Path(tempfile.mkdtemp(prefix=f"cold{self._counter}-", dir=self.media.root))
        )

    def cold(self, **config: Any) -> Pipeline:
        pipeline = Pipeline(
            self.options(cache_dir=self.fresh_cache(), **config), budget=self.budget
        )
        pipeline.load()
        return pipeline

    def plan(self, res: str, pipeline: Pipeline | None = None) -> TemplatePlan:
        """Fill (or read) the template cache of ``pipeline`` for the template at ``res``."""
        pipeline = pipeline or self.get()
        _, spec = pipeline.load()
        inputs = pipeline.check_inputs(
            self.media.audio("short"), self.media.template(res), self.media.output("plan")
        )
        return pipeline.plan_template(inputs, spec)


@dataclass
class JobRun:
    result: GenerationResult
    ttff: float  # seconds from generate() to the first frame written


class FirstFrame:
    """Progress callback that notes when the first output frame was written."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: float | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.start


def run_job(pipeline: Pipeline, audio: Path, video: Path, output: Path) -> JobRun:
    first = FirstFrame()
    result = pipeline.generate(audio, video, output, progress=first)
    return JobRun(result, first.seconds if first.seconds is not None else float("nan"))


# -- fresh processes ----------------------------------------------------------------------
class FreshJobs:
    """Jobs in a fresh interpreter: peak RSS is only meaningful for a process of its own."""

    def __init__(self, media: Media, pipelines: Pipelines) -> None:
        self.media, self.pipelines = media, pipelines
        self._runs: dict[tuple[Any, ...], dict[str, Any]] = {}

    def get(self, res: str, audio: str = "short", **config: Any) -> dict[str, Any]:
        key = (res, audio, *sorted(config.items()))
        if key not in self._runs:
            self._runs[key] = self.run(res, audio, **config)
        return self._runs[key]

    def run(self, res: str, audio: str = "short", **config: Any) -> dict[str, Any]:
        self.pipelines.plan(res)  # template cache warm, as in the timed runs
        opts = self.pipelines.options(**config)
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.fresh_job",
            "--audio",
            str(self.media.audio(audio)),
            "--video",
            str(self.media.template(res)),
            "--output",
            str(self.media.output(f"fresh-{res}-{audio}")),
            "--cache-dir",
            str(opts.cache_dir),
            "--generator",
            opts.generator,
            "--backend",
            opts.backend,
            "--num-workers",
            str(opts.num_workers),
            "--batch-size",
            str(opts.batch_size),
        ]
        if opts.checkpoint is not None:
            cmd += ["--checkpoint", str(opts.checkpoint)]
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"fresh job failed ({proc.returncode}): {proc.stderr[-3000:]}")
        data: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return data


# -- misc --------------------------------------------------------------------------------
def decoded_frames(
    path: Path,
    width: int,
    height: int,
    limit: int | None = None,
) -> Iterator[av.VideoFrame]:
    from heygem.media.frames import iter_template_frames as decode

    for index, frame in enumerate(decode(path, width, height)):
        if limit is not None and index >= limit:
            return
        yield frame


def random_batch(
    size: int, batch: int, seed: int = 0, generator: str = "wav2lip"
) -> tuple[np.ndarray, np.ndarray]:
    """Generator inputs in the pipeline's layout: face 0..1 BGR and the condition: a mel
    in speech range, or for ``rewrite`` mouths that all open (every row runs the graph)."""
    rng = np.random.default_rng(seed)
    face = rng.random((batch, 3, size, size), dtype=np.float32)
    if generator == "rewrite":
        import torch

        from heygem.generators.rewrite import Control, MouthRenderer

        control = MouthRenderer(size).example_condition(batch, torch.Generator().manual_seed(seed))
        control[:, Control.OPEN] += 0.05
        return face, control.numpy()
    mel = rng.uniform(-4.0, 0.0, (batch, 1, 80, 16)).astype(np.float32)
    return face, mel


# -- the floor as a baseline ----------------------------------------------------------------


def run_floor(media: Media, budget: ThreadBudget, res: str, n_frames: int) -> int:
    return transcode_floor(
        media.template(res),
        media.output(f"floor-{res}-{n_frames}"),
        n_frames,
        preset=DEFAULTS.preset,
        crf=DEFAULTS.crf,
        threads=budget.x264_threads,
    )


def floor_key(res: str, n_frames: int) -> str:
    return f"floor:{res}:{n_frames}"


def time_floor(
    baselines: Baselines, media: Media, budget: ThreadBudget, res: str, n_frames: int
) -> float:
    """Run the floor once and add it to the floor's samples (a paired measurement)."""
    start = time.perf_counter()
    run_floor(media, budget, res, n_frames)
    seconds = time.perf_counter() - start
    baselines.add_samples(floor_key(res, n_frames), [seconds])
    return seconds


def floor_seconds(
    baselines: Baselines, media: Media, budget: ThreadBudget, res: str, n_frames: int
) -> float:
    """Best floor time at ``res`` for ``n_frames`` over every floor run so far this session
    (its benchmark's rounds and the runs paired with end-to-end rounds); measured now if
    there is none."""
    key = floor_key(res, n_frames)
    if baselines.best(key) is None:
        for _ in range(rounds(2)):
            time_floor(baselines, media, budget, res, n_frames)
    best = baselines.best(key)
    assert best is not None
    return best
