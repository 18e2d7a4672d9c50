"""One small, self-contained generation run that says how the pipeline behaves here.

``run_probe`` writes short generated inputs (synthetic speech and a face template, no
downloads) into a temporary directory, runs the real pipeline on them under its own
watchdogs plus an outer deadline, and returns a ``ProbeOutcome``: ok / stalled / crashed /
bad-input / error, a classified cause ("shared memory exhausted (SIGBUS)", "consumer never
started or died", "CPU fallback", ...), the evidence, throughput, providers requested vs.
used, library versions and the child processes the run left behind (must be none).

Collecting is separate from formatting (``format_probe_outcome``), so the version matrix
can run the same probe per cell and keep the JSON. Heavy modules (torch, onnxruntime, the
pipeline, PyAV) are imported inside ``run_probe`` only.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from diagnostics.findings import Finding, Report, Severity
from diagnostics.probes.versions import installed_versions
from heygem.config import GenerateOptions
from heygem.errors import CauseKind, FailureCause, HeygemError, InvalidOption, PipelineStalled
from heygem.providers import is_cpu_fallback

if TYPE_CHECKING:
    from heygem.pipeline import GenerationResult, Pipeline

__all__ = [
    "Outcome",
    "ProbeConfig",
    "ProbeDeadlineExceeded",
    "ProbeEvidence",
    "ProbeOutcome",
    "classify_error",
    "library_versions",
    "parse_size",
    "probe_report",
    "run_probe",
]

log = logging.getLogger(__name__)

# multiprocessing helpers that live until the interpreter exits by design: one per
# process, started on first use of spawn/forkserver, not leaked by a job.
_PERSISTENT_HELPERS = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")

# distribution names per library: onnxruntime-gpu provides the same module as onnxruntime.
_DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "numpy": ("numpy",),
    "torch": ("torch",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "av": ("av",),
}


class Outcome(StrEnum):
    OK = "ok"
    STALLED = "stalled"
    CRASHED = "crashed"
    BAD_INPUT = "bad-input"
    ERROR = "error"


@dataclass(frozen=True)
class ProbeConfig:
    """What to generate and how; validated on construction (bad values -> InvalidOption)."""

    options: GenerateOptions = field(default_factory=GenerateOptions)
    audio_seconds: float = 3.0
    template_seconds: float = 2.0
    size: tuple[int, int] = (512, 512)  # HeyGem works on 512x512 face crops
    keep_output: Path | None = None
    # Outer deadline for the whole run; None derives one from the inputs and options.
    timeout: float | None = None
    # How long finished children may take to disappear before they count as left over.
    child_grace: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        self.options.validated()
        width, height = self.size
        if not (64 <= width <= 3840 and 64 <= height <= 2160) or width % 2 or height % 2:
            raise InvalidOption(
                f"probe size {width}x{height} is not usable",
                hint="use even sizes from 64x64 to 3840x2160 (H.264 4:2:0 "
                "needs even dimensions), e.g. 512x512",
            )
        if not 0 < self.audio_seconds <= 600 or not 0 < self.template_seconds <= 60:
            raise InvalidOption(
                "probe durations out of range",
                hint="use 0 < seconds <= 600 and 0 < template seconds <= 60",
            )
        if self.timeout is not None and self.timeout <= 0:
            raise InvalidOption(f"probe timeout {self.timeout} must be > 0")
        if self.keep_output is not None and not self.keep_output.parent.is_dir():
            raise InvalidOption(
                f"cannot keep the output at {self.keep_output}: "
                f"{self.keep_output.parent} is not a directory",
                hint="pass a path in an existing directory",
            )

    @property
    def deadline(self) -> float:
        """Seconds after which the probe stops waiting even if the watchdog never fired."""
        if self.timeout is not None:
            return self.timeout
        opts = self.options
        startup = 3.0 * opts.num_workers + 5.0  # the load stage's first-item grace
        return 60.0 + 10.0 * self.audio_seconds + 3.0 * opts.stall_timeout + startup

    def describe(self) -> dict[str, Any]:
        opts = self.options
        fault = opts.fault
        return {
            "audio_seconds": self.audio_seconds,
            "template_seconds": self.template_seconds,
            "size": f"{self.size[0]}x{self.size[1]}",
            "generator": opts.generator,
            "backend": opts.backend,
            "device": opts.device,
            "require_gpu": opts.require_gpu,
            "batch_size": opts.batch_size,
            "num_workers": opts.num_workers,
            "start_method": opts.start_method,
            "stall_timeout": opts.stall_timeout,
            "fault": None if fault is None else str(fault),
            "deadline": round(self.deadline, 1),
        }


@dataclass(frozen=True)
class ProbeEvidence:
    """The error the run ended with, as the pipeline worded it."""

    error_type: str
    message: str
    hint: str | None
    stage: str | None


@dataclass(frozen=True)
class ProbeOutcome:
    outcome: Outcome
    cause: str | None  # None: nothing to explain
    cause_id: str | None  # the FailureCause value, for machines
    evidence: ProbeEvidence | None
    frames: int | None
    fps: float | None  # throughput: frames / total generation seconds
    providers_requested: tuple[str, ...]
    providers_used: tuple[str, ...]
    cpu_fallback: bool
    warnings: tuple[str, ...]
    duration_s: float  # wall time of the whole probe, input building included
    timings: Mapping[str, float]
    versions: Mapping[str, str | None]
    leftover_children: int
    leftover_detail: tuple[str, ...]
    config: Mapping[str, Any]
    output: str | None
    log: tuple[str, ...] = ()  # heygem WARNING+ log lines emitted during the run

    @property
    def healthy(self) -> bool:
        """OK, on the device asked for, and nothing left running."""
        return self.outcome is Outcome.OK and not self.cpu_fallback and not self.leftover_children

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": str(self.outcome),
            "healthy": self.healthy,
            "cause": self.cause,
            "cause_id": self.cause_id,
            "evidence": asdict(self.evidence) if self.evidence else None,
            "frames": self.frames,
            "fps": self.fps,
            "providers_requested": list(self.providers_requested),
            "providers_used": list(self.providers_used),
            "cpu_fallback": self.cpu_fallback,
            "warnings": list(self.warnings),
            "duration_s": self.duration_s,
            "timings": dict(self.timings),
            "versions": dict(self.versions),
            "leftover_children": self.leftover_children,
            "leftover_detail": list(self.leftover_detail),
            "config": dict(self.config),
            "output": self.output,
            "log": list(self.log),
        }


# --- small helpers ----------------------------------------------------------------------
def parse_size(text: str) -> tuple[int, int]:
    """'512x512' -> (512, 512)."""
    parts = text.lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise InvalidOption(
            f"size {text!r} is not WIDTHxHEIGHT", hint="e.g. --size 512x512"
        ) from None
    return width, height


def library_versions() -> dict[str, str | None]:
    return installed_versions(_DISTRIBUTIONS)


# --- classification ---------------------------------------------------------------------
# What each kind of failure cause means for a probe run (the kind is part of the cause).
OUTCOME_OF_KIND: dict[CauseKind, Outcome] = {
    CauseKind.INPUT: Outcome.BAD_INPUT,
    CauseKind.STALL: Outcome.STALLED,
    CauseKind.CRASH: Outcome.CRASHED,
    CauseKind.ERROR: Outcome.ERROR,
}


class ProbeDeadlineExceeded(PipelineStalled):
    """The pipeline neither finished nor failed within the probe's outer deadline."""

    default_cause = FailureCause.TIMED_OUT


