"""What the pipeline needs to know about a generator besides its graph (no torch here).

Kept apart from ``graphs`` so that a job on ONNX Runtime with an exported model in the
cache never imports torch (~1 s of start-up on the project machine).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, cast

from heygem.face.geometry import CropSpec


@dataclass(frozen=True)
class GeneratorSpec:
    name: str
    crop: CropSpec
    # Whether silent frames may skip the model: true when silence means "no change".
    identity_when_silent: bool
    # Identifies the weights, for the ONNX export cache.
    fingerprint: str
    # What the graph's second input is: a mel window per frame, or the control vector of
    # the mouth chosen for the frame (heygem.generators.samples builds either).
    condition: Literal["mel", "mouth"] = "mel"

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "crop": {"kind": self.crop.kind, "size": self.crop.size},
                "identity_when_silent": self.identity_when_silent,
                "fingerprint": self.fingerprint,
                "condition": self.condition,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> GeneratorSpec:
        data: dict[str, Any] = json.loads(text)
        crop = data["crop"]
        return cls(
            name=str(data["name"]),
            crop=CropSpec(crop["kind"], int(crop["size"])),
            identity_when_silent=bool(data["identity_when_silent"]),
            fingerprint=str(data["fingerprint"]),
            condition=cast(Literal["mel", "mouth"], data["condition"]),
        )
