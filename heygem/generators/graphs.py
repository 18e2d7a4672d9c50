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
from heygem.generators.face_features import FACE_FEATURE_SHAPES
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


class Wav2LipFaceEncoder(nn.Module):
    """``face`` [B,3,96,96] -> ``features`` [B,FACE_FEATURES]: the face encoder's seven
    block outputs (the decoder's skip connections), flattened and concatenated.

    They depend on the template frame alone, not on the audio, so they are computed once
    per template frame and cached with the template (heygem.generators.face_features)."""

    def __init__(self, graph: Wav2LipGraph) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, face: torch.Tensor) -> torch.Tensor:
        x = torch.cat([face * self.graph.upper_half, face], dim=1)
        parts = []
        for block in self.graph.model.face_encoder_blocks:
            x = block(x)
            parts.append(x.flatten(1))
        return torch.cat(parts, dim=1)


class Wav2LipDecoder(nn.Module):
    """(``features`` [B,FACE_FEATURES], ``mel`` [B,1,80,16]) -> ``face_out`` [B,3,96,96]:
    the rest of Wav2Lip (audio encoder, face decoder, output block)."""

    def __init__(self, graph: Wav2LipGraph) -> None:
        super().__init__()
        self.model = graph.model

    def forward(self, features: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        skips, start = [], 0
        for channels, side in FACE_FEATURE_SHAPES:
            size = channels * side * side
            skips.append(features[:, start : start + size].reshape(-1, channels, side, side))
            start += size
        x = self.model.audio_encoder(mel)
        for block, skip in zip(self.model.face_decoder_blocks, reversed(skips), strict=True):
            x = torch.cat((block(x), skip), dim=1)
        out: torch.Tensor = self.model.output_block(x)
        return out


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