def classify_error(exc: BaseException) -> tuple[Outcome, FailureCause, str]:
    """(outcome, cause, short text) for the exception a probe run ended with: a lookup of
    the cause the code that noticed the failure set, never a reading of its message."""
    if isinstance(exc, ProbeDeadlineExceeded):
        text = "no answer within the probe deadline (watchdog did not fire)"
        return Outcome.STALLED, exc.cause, text
    if not isinstance(exc, HeygemError):
        return Outcome.ERROR, FailureCause.INTERNAL, f"unexpected {type(exc).__name__}"
    stage = getattr(exc, "stage", None)
    text = exc.cause.description + (f" (stage '{stage}')" if stage else "")
    return OUTCOME_OF_KIND[exc.cause.kind], exc.cause, text


def _evidence(exc: BaseException) -> ProbeEvidence:
    if isinstance(exc, HeygemError):
        return ProbeEvidence(type(exc).__name__, exc.message, exc.hint, getattr(exc, "stage", None))
    return ProbeEvidence(type(exc).__name__, str(exc) or repr(exc), None, None)


# --- running ----------------------------------------------------------------------------
def build_inputs(directory: Path, config: ProbeConfig) -> tuple[Path, Path]:
    """Synthetic speech + the bundled portrait as a template of the configured size."""
    from heygem.audio.synth import synth_speech
    from heygem.demo import iter_template_frames, write_video, write_wav

    audio = write_wav(
        directory / "speech.wav", synth_speech(config.audio_seconds, seed=config.seed)
    )
    frames = iter_template_frames(config.template_seconds, size=config.size)
    video = write_video(directory / f"template-{config.size[0]}x{config.size[1]}.mp4", frames)
    return audio, video


