"""The generation pipeline: audio + template video in, lip-synced MP4 out.

``Pipeline.generate`` is one call split into named steps (``check_inputs``,
``audio_features``, ``plan_template``, ``stream``) in the manner of diffusers' pipelines.
Model loading, audio features and the template analysis are independent, so they run
at the same time (``prepare``). The streaming part runs four stages in threads,
connected by bounded channels:

    decode ──frames──────────────────────────────┐
    load (DataLoader) ──batches──> generate ──generated──> compose (paste + encode + mux)

Every stage beats a heartbeat; a watchdog turns silence into ``PipelineStalled`` naming
the stuck stage, and a dead DataLoader worker into ``StageCrashed`` with its decoded
exit; every child is reaped and the output is only published on success.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from heygem.audio import features
from heygem.batches import (
    FrameTiming,
    SampleSource,
    loader_failure,
    make_loader,
    poll_batches,
)
from heygem.composite import composite
from heygem.config import PIPELINE_STAGES, FaultInjection, GenerateOptions
from heygem.errors import (
    Cancelled,
    FailureCause,
    HeygemError,
    InputTooLarge,
    PipelineError,
    PipelineStalled,
    StageCrashed,
)
from heygem.face.template import TemplatePlan, plan_template
from heygem.generators.face_features import CachedFaces, template_face_features
from heygem.generators.loader import PreparedGenerator, prepare_generator, start_runner
from heygem.generators.runtime import (
    FaceFeatureOrtRunner,
    GraphRunner,
    crops_from_graph,
    run_on_crops,
)
from heygem.generators.samples import generator_samples
from heygem.generators.spec import GeneratorSpec
from heygem.media.audio import decode_audio_mono
from heygem.media.frames import FramePool, FrameSource, output_size
from heygem.media.probe import AudioInfo, VideoInfo, probe_audio, probe_video
from heygem.media.writer import Mp4Writer, check_output_writable
from heygem.progress import StepCallback, StepProgress
from heygem.providers import is_cpu_fallback
from heygem.resources import ThreadBudget
from heygem.runner.channels import END, Channel, EndOfStream, JobCancelled
from heygem.runner.exits import OomWatch
from heygem.runner.faults import inject
from heygem.runner.monitor import StageMonitor, StageState
from heygem.runner.processes import StoppedClock, is_stopped
from heygem.runner.watchdog import ChildProcess, Watchdog

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
T = TypeVar("T")
STAGES = PIPELINE_STAGES
PROGRESS_EVERY = 25  # frames between stage_progress log events


def event(level: int, message: str, name: str, job_id: str, **fields: object) -> None:
    """A structured log record: the JSON log lines `heygem-diagnose log` reads back."""
    log.log(
        level,
        message,
        extra={
            "event": name,
            "job_id": job_id,
            **{k: v for k, v in fields.items() if v is not None},
        },
    )


@dataclass(frozen=True)
class Inputs:
    audio: AudioInfo
    video: VideoInfo
    output: Path


@dataclass(frozen=True)
class AudioFeatures:
    n_frames: int
    fps: float
    seconds: float
    mel: np.ndarray  # (80, T) padded so every frame has a full window
    active: np.ndarray  # (n_frames,) bool
    loudness_db: np.ndarray  # (n_frames,) RMS in dBFS


@dataclass(frozen=True)
class GenerationResult:
    output: Path
    frames: int
    fps: float
    duration: float  # seconds of audio = seconds of output
    width: int
    height: int
    # Seconds per job step (check_inputs, prepare, stream, total); load_model,
    # audio_features and face_track run concurrently inside prepare.
    timings: dict[str, float]
    stage_seconds: dict[str, float]  # busy seconds per pipeline stage (decode ... compose)
    backend: str
    providers_requested: tuple[str, ...]
    providers_used: tuple[str, ...]
    warnings: tuple[str, ...]
    template_from_cache: bool
    faceless_frames: int
    silent_frames: int

    @property
    def cpu_fallback(self) -> bool:
        """A GPU was requested and the live session ran on CPU."""
        return is_cpu_fallback(self.providers_requested, self.providers_used)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["output"] = str(self.output)
        data["cpu_fallback"] = self.cpu_fallback
        return data


@dataclass
class _Job:
    """Mutable state shared by one job's stage threads."""

    cancel: threading.Event
    monitors: dict[str, StageMonitor]
    job_id: str = "-"
    errors: list[BaseException] = field(default_factory=list)
    loader_workers: list[Any] = field(default_factory=list)
    # Started with the job: a SIGKILL is blamed on the OOM killer only if this rose.
    oom: OomWatch = field(default_factory=OomWatch)
    stopped: StoppedClock = field(default_factory=StoppedClock)
    finished: threading.Event = field(default_factory=threading.Event)
    running: int = len(STAGES)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.cancel.set()

    def stage_ended(self) -> None:
        with self._lock:
            self.running -= 1
            if self.running == 0:
                self.finished.set()


