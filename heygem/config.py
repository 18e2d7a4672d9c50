"""Options of one generation job: a frozen value, validated once, passed explicitly."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from heygem.errors import InvalidOption

GeneratorName = Literal["mouthwarp", "wav2lip"]
BackendName = Literal["onnxruntime", "torch"]
DeviceName = Literal["auto", "cpu", "cuda"]

GENERATORS: tuple[str, ...] = ("mouthwarp", "wav2lip")
BACKENDS: tuple[str, ...] = ("onnxruntime", "torch")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
X264_PRESETS: tuple[str, ...] = (
    "ultrafast", "superfast", "veryfast", "faster", "fast",
    "medium", "slow", "slower", "veryslow",
)  # fmt: skip
START_METHODS: tuple[str, ...] = ("spawn", "forkserver", "fork")


def default_cache_dir() -> Path:
    """HEYGEM_CACHE_DIR, else $XDG_CACHE_HOME/heygem, else ~/.cache/heygem."""
    if explicit := os.environ.get("HEYGEM_CACHE_DIR"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "heygem"


@dataclass(frozen=True)
class FaultInjection:
    """Rehearse failures on purpose (tests, users checking their alerting).

    ``stage`` names the stage to break; ``kind`` is what happens to it. Read from the
    ``HEYGEM_FAULT`` environment variable as ``stage:kind[:seconds]``.
    """

    stage: str
    kind: Literal["hang", "crash", "slow", "kill", "sigbus", "never_start"]
    seconds: float = 0.0

    @classmethod
    def from_env(cls, value: str | None = None) -> FaultInjection | None:
        value = os.environ.get("HEYGEM_FAULT", "") if value is None else value
        if not value:
            return None
        parts = value.split(":")
        kinds = ("hang", "crash", "slow", "kill", "sigbus", "never_start")
        if len(parts) not in (2, 3) or parts[1] not in kinds:
            raise InvalidOption(
                f"HEYGEM_FAULT={value!r} is not understood",
                hint=f"use STAGE:KIND[:SECONDS] with KIND one of {', '.join(kinds)}",
            )
        seconds = float(parts[2]) if len(parts) == 3 else 0.0
        return cls(stage=parts[0], kind=parts[1], seconds=seconds)  # type: ignore[arg-type]


@dataclass(frozen=True)
class GenerateOptions:
    """Everything that shapes one generation. Defaults are the embedded, download-free setup."""

    generator: GeneratorName = "mouthwarp"
    checkpoint: Path | None = None
    backend: BackendName = "onnxruntime"
    device: DeviceName = "auto"
    require_gpu: bool = False
    batch_size: int = 16
    # The HeyGem `num_threads` knob: DataLoader worker processes preparing batches.
    num_workers: int = 0
    start_method: str = "spawn"
    fps: float | None = None  # None: the template's own rate (25 for a still image)
    preset: str = "veryfast"
    crf: int = 23
    # Limits that turn absurd inputs into a clear error instead of an OOM.
    max_width: int = 3840
    max_height: int = 2160
    max_audio_seconds: float = 3600.0
    max_template_frames: int = 30 * 60 * 60
    # A stage silent for this long (seconds) ends the job as PipelineStalled.
    stall_timeout: float = 10.0
    cache_dir: Path = field(default_factory=default_cache_dir)
    use_face_cache: bool = True
    fault: FaultInjection | None = None

    def validated(self) -> GenerateOptions:
        """Return self if every option is sane, else raise InvalidOption saying which."""
        _one_of("generator", self.generator, GENERATORS)
        _one_of("backend", self.backend, BACKENDS)
        _one_of("device", self.device, DEVICES)
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
        if self.device == "cpu" and self.require_gpu:
            raise InvalidOption(
                "--require-gpu contradicts --device cpu", hint="drop one of the two"
            )
        return self

    def with_changes(self, **changes: object) -> GenerateOptions:
        return replace(self, **changes).validated()  # type: ignore[arg-type]


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