def _child_pids() -> set[int]:
    with contextlib.suppress(psutil.Error):
        return {p.pid for p in psutil.Process().children(recursive=True)}
    return set()


def _describe_child(proc: psutil.Process) -> str | None:
    """'pid 123 zombie python -c ...', or None for gone processes and persistent helpers."""
    try:
        status = proc.status()
        cmdline = " ".join(proc.cmdline())
    except psutil.ZombieProcess:
        status, cmdline = psutil.STATUS_ZOMBIE, ""
    except psutil.Error:
        return None
    if any(helper in cmdline for helper in _PERSISTENT_HELPERS):
        return None
    shown = "<defunct>" if status == psutil.STATUS_ZOMBIE else status
    return f"pid {proc.pid} {shown} {cmdline[:120] or proc.name()}".rstrip()


def leftover_children(before: set[int], grace: float) -> tuple[str, ...]:
    """Children started since ``before`` that are still alive or zombie after ``grace`` s.

    Polled rather than read once: a worker the runner terminated may take a moment to go.
    """
    deadline = time.monotonic() + grace
    while True:
        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            children = []
        left = tuple(
            d for p in children if p.pid not in before if (d := _describe_child(p)) is not None
        )
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def _run_with_deadline(
    fn: Callable[[threading.Event], GenerationResult], deadline: float, stall_timeout: float
) -> GenerationResult:
    """Run ``fn`` in a thread; if it outlives ``deadline``, cancel it and raise.

    The pipeline's own watchdog should always answer first; this is the probe's guarantee
    that a watchdog bug shows up as a finding, not as a hung matrix cell.
    """
    cancel = threading.Event()
    done = threading.Event()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(cancel)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc
        finally:
            done.set()

    worker = threading.Thread(target=target, name="heygem-probe", daemon=True)
    worker.start()
    try:
        finished = done.wait(deadline)
    except KeyboardInterrupt:
        cancel.set()
        done.wait(5.0)
        raise
    if not finished:
        cancel.set()
        done.wait(5.0)  # let a cancellable pipeline tear down and reap its children
        raise ProbeDeadlineExceeded(
            f"the pipeline neither finished nor reported a stall within the probe deadline "
            f"of {deadline:g} s (its stall timeout is {stall_timeout:g} s)",
            stage=None,
            hint="with a deadline well above the stall timeout the watchdog missed a stall "
            "(a bug: rerun with -v for the pipeline log); otherwise raise --timeout",
        )
    if "error" in box:
        raise box["error"]
    result: GenerationResult = box["result"]
    return result


class _ListHandler(logging.Handler):
    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        # First line only: stall reports carry whole stacks, already in the evidence.
        first = (record.getMessage().splitlines() or [""])[0]
        self.lines.append(f"{record.levelname} {record.name}: {first}")