class Pipeline:
    """A warm pipeline: the generator is loaded once and reused by every ``generate``."""

    def __init__(
        self, options: GenerateOptions | None = None, budget: ThreadBudget | None = None
    ) -> None:
        self.options = (options or GenerateOptions()).validated()
        # Where the cores go depends on the generator (heygem.resources): a budget made
        # for another generator is re-split on the same CPUs.
        budget = budget or ThreadBudget.for_machine(generator=self.options.generator)
        self.budget = budget.for_generator(self.options.generator)
        self._runner: GraphRunner | None = None
        self._spec: GeneratorSpec | None = None
        self._lock = threading.Lock()  # one job at a time per warm pipeline

    # -- steps ---------------------------------------------------------------------------
    def load(self) -> tuple[GraphRunner, GeneratorSpec]:
        if self._runner is None or self._spec is None:
            self._start(self._prepare_model(), None)
        assert self._runner is not None and self._spec is not None
        return self._runner, self._spec

    def _prepare_model(self) -> PreparedGenerator:
        """The generator's spec, and its graph (exported to ONNX when it starts)."""
        opts = self.options
        return prepare_generator(
            opts.generator, opts.checkpoint, backend=opts.backend, cache_dir=opts.cache_dir
        )

    def _start(self, prepared: PreparedGenerator, on_step: StepCallback | None) -> GraphRunner:
        opts = self.options
        runner = start_runner(
            prepared,
            device=opts.device,
            threads=self.budget.model_threads,
            require_gpu=opts.require_gpu,
            precision=opts.precision,
            on_step=on_step,
        )
        self._runner, self._spec = runner, prepared.spec
        log.info(
            "generator %s on %s, providers %s; threads: %s",
            prepared.spec.name,
            runner.info.backend,
            ",".join(runner.info.used),
            self.budget.describe(),
        )
        _report(on_step, "load_model", 1, None, finished=True)
        return runner

    def check_inputs(self, audio: Path, video: Path, output: Path) -> Inputs:
        opts = self.options
        video_info = probe_video(video, max_width=opts.max_width, max_height=opts.max_height)
        audio_info = probe_audio(audio, max_seconds=opts.max_audio_seconds)
        check_output_writable(output, inputs=(audio, video))
        return Inputs(audio_info, video_info, output)

    def audio_features(self, inputs: Inputs) -> AudioFeatures:
        wav = decode_audio_mono(inputs.audio.path)
        seconds = wav.size / features.SAMPLE_RATE
        if seconds > self.options.max_audio_seconds:
            raise InputTooLarge(
                f"audio is {seconds:.0f} s long, above the {self.options.max_audio_seconds:.0f} s "
                "limit",
                hint="split the audio into shorter parts or raise the limit",
            )
        fps = self.options.fps or inputs.video.fps
        n_frames = features.frame_count(wav.size, fps)
        mel = features.pad_mel_for_frames(features.melspectrogram(wav), n_frames, fps)
        activity = features.voice_activity(wav, n_frames, fps)
        return AudioFeatures(n_frames, fps, seconds, mel, activity.active, activity.loudness_db)

    def plan_template(
        self, inputs: Inputs, spec: GeneratorSpec, on_progress: Callable[[int], None] | None = None
    ) -> TemplatePlan:
        width, height = output_size(inputs.video.width, inputs.video.height)
        return plan_template(
            inputs.video.path,
            width,
            height,
            spec.crop,
            cache_dir=self.options.cache_dir,
            use_cache=self.options.use_face_cache,
            max_frames=self.options.max_template_frames,
            on_progress=on_progress,
        )

    # -- the whole job -------------------------------------------------------------------
    def generate(
        self,
        audio: Path,
        video: Path,
        output: Path,
        *,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        job_id: str | None = None,
        on_step: StepCallback | None = None,
    ) -> GenerationResult:
        """``progress(done, total)`` counts frames written; ``on_step`` reports every step
        that can take more than a second (heygem.progress), frames included."""
        job_id = job_id or uuid.uuid4().hex[:12]
        with self._lock:
            event(
                logging.INFO,
                "job started",
                "job_started",
                job_id,
                audio=str(audio),
                video=str(video),
                output=str(output),
            )
            try:
                result = self._generate(
                    Path(audio),
                    Path(video),
                    Path(output),
                    progress,
                    cancel or threading.Event(),
                    job_id,
                    on_step,
                )
            except HeygemError as exc:
                event(
                    logging.ERROR,
                    f"job failed: {exc}",
                    "job_failed",
                    job_id,
                    stage=getattr(exc, "stage", None),
                    error_type=type(exc).__name__,
                    cause=exc.cause.value,
                )
                raise
            event(
                logging.INFO,
                f"job finished: {result.frames} frames",
                "job_finished",
                job_id,
                frames=result.frames,
                seconds=round(result.timings["total"], 3),
            )
            return result

    def _generate(
        self,
        audio: Path,
        video: Path,
        output: Path,
        progress: ProgressCallback | None,
        cancel: threading.Event,
        job_id: str,
        on_step: StepCallback | None = None,
    ) -> GenerationResult:
        started = time.perf_counter()
        timings: dict[str, float] = {}
        with _timed(timings, "check_inputs"):
            inputs = self.check_inputs(audio, video, output)
        with _timed(timings, "prepare"):
            runner, spec, feats, plan = self.prepare(inputs, cancel, timings, on_step)
        warnings = list(runner.info.warnings)
        if plan.faceless_frames:
            warnings.append(
                f"{plan.faceless_frames} of {plan.n_frames} template frames have no "
                "detectable face and pass through unchanged"
            )

        def frames_written(done: int, total: int) -> None:
            if progress is not None:
                progress(done, total)
            _report(on_step, "generate", done, total, finished=done == total)

        encoding_started = time.perf_counter()
        faces = self.face_features(runner, spec, plan, cancel, on_step)
        if faces is not None:  # a step of Wav2Lip jobs on ONNX Runtime only
            timings["face_features"] = round(time.perf_counter() - encoding_started, 3)
        with _timed(timings, "stream"), tempfile.TemporaryDirectory(prefix="heygem-job-") as tmp:
            stage_seconds = self.stream(
                inputs,
                feats,
                plan,
                runner,
                spec,
                Path(tmp),
                frames_written,
                cancel,
                job_id,
                face_features=faces,
            )
        timings["total"] = round(time.perf_counter() - started, 3)
        return GenerationResult(
            output=inputs.output,
            frames=feats.n_frames,
            fps=feats.fps,
            duration=feats.seconds,
            width=plan.width,
            height=plan.height,
            timings=timings,
            stage_seconds=stage_seconds,
            backend=runner.info.backend,
            providers_requested=runner.info.requested,
            providers_used=runner.info.used,
            warnings=tuple(warnings),
            template_from_cache=plan.from_cache,
            faceless_frames=plan.faceless_frames,
            silent_frames=int((~feats.active).sum()),
        )

    def prepare(
        self,
        inputs: Inputs,
        cancel: threading.Event,
        timings: dict[str, float],
        on_step: StepCallback | None = None,
    ) -> tuple[GraphRunner, GeneratorSpec, AudioFeatures, TemplatePlan]:
        """Model, audio features and template plan, the independent steps overlapped.

        The template analysis needs the generator's crop (the spec: read from the export
        cache in milliseconds, or known once the graph is built), so it starts as soon as
        that is known, while helper threads create the session (exporting the model
        first on its first use) and compute the audio features. The analysis stops early
        when the job is cancelled or another step failed.
        """
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="heygem-prepare") as pool:
            audio = pool.submit(
                _timed_call, timings, "audio_features", self._audio_step, inputs, on_step
            )
            model_started = time.perf_counter()
            runner_future: Future[GraphRunner] | None = None
            if self._runner is not None and self._spec is not None:
                spec = self._spec
                timings["load_model"] = 0.0
            else:
                _report(on_step, "load_model", 0, None)
                prepared = self._prepare_model()
                spec = prepared.spec
                runner_future = pool.submit(self._start, prepared, on_step)

            def analysed(frames: int) -> None:
                if cancel.is_set():
                    raise Cancelled("the job was cancelled during the template analysis")
                for other in (audio, runner_future):
                    error = other.exception() if other is not None and other.done() else None
                    if error is not None:
                        raise error
                _report(on_step, "template", frames, inputs.video.estimated_frames or None)

            try:
                # Shown at once: the first analysed frame can be a second away (the
                # landmark model loads first).
                _report(on_step, "template", 0, inputs.video.estimated_frames or None)
                with _timed(timings, "face_track"):
                    plan = self.plan_template(inputs, spec, analysed)
                _report(on_step, "template", plan.n_frames, plan.n_frames, finished=True)
                if runner_future is not None:
                    runner_future.result()
                    timings["load_model"] = round(time.perf_counter() - model_started, 3)
                runner = self.load()[0]  # what a subclass's load() makes of it
                feats = audio.result()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        _raise_if_cancelled(cancel)
        return runner, spec, feats, plan

    def face_features(
        self,
        runner: GraphRunner,
        spec: GeneratorSpec,
        plan: TemplatePlan,
        cancel: threading.Event,
        on_step: StepCallback | None = None,
    ) -> np.ndarray | None:
        """Wav2Lip's face-encoder output for every template frame, cached with the
        template (heygem.generators.face_features); None where the runner cannot split
        (torch back-end) or the template cache is off."""
        if not isinstance(runner, FaceFeatureOrtRunner) or not self.options.use_face_cache:
            return None

        def encoded(done: int, total: int) -> None:
            _raise_if_cancelled(cancel)
            _report(on_step, "face_features", done, total, finished=done == total)

        return template_face_features(
            runner,
            plan.crops_path,
            spec.fingerprint,
            on_progress=encoded,
            streams=self.budget.model_streams,
        )

    def _audio_step(self, inputs: Inputs, on_step: StepCallback | None) -> AudioFeatures:
        _report(on_step, "audio_features", 0, None)
        feats = self.audio_features(inputs)
        _report(on_step, "audio_features", 1, None, finished=True)
        return feats

    def stream(
        self,
        inputs: Inputs,
        feats: AudioFeatures,
        plan: TemplatePlan,
        runner: GraphRunner,
        spec: GeneratorSpec,
        workdir: Path,
        progress: ProgressCallback | None,
        cancel: threading.Event,
        job_id: str = "-",
        *,
        face_features: np.ndarray | None = None,
    ) -> dict[str, float]:
        """Run the four streaming stages under the watchdog; return their busy seconds."""
        opts = self.options
        timing = FrameTiming(feats.n_frames, feats.fps, inputs.video.fps, plan.n_frames)
        monitors = {name: StageMonitor(name) for name in STAGES}
        if opts.num_workers and opts.start_method != "fork":
            monitors["load"].first_item_grace = 3.0 * opts.num_workers + 5.0
        job = _Job(cancel=threading.Event(), monitors=monitors, job_id=job_id)
        batch_frames = opts.batch_size
        frames_ch: Channel[tuple[int, Any]] = Channel(
            "frames", 2 * batch_frames, monitors["decode"], monitors["compose"], job.cancel
        )
        batches_ch: Channel[Any] = Channel(
            "batches", 2, monitors["load"], monitors["generate"], job.cancel
        )
        generated_ch: Channel[tuple[np.ndarray, np.ndarray]] = Channel(
            "generated", 2, monitors["generate"], monitors["compose"], job.cancel
        )
        writer = Mp4Writer(
            inputs.output,
            width=plan.width,
            height=plan.height,
            fps=feats.fps,
            preset=opts.preset,
            crf=opts.crf,
            threads=self.budget.x264_threads,
            audio_path=inputs.audio.path,
        )
        pool = FramePool(plan.width, plan.height)  # frames go back to it once encoded
        try:
            source = FrameSource(
                inputs.video.path,
                plan.width,
                plan.height,
                n_template=plan.n_frames,
                template_fps=inputs.video.fps,
                out_fps=feats.fps,
                n_frames=feats.n_frames,
                spool_dir=workdir,
                pool=pool,
            )
        except BaseException:
            writer.abort()
            raise
        # Decoding starts first: the template's first frames decode while the mouth plan
        # is made (on the core that plan leaves idle).
        decode = self._stage_thread(
            "decode", lambda: _decode_stage(source, frames_ch, monitors["decode"], opts.fault), job
        )
        decode.start()
        try:
            samples = generator_samples(
                spec, plan, feats.mel, feats.active, feats.loudness_db, timing, workdir, opts.fault
            )
        except BaseException:
            job.cancel.set()
            self._teardown([decode], job, writer)
            writer.abort()
            raise
        faces = None
        if face_features is not None and isinstance(runner, FaceFeatureOrtRunner):
            faces = CachedFaces(runner, face_features, timing.template_frame)
        stages: dict[str, Callable[[], None]] = {
            "load": lambda: self._load_stage(samples, batches_ch, job),
            "generate": lambda: _generate_stage(
                runner,
                batches_ch,
                generated_ch,
                monitors["generate"],
                opts.fault,
                self.budget.model_streams,
                faces,
            ),
            "compose": lambda: _compose_stage(
                job_id,
                frames_ch,
                generated_ch,
                writer,
                plan,
                timing,
                feats.active,
                spec,
                monitors["compose"],
                progress,
                opts.fault,
                pool,
            ),
        }
        others = [self._stage_thread(name, fn, job) for name, fn in stages.items()]
        threads = [decode, *others]
        watchdog = Watchdog(
            list(monitors.values()),
            [frames_ch, batches_ch, generated_ch],
            opts.stall_timeout,
            children=lambda: _children(job),
            oom=job.oom,
        )
        for thread in others:
            thread.start()
        try:
            self._supervise(job, watchdog, cancel)
        finally:
            if job.errors or cancel.is_set():
                job.cancel.set()
            self._teardown(threads, job, writer)
        if job.errors:
            raise job.errors[0]
        return {name: round(m.busy_seconds_total, 3) for name, m in monitors.items()}

    # -- stage plumbing ------------------------------------------------------------------
    def _stage_thread(self, name: str, body: Callable[[], None], job: _Job) -> threading.Thread:
        return threading.Thread(
            target=self._run_stage, args=(name, body, job), name=f"heygem-{name}", daemon=True
        )

    def _run_stage(self, name: str, body: Callable[[], None], job: _Job) -> None:
        monitor = job.monitors[name]
        monitor.attach()
        monitor.set_state(StageState.WORKING, "started")
        event(logging.DEBUG, f"stage {name} started", "stage_started", job.job_id, stage=name)
        fault = self.options.fault
        try:
            if fault is not None and fault.stage == name and fault.kind == "never_start":
                job.cancel.wait()  # a consumer that never starts: only teardown ends it
                raise JobCancelled
            body()
            monitor.finish()
            event(
                logging.INFO,
                f"stage {name} finished",
                "stage_finished",
                job.job_id,
                stage=name,
                frames=monitor.items,
                busy_seconds=round(monitor.busy_seconds_total, 3),
            )
        except JobCancelled:
            monitor.finish(failed=True)
        except HeygemError as exc:
            monitor.finish(failed=True)
            job.fail(exc)
        except BaseException as exc:  # noqa: BLE001 - converted to our error tree here
            monitor.finish(failed=True)
            job.fail(_stage_error(name, exc))
        finally:
            job.stage_ended()

    def _load_stage(self, samples: SampleSource, out: Channel[Any], job: _Job) -> None:
        opts = self.options
        loader = make_loader(samples, opts.batch_size, opts.num_workers, opts.start_method)
        iterator = iter(loader)
        job.loader_workers = list(getattr(iterator, "_workers", []))
        monitor = job.monitors["load"]
        try:
            for batch in _loaded(iterator, job, len(loader)):
                out.put(batch)
                monitor.beat(len(batch[0]))
            out.put(END)
        finally:
            shutdown = getattr(iterator, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def _supervise(self, job: _Job, watchdog: Watchdog, cancel: threading.Event) -> None:
        while not job.finished.is_set():
            if job.errors:
                return
            if cancel.is_set():
                job.fail(Cancelled("the job was cancelled", stage=None))
                return
            problem = watchdog.check()
            if problem is not None:
                kind = "stage_stalled" if isinstance(problem, PipelineStalled) else "stage_crashed"
                stuck = job.monitors.get(problem.stage or "")
                event(
                    logging.ERROR,
                    str(problem),
                    kind,
                    job.job_id,
                    stage=problem.stage,
                    cause=problem.cause.value,
                    frames=stuck.items if stuck else None,
                    queue_depth=watchdog.input_depth(problem.stage),
                )
                job.fail(problem)
                return
            job.finished.wait(0.1)

    def _teardown(self, threads: list[threading.Thread], job: _Job, writer: Mp4Writer) -> None:
        _stop_workers(job.loader_workers)
        deadline = time.monotonic() + 3.0
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        if stuck:
            log.warning("stage threads still busy after teardown (left as daemons): %s", stuck)
        if job.errors or stuck:
            writer.abort()
        multiprocessing.active_children()  # joins (reaps) any finished child


def _decode_stage(
    source: FrameSource,
    out: Channel[tuple[int, Any]],
    monitor: StageMonitor,
    fault: FaultInjection | None,
) -> None:
    for index, frame in source:
        inject(fault, "decode", index)
        out.put((index, frame))
        monitor.beat(1)
    out.put(END)


def _generate_stage(
    runner: GraphRunner,
    inp: Channel[Any],
    out: Channel[tuple[np.ndarray, np.ndarray]],
    monitor: StageMonitor,
    fault: FaultInjection | None,
    streams: int = 1,
    faces: CachedFaces | None = None,
) -> None:
    """Run batches through the generator, in order (on the template's cached face
    features when there are: heygem.generators.face_features). With ``streams`` > 1 each batch is
    cut into that many parts that run at once on helper threads (one session, one
    intra-op thread each): no lock-step between threads inside an operator, which
    measured faster on 2 cores and far more robust when the cores are shared, and every
    batch, the last partial one included, keeps all streams busy."""
    pool = (
        ThreadPoolExecutor(streams, thread_name_prefix="heygem-generate") if streams > 1 else None
    )
    try:
        batch_number = 0
        while not isinstance(item := inp.get(), EndOfStream):
            inject(fault, "generate", batch_number)
            batch_number += 1
            out.put(
                _run_split(runner, item, pool, streams, faces)
                if pool
                else _run_batch(runner, item, faces)
            )
            monitor.beat(len(item[0]))
        out.put(END)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _run_split(
    runner: GraphRunner,
    item: Any,
    pool: ThreadPoolExecutor,
    streams: int,
    faces: CachedFaces | None,
) -> tuple[np.ndarray, np.ndarray]:
    """One batch as ``streams`` parts run at once, put back together in order."""
    parts = np.array_split(np.arange(len(item[0])), streams)
    futures = [
        pool.submit(_run_batch, runner, tuple(np.asarray(a)[rows] for a in item), faces)
        for rows in parts
        if len(rows)
    ]
    results = [future.result() for future in futures]
    return (
        np.concatenate([indices for indices, _ in results]),
        np.concatenate([pixels for _, pixels in results]),
    )


def _run_batch(
    runner: GraphRunner, item: Any, faces: CachedFaces | None = None
) -> tuple[np.ndarray, np.ndarray]:
    indices, crops, mels = (np.asarray(part) for part in item)  # numpy or torch batches
    if faces is not None:  # the face encoder's part was computed with the template
        return indices, crops_from_graph(faces.run(indices, np.ascontiguousarray(mels)))
    return indices, run_on_crops(runner, crops, np.ascontiguousarray(mels))


def _compose_stage(
    job_id: str,
    frames: Channel[tuple[int, Any]],
    generated: Channel[tuple[np.ndarray, np.ndarray]],
    writer: Mp4Writer,
    plan: TemplatePlan,
    timing: FrameTiming,
    active: np.ndarray,
    spec: GeneratorSpec,
    monitor: StageMonitor,
    progress: ProgressCallback | None,
    fault: FaultInjection | None,
    pool: FramePool,
) -> None:
    pending: deque[tuple[int, np.ndarray]] = deque()
    for index, frame in _until_end(frames):
        inject(fault, "compose", index)
        while not pending:
            batch = generated.get()
            if isinstance(batch, EndOfStream):
                raise StageCrashed(f"generator output ended before frame {index}", stage="generate")
            pending.extend(zip(batch[0].tolist(), batch[1], strict=True))
        gen_index, crop = pending.popleft()
        if gen_index != index:
            raise StageCrashed(
                f"frame order broken: got {gen_index}, expected {index}", stage="compose"
            )
        template_frame = timing.template_frame(index)
        if plan.valid[template_frame] and (active[index] or not spec.identity_when_silent):
            region = tuple(int(v) for v in plan.regions[template_frame])
            composite(frame, region, crop, spec.crop.kind)  # type: ignore[arg-type]
        writer.write_video(frame)
        pool.give(frame)  # x264 copied it
        monitor.beat(1)
        if (index + 1) % PROGRESS_EVERY == 0:
            event(
                logging.DEBUG,
                f"{index + 1}/{timing.n_frames} frames",
                "stage_progress",
                job_id,
                stage="compose",
                frames=index + 1,
            )
        if progress is not None:
            progress(index + 1, timing.n_frames)
    monitor.expect_long("flushing the encoder and closing the MP4")
    writer.finish()


def _until_end(channel: Channel[tuple[int, Any]]) -> Iterator[tuple[int, Any]]:
    while not isinstance(item := channel.get(), EndOfStream):
        yield item


def _children(job: _Job) -> list[ChildProcess]:
    if job.monitors["load"].state.value in ("done", "failed"):
        return []  # workers were shut down on purpose
    return [
        ChildProcess("load", p.pid, p.exitcode, job.stopped.stopped_for(p.pid))
        for p in job.loader_workers
    ]


def _stop_workers(workers: list[Any]) -> None:
    """Terminate DataLoader workers the loading thread could not shut down itself.

    SIGTERM waits for a stopped (state T) process to be continued; SIGKILL does not, so a
    stopped worker is killed at once.
    """
    for proc in workers:
        if proc.is_alive():
            if is_stopped(proc.pid):
                proc.kill()
            else:
                proc.terminate()
    for proc in workers:
        proc.join(timeout=2.0)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=2.0)


