"""The embedded generator's graph: a geometric jaw and lower-lip move on a real mouth.

The ``rewrite`` generator replaces the template's mouth in every frame (``mouths.py``
chooses, per output frame, the template mouth whose measured opening matches the voice
and aligns it to the frame). What retrieval cannot supply, this graph renders: when the
voice asks for a wider mouth than the chosen one (always on a still, which has one mouth
only), the lower lip, chin and jaw move down by the missing amount with a smooth
displacement field, the upper lip and upper teeth stay where they are, and the band that
opens between them shows a shaded mouth interior with the upper teeth's edge.

Inputs: ``face`` [B,3,S,S] 0..1 BGR (the aligned mouth crop), ``control`` [B,CONTROL]
(the mouth's geometry in the crop's normalised coordinates -1..1 and the extra opening;
see ``Control``). A zero extra opening returns ``face`` exactly.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# The control vector's layout and the runner that skips identity rows live in a module
# without torch (a job on ONNX Runtime does not import torch); re-exported here.
from heygem.generators.control import CONTROL, Control, OpeningRowsRunner  # noqa: F401

CROP_SIZE = 192
FIELD_SCALE = 2


class MouthRenderer(nn.Module):
    """face [B,3,S,S], control [B,CONTROL] -> face [B,3,S,S] (see the module docstring).

    The displacement, the interior's mask and its colours are smooth, so they are computed
    on a grid ``FIELD_SCALE`` times coarser and upsampled: only the resampling of the face
    and the final blend run at full resolution.
    """

    condition_name = "control"
    u: torch.Tensor
    v: torch.Tensor
    rows: torch.Tensor

    def __init__(self, size: int = CROP_SIZE) -> None:
        super().__init__()
        coarse = size // FIELD_SCALE
        axis = torch.linspace(-1.0, 1.0, coarse)
        v, u = torch.meshgrid(axis, axis, indexing="ij")
        self.register_buffer("u", u[None], persistent=False)  # [1,s,s] the field grid
        self.register_buffer("v", v[None], persistent=False)
        rows = torch.arange(size, dtype=torch.float32).view(1, size, 1).expand(1, size, size)
        self.register_buffer("rows", rows.contiguous(), persistent=False)  # [1,S,S] pixel rows
        self.size = size
        self.pixel = 2.0 / (coarse - 1)  # one field pixel in normalised units

    def example_condition(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """Plausible random mouths (for export parity checks and seeded fingerprints)."""
        r = torch.rand(batch, CONTROL, generator=generator)
        control = torch.zeros(batch, CONTROL)
        control[:, Control.OPEN] = 0.3 * r[:, 0]
        control[:, Control.CENTER_X] = 0.1 * (r[:, 1] - 0.5)
        control[:, Control.HALF_WIDTH] = 0.3 + 0.1 * r[:, 2]
        control[:, Control.UPPER] = -0.15 + 0.05 * r[:, 3]
        control[:, Control.LOWER] = control[:, Control.UPPER] + 0.1 * r[:, 4]
        control[:, Control.CORNERS] = -0.12 + 0.04 * r[:, 5]
        control[:, Control.CHIN] = 0.45 + 0.1 * r[:, 6]
        control[:, Control.TEETH] = (r[:, 7] > 0.5).float()
        return control

    def forward(self, face: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
        def column(index: Control) -> torch.Tensor:
            return control[:, int(index)].view(-1, 1, 1)

        amount = column(Control.OPEN).clamp(min=0.0)
        cx, half_width = column(Control.CENTER_X), column(Control.HALF_WIDTH).clamp(min=0.05)
        upper, lower = column(Control.UPPER), column(Control.LOWER)
        corners, chin = column(Control.CORNERS), column(Control.CHIN)
        teeth = column(Control.TEETH)
        u, v = self.u, self.v

        # Across the mouth: 1 on the centre line, 0 at the corners (lips meet there).
        across = (1.0 - ((u - cx) / half_width) ** 2).clamp(min=0.0)
        upper_line = corners + (upper - corners) * across
        lower_line = corners + (lower - corners) * across
        middle = 0.5 * (upper_line + lower_line)
        # The jaw moves as a whole below the lips: broad across the chin, lips taper.
        jaw = torch.exp(-(((u - cx) / (1.7 * half_width)) ** 2))
        below_lips = ((v - lower_line) / (0.6 * (chin - lower_line).clamp(min=0.05))).clamp(
            0.0, 1.0
        )
        profile = torch.sqrt(across) * (1.0 - below_lips) + jaw * below_lips
        starts = torch.sigmoid((v - middle) / (0.7 * self.pixel))  # 0 above the lip seam
        # Below the chin the move fades over more than its own size (the map stays monotone).
        fade = 1.0 - ((v - chin).clamp(min=0.0) / (1.3 * amount + 0.08)).clamp(0.0, 1.0)
        drop = amount * profile * starts * fade

        # The band that opened: from the seam down to the moved lower lip.
        opening = amount * torch.sqrt(across)
        edge = 0.8 * self.pixel
        inside = torch.sigmoid((v - middle) / edge) * torch.sigmoid((middle + opening - v) / edge)
        inside = inside * (opening / (2.0 * self.pixel)).clamp(0.0, 1.0)
        depth = ((v - middle) / (opening + 1e-4)).clamp(0.0, 1.0)  # 0 at the seam, 1 at the lip
        skin = F.avg_pool2d(face, 8).mean(dim=(2, 3), keepdim=True)
        # The cavity: shadow under the upper teeth, the tongue's red toward the lower lip,
        # darker toward the corners.
        tongue = torch.sigmoid((depth - 0.55) * 8.0)[:, None]
        dark = skin * torch.tensor([0.12, 0.1, 0.2]).view(1, 3, 1, 1)
        red = skin * torch.tensor([0.22, 0.2, 0.42]).view(1, 3, 1, 1)
        cavity = (dark * (1.0 - tongue) + red * tongue) * (0.6 + 0.4 * across)[:, None]
        # The upper teeth's edge: a pale band under the upper lip, shaded toward the corners.
        tooth_height = (0.35 * opening).clamp(max=0.07)
        in_teeth = (torch.sigmoid((middle + tooth_height - v) / edge) * teeth)[:, None]
        tooth_colour = (skin.mean(dim=1, keepdim=True) * 1.15 + 0.12).clamp(max=0.95)
        tooth_colour = tooth_colour * torch.tensor([0.96, 0.98, 1.0]).view(1, 3, 1, 1)
        teeth_shade = (0.55 + 0.45 * across)[:, None]
        interior = cavity * (1.0 - in_teeth) + tooth_colour * teeth_shade * in_teeth

        fields = torch.cat([drop[:, None], inside[:, None], interior], dim=1)  # [B,5,s,s]
        fields = F.interpolate(
            fields, size=(self.size, self.size), mode="bilinear", align_corners=True
        )
        # The move is vertical only: each output pixel reads its column at a shifted row,
        # interpolated between two gathered rows (ONNX Runtime's GridSample costs 3x more).
        rows = (self.rows - fields[:, 0] * (0.5 * (self.size - 1))).clamp(0.0, self.size - 1.0)
        top_row = torch.floor(rows).clamp(max=self.size - 2.0)
        frac = (rows - top_row)[:, None]
        index = top_row.long()[:, None].expand(-1, face.shape[1], -1, -1)
        # Weighted this way, frac 0 and 1 give the gathered rows exactly (identity stays exact).
        moved = (
            torch.gather(face, 2, index) * (1.0 - frac) + torch.gather(face, 2, index + 1) * frac
        )
        blend = fields[:, 1:2]
        return moved * (1.0 - blend) + fields[:, 2:5] * blend
