"""Options of one generation job: a frozen value, validated once, passed explicitly.

``GenerateOptions`` is the one definition of every generation option. Each field carries
its help text, its choices and whether a service client may set it per job; the CLIs
build their arguments from it (``add_arguments``/``from_arguments``), the service derives
its per-job override model from it (``per_job_fields``), and the benchmarks, the
regression harness and the matrix construct it directly. Adding an option is one field
here (plus its validation and its use).
"""

from __future__ import annotations

import argparse
import os
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, cast

from heygem.errors import InvalidOption

GeneratorName = Literal["rewrite", "wav2lip"]
BackendName = Literal["onnxruntime", "torch"]
DeviceName = Literal["auto", "cpu", "cuda"]
PrecisionName = Literal["fp32", "bf16"]
StartMethod = Literal["spawn", "forkserver", "fork"]
X264Preset = Literal[
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
    "veryslow",
]  # fmt: skip
FaultKind = Literal["hang", "crash", "slow", "kill", "sigbus", "never_start"]

GENERATORS: tuple[str, ...] = typing.get_args(GeneratorName)
BACKENDS: tuple[str, ...] = typing.get_args(BackendName)
DEVICES: tuple[str, ...] = typing.get_args(DeviceName)
PRECISIONS: tuple[str, ...] = typing.get_args(PrecisionName)
START_METHODS: tuple[str, ...] = typing.get_args(StartMethod)
X264_PRESETS: tuple[str, ...] = typing.get_args(X264Preset)
FAULT_KINDS: tuple[str, ...] = typing.get_args(FaultKind)
# The pipeline's streaming stages (heygem.pipeline runs them; named here so that option
# parsing can check a fault's stage without importing the pipeline and torch).
PIPELINE_STAGES: tuple[str, ...] = ("decode", "load", "generate", "compose")


