"""Progress of the steps of a job, for anything that shows it (CLI bars, service jobs).

Every step that can take more than a second reports through one callback: the model
load (and its one-off ONNX export), the audio features, the template analysis (face
detection and crops, cached per template), Wav2Lip's face encoding (cached likewise),
and the generation itself (frames written).
Steps before streaming run concurrently, so reports of different steps interleave.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

StepName = Literal[
    "load_model", "export_onnx", "audio_features", "template", "face_features", "generate"
]
STEP_TITLES: dict[str, str] = {
    "load_model": "loading the generator",
    "export_onnx": "exporting the generator to ONNX (once per model)",
    "audio_features": "audio features",
    "template": "analysing the template (once per template)",
    "face_features": "encoding the template's faces (once per template and model)",
    "generate": "generating",
}


@dataclass(frozen=True)
class StepProgress:
    """``done`` of ``total`` units (frames) of ``step``; ``total`` None when the step has
    no countable units (a model export). ``finished`` is set once, on the last report."""

    step: StepName
    done: int
    total: int | None
    finished: bool = False

    @property
    def title(self) -> str:
        return STEP_TITLES[self.step]


StepCallback = Callable[[StepProgress], None]