def _loaded(batches: Iterator[Any], job: _Job, total: int) -> Iterator[Any]:
    """The loader's batches; its failures typed by what the workers' exits show. Waits in
    short polls, so a job torn down meanwhile ends this stage at once."""
    done = 0
    try:
        for batch in poll_batches(batches, job.cancel.is_set):
            done += 1
            yield batch
            if done == total:
                # The next call joins the workers (torch shuts them down when exhausted),
                # which takes as long as it takes: not a pace to judge.
                job.monitors["load"].expect_long("shutting down the DataLoader workers")
    except Exception as exc:
        if job.cancel.is_set():
            raise JobCancelled from exc
        raise loader_failure(exc, job.loader_workers, job.oom) from exc


def _stage_error(stage: str, exc: BaseException) -> PipelineError:
    """An unexpected exception out of a thread stage (our errors pass through as they are)."""
    disk_full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
    error = StageCrashed(
        f"stage '{stage}' failed: {type(exc).__name__}: {exc or repr(exc)}",
        stage=stage,
        cause=FailureCause.DISK_FULL if disk_full else FailureCause.STAGE_RAISED,
        hint="free space where the output (and the temporary directory) is written"
        if disk_full
        else None,
    )
    error.__cause__ = exc
    return error


def _raise_if_cancelled(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise Cancelled("the job was cancelled before streaming started")


def _report(
    on_step: StepCallback | None,
    step: Any,
    done: int,
    total: int | None,
    *,
    finished: bool = False,
) -> None:
    if on_step is not None:
        on_step(StepProgress(step, done, total, finished))


def _timed_call(timings: dict[str, float], name: str, fn: Callable[..., T], *args: Any) -> T:
    with _timed(timings, name):
        return fn(*args)


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - start, 3)