@contextlib.contextmanager
def _captured_logs(echo: bool) -> Iterator[list[str]]:
    """Keep heygem's warnings for the outcome; with ``echo`` False, off the console too."""
    lines: list[str] = []
    logger = logging.getLogger("heygem")
    handler = _ListHandler(lines)
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = echo
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _generate(
    pipeline: Pipeline,
    audio: Path,
    video: Path,
    output: Path,
    progress: Callable[[int, int], None] | None,
    cancel: threading.Event,
) -> GenerationResult:
    # Load first, on its own, so providers are known even when streaming fails; its time
    # is then folded back into the result's timings (the pipeline sees a warm model).
    started = time.perf_counter()
    pipeline.load()
    load_seconds = time.perf_counter() - started
    result = pipeline.generate(audio, video, output, progress=progress, cancel=cancel)
    timings = dict(result.timings)
    timings["load_model"] = round(timings.get("load_model", 0.0) + load_seconds, 3)
    timings["total"] = round(timings.get("total", 0.0) + load_seconds, 3)
    return replace(result, timings=timings)


def run_probe(
    config: ProbeConfig | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    echo_logs: bool = True,
) -> ProbeOutcome:
    """Generate once on small synthetic inputs and report how it went. Never raises for a
    failed run (that is the finding); only KeyboardInterrupt propagates."""
    config = config or ProbeConfig()
    started = time.perf_counter()
    versions = library_versions()
    before = _child_pids()
    result: GenerationResult | None = None
    error: BaseException | None = None
    pipeline: Pipeline | None = None
    with (
        tempfile.TemporaryDirectory(prefix="heygem-probe-") as tmp,
        _captured_logs(echo_logs) as log_lines,
    ):
        output = config.keep_output or Path(tmp) / "probe.mp4"
        try:
            from heygem.pipeline import Pipeline

            audio, video = build_inputs(Path(tmp), config)
            pipe = pipeline = Pipeline(config.options)
            result = _run_with_deadline(
                lambda cancel: _generate(pipe, audio, video, output, progress, cancel),
                config.deadline,
                config.options.stall_timeout,
            )
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a failed run is the probe's finding
            log.debug("probe run failed", exc_info=True)
            error = exc
    left = leftover_children(before, config.child_grace)
    return _outcome(
        config,
        result,
        error,
        pipeline,
        versions,
        left,
        tuple(log_lines),
        time.perf_counter() - started,
    )


