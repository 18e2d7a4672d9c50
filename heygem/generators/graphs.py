"""Every generator behind one graph signature, so back-ends and export treat them alike.

Signature: ``face`` [B,3,S,S] float32 0..1 (BGR crop) and a condition -> ``face_out``
[B,3,S,S] float32 0..1. The condition is ``mel`` [B,1,80,16] for Wav2Lip and ``control``
[B,CONTROL] (the mouth's geometry and extra opening) for the embedded ``rewrite``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from heygem.face.geometry import CropSpec
from heygem.generators import rewrite
from heygem.generators.spec import GeneratorSpec
from heygem.generators.wav2lip import FACE_SIZE, Wav2Lip, load_wav2lip_checkpoint
from heygem.hashing import content_hash


class Wav2LipGraph(nn.Module):
    """Wav2Lip's own preprocessing inside the graph: lower half masked + reference."""

    upper_half: torch.Tensor

    def __init__(self, model: Wav2Lip) -> None:
        super().__init__()
        self.model = model
        mask = torch.ones(1, 1, FACE_SIZE, 1)
        mask[:, :, FACE_SIZE // 2 :] = 0.0
        self.register_buffer("upper_half", mask, persistent=False)

    def forward(self, face: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        masked = face * self.upper_half
        return self.model(mel, torch.cat([masked, face], dim=1))


def build_graph(name: str, checkpoint: Path | None) -> tuple[nn.Module, GeneratorSpec]:
    if name == "rewrite":
        spec = GeneratorSpec(
            name,
            CropSpec("lowerface", rewrite.CROP_SIZE),
            # Silence shows a closed mouth, which a talking template's frame may not have.
            False,
            f"rewrite-{rewrite.CROP_SIZE}-v1",
            condition="mouth",
        )
        return rewrite.MouthRenderer().eval(), spec
    if name == "wav2lip":
        assert checkpoint is not None  # enforced by GenerateOptions.validated
        model = load_wav2lip_checkpoint(checkpoint)
        fingerprint = f"wav2lip-{content_hash(checkpoint)}"
        spec = GeneratorSpec(name, CropSpec("face", FACE_SIZE), False, fingerprint)
        return Wav2LipGraph(model).eval(), spec
    raise ValueError(f"unknown generator {name!r}")
