"""The golden regression scenarios, the step order and the drift-rehearsal hook.

Standard library only: ``heygem-diagnose --help`` lists the scenario names without
importing numpy, torch or the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from heygem.config import GenerateOptions
from heygem.errors import InvalidOption

# The default generator on CPU, losslessly encoded (crf 0: H.264 High 4:4:4 Predictive), so
# composites are compared exactly; loading in-process keeps the run deterministic.
GOLDEN_OPTIONS = GenerateOptions(device="cpu", crf=0, preset="veryfast", num_workers=0)

__all__ = [
    "DEFAULT_GOLDEN",
    "PERTURBABLE",
    "SCENARIOS",
    "SCENARIO_NAMES",
    "SEEDED_BATCH",
    "STEPS",
    "Perturbation",
    "Scenario",
    "parse_perturbation",
    "select_scenarios",
]

# The checkout's stored golden (what CI checks). An installed wheel has none: record your
# own before upgrading (`regress record --out DIR`) and check against it afterwards.
DEFAULT_GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden"

# Pipeline order: the first step that drifted is the one to look at, later steps
# usually drift because of it. "inputs" comes first so that a change in the generated
# test media (opencv's warp/resize, PyAV's encoder) is not blamed on the pipeline.
STEPS: tuple[str, ...] = (
    "inputs", "audio_features", "face_track", "generate", "composite", "mux", "lip_sync",
)  # fmt: skip

# Not a pipeline run: the generator alone on heygem.generators.export.example_inputs.
SEEDED_BATCH = "seeded-batch"


@dataclass(frozen=True)
class Scenario:
    """One fixed, generated input pair run through the whole pipeline.

    ``samples`` are output frame indices whose composited luma is stored (mouth crop and
    a reduced full frame) and whose generator input is re-run for the generate step;
    they mix speech, silence, reversed (ping-pong) and face-less frames on purpose.
    """

    name: str
    description: str
    audio_seconds: float
    seed: int
    template: Literal["video", "still"] = "video"
    template_seconds: float = 2.0
    size: tuple[int, int] = (320, 240)
    gap: tuple[int, int] | None = None  # template frames [start, stop) shown as grey cards
    samples: tuple[int, ...] = ()


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "video",
        "2.4 s speech over a 2 s 320x240 template (ends in the reverse pass)",
        audio_seconds=2.4,
        seed=3,
        samples=(5, 18, 47, 55),
    ),
    Scenario(
        "still",
        "2 s speech over a still PNG of one template frame",
        audio_seconds=2.0,
        seed=4,
        template="still",
        samples=(3, 27, 29, 45),
    ),
    Scenario(
        "face-gap",
        "2.4 s speech over a template whose frames 20-34 have no face",
        audio_seconds=2.4,
        seed=5,
        gap=(20, 35),
        samples=(12, 25, 33, 40),
    ),
    Scenario(
        "long",
        "12 s speech over a 2 s template: ping-pong looped six times",
        audio_seconds=12.0,
        seed=6,
        samples=(30, 72, 130, 185, 260),
    ),
)
SCENARIO_NAMES: tuple[str, ...] = (SEEDED_BATCH, *(s.name for s in SCENARIOS))


def select_scenarios(names: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The requested names in the canonical order (all of them when none are given)."""
    if not names:
        return SCENARIO_NAMES
    unknown = sorted(set(names) - set(SCENARIO_NAMES))
    if unknown:
        raise InvalidOption(
            f"unknown regression scenario {', '.join(unknown)}",
            hint=f"choose from: {', '.join(SCENARIO_NAMES)}",
        )
    return tuple(n for n in SCENARIO_NAMES if n in names)


# --- the rehearsal hook ---------------------------------------------------------------
PERTURBABLE: tuple[str, ...] = ("audio_features", "face_track", "generate")


@dataclass(frozen=True)
class Perturbation:
    """A deliberate drift injected into one step, to prove the checker can fail.

    ``audio_features``: ``amount`` is added to the whole mel spectrogram (normalised
    units, range -4..4). ``face_track``: every face region moves ``amount`` pixels right
    (rounded to even pixels). ``generate``: ``amount`` is added to the generator output
    (0..1 scale) before clipping. The CLI spells it ``--perturb STEP:AMOUNT``.
    """

    step: str
    amount: float

    def __post_init__(self) -> None:
        if self.step not in PERTURBABLE:
            raise InvalidOption(
                f"cannot perturb step {self.step!r}",
                hint=f"choose one of: {', '.join(PERTURBABLE)}",
            )


def parse_perturbation(text: str) -> Perturbation:
    """'generate:0.05' -> Perturbation('generate', 0.05)."""
    step, _, amount = text.partition(":")
    try:
        value = float(amount)
    except ValueError:
        raise InvalidOption(
            f"perturbation {text!r} is not STEP:AMOUNT", hint="e.g. --perturb generate:0.05"
        ) from None
    return Perturbation(step, value)