def _providers(
    result: GenerationResult | None, pipeline: Pipeline | None
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if result is not None:
        return result.providers_requested, result.providers_used
    runner = getattr(pipeline, "_runner", None)  # loaded before the stream failed, if at all
    info = getattr(runner, "info", None)
    if info is None:
        return (), ()
    return tuple(info.requested), tuple(info.used)


def _outcome(
    config: ProbeConfig,
    result: GenerationResult | None,
    error: BaseException | None,
    pipeline: Pipeline | None,
    versions: dict[str, str | None],
    left: tuple[str, ...],
    log_lines: tuple[str, ...],
    duration: float,
) -> ProbeOutcome:
    requested, used = _providers(result, pipeline)
    # A refused fallback (--require-gpu) is still a fallback, even with no session to show.
    refused = isinstance(error, HeygemError) and error.cause is FailureCause.CPU_FALLBACK
    fallback = is_cpu_fallback(requested, used) or refused
    cause_id: FailureCause | None = FailureCause.CPU_FALLBACK if fallback else None
    cause: str | None = cause_id.description if cause_id else None
    outcome = Outcome.OK
    if error is not None:
        outcome, cause_id, cause = classify_error(error)
    frames = result.frames if result else None
    total = result.timings.get("total") if result else None
    fps = round(frames / total, 2) if frames and total else None
    kept = config.keep_output is not None and result is not None
    return ProbeOutcome(
        outcome=outcome,
        cause=cause,
        cause_id=cause_id.value if cause_id else None,
        evidence=_evidence(error) if error else None,
        frames=frames,
        fps=fps,
        providers_requested=requested,
        providers_used=used,
        cpu_fallback=fallback,
        warnings=result.warnings if result else (),
        duration_s=round(duration, 3),
        timings=dict(result.timings) if result else {},
        versions=versions,
        leftover_children=len(left),
        leftover_detail=left,
        config=config.describe(),
        output=str(config.keep_output) if kept else None,
        log=log_lines,
    )


# --- formatting -------------------------------------------------------------------------
# Long messages (stall reports, worker tracebacks) are cut to their head, which names
# the stage, and their tail, where the stuck call or the real exception is.
_HEAD_LINES, _TAIL_LINES = 5, 3


def _clipped(message: str) -> list[str]:
    lines = message.splitlines()
    if len(lines) <= _HEAD_LINES + _TAIL_LINES + 1:
        return lines
    cut = len(lines) - _HEAD_LINES - _TAIL_LINES
    return [*lines[:_HEAD_LINES], f"... ({cut} lines omitted, see --json)", *lines[-_TAIL_LINES:]]


def probe_report(outcome: ProbeOutcome) -> Report:
    """The probe as findings: the run's verdict, a CPU fallback, children left behind."""
    cfg = outcome.config
    body = [
        f"  run: {cfg['audio_seconds']:g} s speech, {cfg['size']} template, "
        f"{cfg['generator']} on {cfg['backend']}/{cfg['device']}, batch {cfg['batch_size']}, "
        f"{cfg['num_workers']} workers ({cfg['start_method']}), stall timeout "
        f"{cfg['stall_timeout']:g} s" + (f", fault {cfg['fault']}" if cfg["fault"] else ""),
    ]
    if outcome.frames is not None:
        body.append(f"  frames: {outcome.frames} at {outcome.fps or 0:.1f} fps throughput")
    body.append(
        f"  providers: used {', '.join(outcome.providers_used) or 'unknown'} "
        f"(requested {', '.join(outcome.providers_requested) or 'unknown'})"
    )
    body.append(f"  duration: {outcome.duration_s:.1f} s")
    body.append(
        "  versions: " + ", ".join(f"{k} {v or 'missing'}" for k, v in outcome.versions.items())
    )
    if outcome.output:
        body.append(f"  output kept: {outcome.output}")
    findings = [_run_finding(outcome)]
    if outcome.cpu_fallback:
        findings.append(
            Finding(
                "cpu-fallback",
                Severity.FAIL,
                FailureCause.CPU_FALLBACK.description,
                [
                    f"requested {', '.join(outcome.providers_requested) or 'unknown'}, "
                    f"used {', '.join(outcome.providers_used) or 'unknown'}",
                    *outcome.warnings,
                ],
                "run `heygem-diagnose env`: it names the CUDA/cuDNN libraries the loader misses",
            )
        )
    if outcome.leftover_children:
        findings.append(
            Finding(
                "leftover-children",
                Severity.FAIL,
                f"{outcome.leftover_children} child process(es) left behind after the run",
                outcome.leftover_detail,
                "a bug in the runner's teardown: report it with `heygem-diagnose ps` output",
            )
        )
    findings += [
        Finding("warning", Severity.INFO, warning)
        for warning in outcome.warnings
        if not outcome.cpu_fallback
    ]
    return Report("run-probe", "heygem probe", tuple(findings), outcome.to_dict(), tuple(body))


def _run_finding(outcome: ProbeOutcome) -> Finding:
    ev = outcome.evidence
    if outcome.outcome is Outcome.OK:
        return Finding("run", Severity.OK, f"the generation finished ({outcome.frames} frames)")
    assert ev is not None
    lines = _clipped(ev.message) or [""]
    return Finding(
        "run",
        Severity.FAIL,
        f"{outcome.outcome.value}: {outcome.cause}",
        [f"{ev.error_type}: {lines[0]}", *lines[1:]],
        ev.hint,
        subject=ev.stage,
    )
