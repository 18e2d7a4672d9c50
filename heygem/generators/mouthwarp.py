"""The embedded, weight-free generator: an audio-driven parametric mouth deformation.

A torch module (so it exports to ONNX and runs on either back-end) that reads speech
energy from the Wav2Lip mel window and opens the mouth accordingly: the lower lip and
chin are pulled down with a smooth displacement field (``grid_sample``), the corners
draw in slightly, and a soft dark cavity appears between the lips. Silence (mel at its
floor) gives exactly zero displacement: a neutral mouth.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

CROP_SIZE = 128
# Mean normalised mel energy (speech band, first steps of the window) mapped to 0..1.
ENERGY_CLOSED = -3.3
ENERGY_OPEN = -1.3


class MouthWarp(nn.Module):
    """face [B,3,S,S] in 0..1 (BGR, mouth centred), mel [B,1,80,16] -> face [B,3,S,S]."""

    u: torch.Tensor
    v: torch.Tensor
    cavity: torch.Tensor

    def __init__(self, size: int = CROP_SIZE, max_open: float = 0.22) -> None:
        super().__init__()
        axis = torch.linspace(-1.0, 1.0, size)
        v, u = torch.meshgrid(axis, axis, indexing="ij")
        self.register_buffer("u", u[None], persistent=False)  # [1,S,S]
        self.register_buffer("v", v[None], persistent=False)
        self.max_open = max_open
        # BGR colour of the mouth cavity.
        self.register_buffer(
            "cavity", torch.tensor([0.10, 0.07, 0.22]).view(1, 3, 1, 1), persistent=False
        )

    def openness(self, mel: torch.Tensor) -> torch.Tensor:
        energy = mel[:, 0, 8:56, 1:7].mean(dim=(1, 2))
        return ((energy - ENERGY_CLOSED) / (ENERGY_OPEN - ENERGY_CLOSED)).clamp(0.0, 1.0)

    def forward(self, face: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        amount = self.openness(mel).view(-1, 1, 1)  # [B,1,1]
        u, v = self.u, self.v
        across = torch.exp(-((u / 0.55) ** 2))  # strongest at the centre line
        lower = torch.exp(-(((v - 0.12) / 0.42) ** 2))  # lower lip and chin move down
        upper = torch.exp(-(((v + 0.08) / 0.22) ** 2))  # upper lip lifts a little
        drop = amount * self.max_open * across * (lower - 0.3 * upper)
        narrow = 1.0 + 0.10 * amount * torch.exp(-((v / 0.3) ** 2))
        grid = torch.stack([u * narrow, v - drop], dim=-1)  # [B,S,S,2] source positions
        warped = F.grid_sample(
            face, grid, mode="bilinear", padding_mode="border", align_corners=True
        )
        half_height = amount * 0.16 + 1e-3
        inside = 1.0 - (u / 0.34) ** 2 - ((v - 0.04) / half_height) ** 2
        cavity_mask = (torch.sigmoid(inside * 6.0) * (amount * 4.0).clamp(0.0, 1.0))[:, None]
        return warped * (1.0 - 0.85 * cavity_mask) + self.cavity * (0.85 * cavity_mask)