def default_cache_dir() -> Path:
    """HEYGEM_CACHE_DIR, else $XDG_CACHE_HOME/heygem, else ~/.cache/heygem."""
    if explicit := os.environ.get("HEYGEM_CACHE_DIR"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "heygem"


@dataclass(frozen=True)
class FaultInjection:
    """Rehearse failures on purpose (tests, users checking their alerting).

    ``stage`` names the pipeline stage to break; ``kind`` is what happens to it. Written
    as ``stage:kind[:seconds]`` (the ``HEYGEM_FAULT`` variable, ``--fault``).
    """

    stage: str
    kind: FaultKind
    seconds: float = 0.0

    @classmethod
    def parse(cls, text: str) -> FaultInjection:
        parts = text.split(":")
        if len(parts) not in (2, 3) or parts[1] not in FAULT_KINDS:
            raise InvalidOption(
                f"fault {text!r} is not understood",
                hint=f"use STAGE:KIND[:SECONDS] with KIND one of {', '.join(FAULT_KINDS)}",
            )
        if parts[0] not in PIPELINE_STAGES:
            raise InvalidOption(
                f"fault stage {parts[0]!r} is not a pipeline stage",
                hint=f"choose one of: {', '.join(PIPELINE_STAGES)}",
            )
        try:
            seconds = float(parts[2]) if len(parts) == 3 else 0.0
        except ValueError:
            raise InvalidOption(
                f"fault {text!r}: {parts[2]!r} is not a number of seconds",
                hint="use STAGE:KIND[:SECONDS], e.g. generate:hang:30",
            ) from None
        return cls(stage=parts[0], kind=cast(FaultKind, parts[1]), seconds=seconds)

    @classmethod
    def from_env(cls, value: str | None = None) -> FaultInjection | None:
        value = os.environ.get("HEYGEM_FAULT", "") if value is None else value
        return cls.parse(value) if value else None

    def __str__(self) -> str:
        return f"{self.stage}:{self.kind}" + (f":{self.seconds:g}" if self.seconds else "")


@dataclass(frozen=True)
class OptionInfo:
    """How an option is offered: help text, command-line flag, per-job override."""

    help: str
    per_job: bool = False  # a service client may override it for one job
    cli: bool = True  # offered on the command lines
    flag: str | None = None  # default: --name-with-dashes
    negative: bool = False  # a boolean offered as a --no-... flag that turns it off
    metavar: str | None = None


def option(default: Any = MISSING, *, factory: Callable[[], Any] | None = None, **info: Any) -> Any:
    """A GenerateOptions field with its OptionInfo."""
    metadata = {"option": OptionInfo(**info)}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class GenerateOptions:
    """Everything that shapes one generation. Defaults are the embedded, download-free setup."""

    generator: GeneratorName = option(
        "rewrite",
        per_job=True,
        help="rewrite (embedded: the template's own mouths re-timed to the voice) or wav2lip",
    )
    checkpoint: Path | None = option(None, help="Wav2Lip .pth (for --generator wav2lip)")
    backend: BackendName = option("onnxruntime", per_job=True, help="runtime of the generator")
    device: DeviceName = option(
        "auto", help="auto picks CUDA only if a live session proves it works"
    )
    require_gpu: bool = option(
        False, help="fail instead of warning when the GPU silently falls back to CPU"
    )
    # Measured by `nox -s bench` (README "Performance"): bf16 runs Wav2Lip ~2x faster on
    # CPUs with AVX512-BF16/AMX at ~36 dB PSNR vs fp32, outside the regression tolerance,
    # so fp32 stays the default. Static int8 (QDQ) was measured too and not offered.
    precision: PrecisionName = option(
        "fp32",
        per_job=True,
        help="generator arithmetic: fp32, or bf16 (torch back-end; faster on CPUs with "
        "AVX512-BF16/AMX, slightly lossy)",
    )
    batch_size: int = option(16, per_job=True, help="frames per generator batch")
    # The HeyGem `num_threads` knob: DataLoader worker processes preparing batches.
    num_workers: int = option(0, help="DataLoader worker processes (HeyGem's num_threads)")
    start_method: StartMethod = option("spawn", help="how DataLoader workers are started")
    fps: float | None = option(
        None, per_job=True, help="output frame rate (default: the template's; 25 for a still)"
    )
    preset: X264Preset = option("veryfast", per_job=True, help="x264 preset of the output")
    crf: int = option(23, per_job=True, help="x264 quality (0 lossless .. 51 worst)")
    # Limits that turn absurd inputs into a clear error instead of an OOM.
    max_width: int = option(3840, cli=False, help="widest template accepted")
    max_height: int = option(2160, cli=False, help="tallest template accepted")
    max_audio_seconds: float = option(3600.0, cli=False, help="longest audio accepted")
    max_template_frames: int = option(30 * 60 * 60, cli=False, help="longest template")
    # A stage silent for this long (seconds) ends the job as PipelineStalled.
    stall_timeout: float = option(
        10.0, per_job=True, help="seconds a stage may stay silent before the job fails"
    )
    cache_dir: Path = option(factory=default_cache_dir, help="template/ONNX cache")
    use_face_cache: bool = option(
        True, flag="--no-cache", negative=True, help="re-analyse the template"
    )
    fault: FaultInjection | None = option(
        None,
        per_job=True,
        metavar="STAGE:KIND[:SECONDS]",
        help="inject a failure to rehearse it (default: $HEYGEM_FAULT): stage "
        f"{'/'.join(PIPELINE_STAGES)}, kind {'/'.join(FAULT_KINDS)}",
    )

    def validated(self) -> GenerateOptions:
        """Return self if every option is sane, else raise InvalidOption saying which."""
        _one_of("generator", self.generator, GENERATORS)
        _one_of("backend", self.backend, BACKENDS)
        _one_of("device", self.device, DEVICES)
        _one_of("precision", self.precision, PRECISIONS)
        _one_of("preset", self.preset, X264_PRESETS)
        _one_of("start method", self.start_method, START_METHODS)
        _in_range("batch size", self.batch_size, 1, 512)
        _in_range("num workers", self.num_workers, 0, 64)
        _in_range("crf", self.crf, 0, 51)
        _in_range("stall timeout", self.stall_timeout, 0.5, 3600)
        if self.fps is not None:
            _in_range("fps", self.fps, 1, 120)
        if self.generator == "wav2lip" and self.checkpoint is None:
            raise InvalidOption(
                "the wav2lip generator needs a checkpoint",
                hint="pass --checkpoint PATH to a Wav2Lip .pth (96x96 model)",
            )
        if (
            self.fault is not None
            and self.fault.kind in ("kill", "sigbus")
            and (self.fault.stage != "load" or self.num_workers == 0)
        ):
            raise InvalidOption(
                f"fault {self.fault.kind} needs a process: it applies to stage 'load' with "
                "--num-workers > 0",
                hint="use HEYGEM_FAULT=load:sigbus with --num-workers 1",
            )
        if self.precision == "bf16" and self.backend != "torch":
            raise InvalidOption(
                "precision bf16 runs on the torch back-end (ONNX Runtime has no bf16 CPU "
                "convolutions)",
                hint="add --backend torch, or use --precision fp32",
            )
        if self.device == "cpu" and self.require_gpu:
            raise InvalidOption(
                "--require-gpu contradicts --device cpu", hint="drop one of the two"
            )
        return self

    def with_changes(self, **changes: Any) -> GenerateOptions:
        return replace(self, **changes).validated()

    @property
    def gpu_requested(self) -> bool:
        """The user asked for a GPU (``auto`` asks only where one is proven to work)."""
        return self.device == "cuda" or self.require_gpu

    # -- the command-line view -----------------------------------------------------------
    @classmethod
    def from_env(cls) -> GenerateOptions:
        """The defaults, with what the environment sets (HEYGEM_FAULT, HEYGEM_CACHE_DIR)."""
        return cls(fault=FaultInjection.from_env())

    @classmethod
    def add_arguments(
        cls,
        parser: argparse.ArgumentParser,
        *,
        only: Iterable[str] | None = None,
        base: GenerateOptions | None = None,
        title: str = "generation options",
    ) -> None:
        """Add a flag per CLI option; ``base`` supplies the defaults shown in the help."""
        base = base or cls()
        wanted = set(only) if only is not None else None
        group = parser.add_argument_group(title)
        for spec in option_specs():
            if not spec.info.cli or (wanted is not None and spec.name not in wanted):
                continue
            default = getattr(base, spec.name)
            kwargs: dict[str, Any] = {"dest": spec.name, "default": argparse.SUPPRESS}
            if spec.kind is bool:
                kwargs["action"] = "store_false" if spec.info.negative else "store_true"
                shown = ""
            else:
                kwargs["type"] = _argument_type(spec)
                kwargs["metavar"] = spec.info.metavar or (
                    "{" + ",".join(spec.choices) + "}" if spec.choices else None
                )
                shown = f" (default: {default})" if default is not None else ""
            group.add_argument(spec.flag, help=spec.info.help + shown, **kwargs)

    @classmethod
    def from_arguments(
        cls, args: argparse.Namespace, base: GenerateOptions | None = None
    ) -> GenerateOptions:
        """The options the parsed flags describe, on top of ``base`` (validated)."""
        base = base or cls.from_env()
        given = {s.name: getattr(args, s.name) for s in option_specs() if hasattr(args, s.name)}
        return base.with_changes(**given)

    def changes_from(self, base: GenerateOptions) -> dict[str, Any]:
        """The fields that differ from ``base``."""
        return {
            spec.name: getattr(self, spec.name)
            for spec in option_specs()
            if getattr(self, spec.name) != getattr(base, spec.name)
        }


@dataclass(frozen=True)
class OptionSpec:
    """One option as the CLIs and the service see it."""

    name: str
    kind: type  # bool, int, float, str, Path or FaultInjection (without None)
    optional: bool  # None is a value
    choices: tuple[str, ...]
    info: OptionInfo

    @property
    def flag(self) -> str:
        return self.info.flag or "--" + self.name.replace("_", "-")


def option_specs() -> Iterator[OptionSpec]:
    """Every GenerateOptions field with its type resolved."""
    hints = typing.get_type_hints(GenerateOptions)
    for f in fields(GenerateOptions):
        yield _spec(f, hints[f.name])


def per_job_fields() -> list[OptionSpec]:
    """The options a service client may override for one job."""
    return [s for s in option_specs() if s.info.per_job]


def _spec(f: Field[Any], hint: Any) -> OptionSpec:
    optional = False
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        members = [a for a in typing.get_args(hint) if a is not NoneType]
        optional = len(members) < len(typing.get_args(hint))
        hint = members[0]
    choices: tuple[str, ...] = ()
    if typing.get_origin(hint) is Literal:
        choices = tuple(str(a) for a in typing.get_args(hint))
        hint = str
    info = f.metadata.get("option") or OptionInfo(help=f.name)
    return OptionSpec(f.name, hint, optional, choices, info)


def _argument_type(spec: OptionSpec) -> Callable[[str], Any]:
    """An argparse type: converts and checks one value, errors become usage errors."""

    def convert(text: str) -> Any:
        try:
            if spec.choices and text not in spec.choices:
                raise ValueError(f"choose one of: {', '.join(spec.choices)}")
            if spec.kind is FaultInjection:
                return FaultInjection.parse(text)
            return spec.kind(text)
        except InvalidOption as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r} for {spec.flag}: {exc}") from None

    convert.__name__ = spec.kind.__name__
    return convert


def _one_of(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidOption(
            f"{name} {value!r} is not supported", hint=f"choose one of: {', '.join(allowed)}"
        )


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidOption(
            f"{name} {value} is out of range", hint=f"use a value from {low:g} to {high:g}"
        )
