"""The published Wav2Lip generator (Rudrabha/Wav2Lip, 96x96 faces) and its checkpoints.

Module names and layer order follow ``models/wav2lip.py`` exactly so the published
``wav2lip.pth`` / ``wav2lip_gan.pth`` state dicts load strictly. The 192x192 forks add
blocks and do not load those checkpoints; they are rejected with a message saying so.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from heygem.errors import (
    CheckpointError,
    InvalidOption,
    OutputNotWritable,
    ProviderUnavailable,
)

logger = logging.getLogger(__name__)

FACE_SIZE = 96
MEL_SHAPE = (1, 80, 16)
PARAMETER_COUNT = 36_298_035

_PREFIX = "module."
_HINT_GET = (
    "use the published Wav2Lip generator checkpoint (wav2lip.pth or wav2lip_gan.pth "
    "from Rudrabha/Wav2Lip), or one written by save_wav2lip_checkpoint()"
)


class Conv2d(nn.Module):
    """Conv + BatchNorm (``conv_block``), optional residual add, then ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int | tuple[int, int],
        padding: int,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride, padding), nn.BatchNorm2d(cout)
        )
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_block(x)
        if self.residual:
            # Upstream uses +=; out-of-place gives the same numbers and exports cleanly.
            out = out + x
        return self.act(out)


class Conv2dTranspose(nn.Module):
    """Transposed conv + BatchNorm (``conv_block``), then ReLU."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int,
        padding: int,
        output_padding: int = 0,
    ) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ConvTranspose2d(cin, cout, kernel_size, stride, padding, output_padding),
            nn.BatchNorm2d(cout),
        )
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv_block(x))


def _res(c: int) -> Conv2d:
    """The 3x3 same-size residual block the network is mostly made of."""
    return Conv2d(c, c, kernel_size=3, stride=1, padding=1, residual=True)


class Wav2Lip(nn.Module):
    """Wav2Lip generator.

    ``forward(audio [B,1,80,16], face [B,6,96,96]) -> [B,3,96,96]`` in 0..1. ``face`` is
    the lower-half-masked crop concatenated on channels with the reference crop (BGR,
    /255). Upstream's 5-D (time-stacked) input path is left out: callers batch frames.
    """

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv2d(6, 16, kernel_size=7, stride=1, padding=3)),  # 96
                nn.Sequential(
                    Conv2d(16, 32, kernel_size=3, stride=2, padding=1),
                    _res(32),
                    _res(32),
                ),  # 48
                nn.Sequential(
                    Conv2d(32, 64, kernel_size=3, stride=2, padding=1),
                    _res(64),
                    _res(64),
                    _res(64),
                ),  # 24
                nn.Sequential(
                    Conv2d(64, 128, kernel_size=3, stride=2, padding=1),
                    _res(128),
                    _res(128),
                ),  # 12
                nn.Sequential(
                    Conv2d(128, 256, kernel_size=3, stride=2, padding=1),
                    _res(256),
                    _res(256),
                ),  # 6
                nn.Sequential(Conv2d(256, 512, kernel_size=3, stride=2, padding=1), _res(512)),
                nn.Sequential(  # 3 -> 1
                    Conv2d(512, 512, kernel_size=3, stride=1, padding=0),
                    Conv2d(512, 512, kernel_size=1, stride=1, padding=0),
                ),
            ]
        )

        self.audio_encoder = nn.Sequential(  # 1x80x16 -> 512x1x1
            Conv2d(1, 32, kernel_size=3, stride=1, padding=1),
            _res(32),
            _res(32),
            Conv2d(32, 64, kernel_size=3, stride=(3, 1), padding=1),
            _res(64),
            _res(64),
            Conv2d(64, 128, kernel_size=3, stride=3, padding=1),
            _res(128),
            _res(128),
            Conv2d(128, 256, kernel_size=3, stride=(3, 2), padding=1),
            _res(256),
            Conv2d(256, 512, kernel_size=3, stride=1, padding=0),
            Conv2d(512, 512, kernel_size=1, stride=1, padding=0),
        )

        # Input channels = previous block's output + the concatenated skip feature.
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(Conv2d(512, 512, kernel_size=1, stride=1, padding=0)),  # 1
                nn.Sequential(
                    Conv2dTranspose(1024, 512, kernel_size=3, stride=1, padding=0),
                    _res(512),
                ),  # 3
                nn.Sequential(
                    Conv2dTranspose(1024, 512, 3, stride=2, padding=1, output_padding=1),
                    _res(512),
                    _res(512),
                ),  # 6
                nn.Sequential(
                    Conv2dTranspose(768, 384, 3, stride=2, padding=1, output_padding=1),
                    _res(384),
                    _res(384),
                ),  # 12
                nn.Sequential(
                    Conv2dTranspose(512, 256, 3, stride=2, padding=1, output_padding=1),
                    _res(256),
                    _res(256),
                ),  # 24
                nn.Sequential(
                    Conv2dTranspose(320, 128, 3, stride=2, padding=1, output_padding=1),
                    _res(128),
                    _res(128),
                ),  # 48
                nn.Sequential(
                    Conv2dTranspose(160, 64, 3, stride=2, padding=1, output_padding=1),
                    _res(64),
                    _res(64),
                ),  # 96
            ]
        )

        self.output_block = nn.Sequential(
            Conv2d(80, 32, kernel_size=3, stride=1, padding=1),
            nn.Conv2d(32, 3, kernel_size=1, stride=1, padding=0),
            nn.Sigmoid(),
        )

    def forward(self, audio_sequences: torch.Tensor, face_sequences: torch.Tensor) -> torch.Tensor:
        x = self.audio_encoder(audio_sequences)  # B,512,1,1

        feats: list[torch.Tensor] = []
        f = face_sequences
        for block in self.face_encoder_blocks:
            f = block(f)
            feats.append(f)

        # Decoder block i pairs with encoder block (n-1-i); a fixed loop keeps the ONNX
        # graph static.
        for block, skip in zip(self.face_decoder_blocks, reversed(feats), strict=True):
            x = torch.cat((block(x), skip), dim=1)

        out: torch.Tensor = self.output_block(x)
        return out


# --- checkpoints ---------------------------------------------------------------------
def save_wav2lip_checkpoint(model: Wav2Lip, path: Path, global_step: int = 0) -> Path:
    """Write ``model`` in the published checkpoint format.

    ``{"state_dict": {"module.<key>": tensor}, "global_step": int, "optimizer": ...}``
    (upstream trained under DataParallel, hence the prefix). The optimizer entry is a
    fresh Adam state, present only so the file has the same shape as a real one.
    """
    path = Path(path)
    state = {_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters())
    payload: dict[str, Any] = {
        "state_dict": state,
        "global_step": int(global_step),
        "optimizer": optimizer.state_dict(),
    }
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, tmp)
        # Rename last: a crash never leaves a half-written file under the real name.
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputNotWritable(
            f"cannot write Wav2Lip checkpoint {path}: {exc}",
            hint="choose a writable directory with enough free space",
        ) from exc
    logger.debug("saved Wav2Lip checkpoint %s (global_step=%d)", path, global_step)
    return path


def load_wav2lip_checkpoint(path: Path, device: str = "cpu") -> Wav2Lip:
    """Load a published-format (or bare) Wav2Lip state dict strictly; model in eval().

    Loads with ``weights_only=True`` and refuses files that need full unpickling, since
    those can run arbitrary code.
    """
    path = Path(path)
    dev = _parse_device(device)
    raw = _torch_load(path, dev)
    state = _extract_state_dict(raw, path)
    model = Wav2Lip()
    _check_compatible(model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # checked above already; nothing escapes untyped
        raise CheckpointError(f"{path} does not load into Wav2Lip: {exc}", hint=_HINT_GET) from exc
    model.to(dev).eval()
    logger.info(
        "loaded Wav2Lip checkpoint %s (global_step=%s) on %s",
        path,
        raw.get("global_step", "n/a") if isinstance(raw, Mapping) else "n/a",
        dev,
    )
    return model


def _parse_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InvalidOption(
            f"invalid torch device {device!r}: {exc}",
            hint="use 'cpu', 'cuda' or 'cuda:N'",
        ) from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProviderUnavailable(
            f"device {device!r} requested but torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})",
            stage="generate",
            hint="run `heygem-diagnose env` to see why CUDA is unusable, or use device='cpu'",
        )
    return dev


def _torch_load(path: Path, dev: torch.device) -> Any:
    if not path.exists():
        raise CheckpointError(
            f"Wav2Lip checkpoint not found: {path}",
            hint=f"check the path; {_HINT_GET}",
        )
    if not path.is_file():
        raise CheckpointError(
            f"Wav2Lip checkpoint path is not a file: {path}",
            hint="pass the .pth file itself, not its directory",
        )
    try:
        return torch.load(path, map_location=dev, weights_only=True)
    except pickle.UnpicklingError as exc:
        # Message wording differs across torch versions (2.1 'Unsupported class X',
        # >= 2.4 'Unsupported global: GLOBAL X'); both name the offending class.
        match = re.search(r"(?:GLOBAL|Unsupported class) ([\w.]+)", str(exc))
        if match:
            raise CheckpointError(
                f"{path} is a torch file but contains Python objects beyond tensors "
                f"(e.g. {match.group(1)}); refusing to unpickle it because that can "
                "run arbitrary code",
                hint="re-save only the weights: torch.save({'state_dict': "
                "model.state_dict()}, path) from a trusted environment, or " + _HINT_GET,
            ) from exc
        raise _corrupt(path, exc) from exc
    except OSError as exc:
        raise CheckpointError(
            f"cannot read Wav2Lip checkpoint {path}: {exc}",
            hint="check file permissions and that the storage is readable",
        ) from exc
    except Exception as exc:  # torch.load raises a zoo of types on garbage input
        raise _corrupt(path, exc) from exc


def _corrupt(path: Path, exc: BaseException) -> CheckpointError:
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return CheckpointError(
        f"{path} ({path.stat().st_size} bytes) is not a readable torch checkpoint "
        f"({type(exc).__name__}: {detail[:200]})",
        hint="the file is corrupt, truncated (incomplete download?) or not a "
        f"PyTorch file; download it again. {_HINT_GET}",
    )


def _extract_state_dict(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(raw, Mapping):
        raise CheckpointError(
            f"{path} holds a {type(raw).__name__}, not a dict with a 'state_dict'",
            hint=_HINT_GET,
        )
    if "state_dict" in raw:
        sd = raw["state_dict"]
        if not isinstance(sd, Mapping):
            raise CheckpointError(
                f"{path}: 'state_dict' is a {type(sd).__name__}, expected a mapping of "
                "parameter names to tensors",
                hint=_HINT_GET,
            )
    elif raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        sd = raw  # a bare state dict
    else:
        keys = ", ".join(repr(k) for k in list(raw)[:8]) or "none"
        raise CheckpointError(
            f"{path} has no 'state_dict' entry and is not a bare state dict "
            f"(top-level keys: {keys})",
            hint=_HINT_GET,
        )

    state: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor",
                hint=_HINT_GET,
            )
        name = str(key)
        while name.startswith(_PREFIX):  # DataParallel, possibly nested
            name = name[len(_PREFIX) :]
        state[name] = value
    return state


_BLOCK_INDEX = re.compile(r"^(face_encoder_blocks|face_decoder_blocks)\.(\d+)\.")


def _diagnose_variant(keys: set[str]) -> str | None:
    """Name the known look-alike checkpoints, which otherwise fail with a key list."""
    for key in keys:
        m = _BLOCK_INDEX.match(key)
        if m and int(m.group(2)) >= 7:
            return (
                "this looks like a 192x192 variant (extra encoder/decoder blocks); "
                "only the published 96x96 Wav2Lip is supported"
            )
    if any(k.startswith("binary_pred") for k in keys):
        return "this looks like the visual-quality discriminator, not the generator"
    if any(k.startswith("face_encoder.") for k in keys):
        return "this looks like the SyncNet lip-sync expert (lipsync_expert.pth), not the generator"
    return None


def _names(keys: set[str], limit: int = 5) -> str:
    shown = sorted(keys)[:limit]
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(shown) + more


def _check_compatible(model: Wav2Lip, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_names(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_names(unexpected)})")
        variant = _diagnose_variant(set(state))
        msg = f"{path} is not a Wav2Lip 96x96 generator checkpoint: " + "; ".join(parts)
        if variant:
            msg += f"; {variant}"
        raise CheckpointError(msg, hint=_HINT_GET)

    mismatched = [
        (k, shape, tuple(state[k].shape))
        for k, shape in expected.items()
        if tuple(state[k].shape) != shape
    ]
    if mismatched:
        detail = "; ".join(
            f"{k}: expected {list(want)}, got {list(got)}" for k, want, got in mismatched[:3]
        )
        more = f" (+{len(mismatched) - 3} more)" if len(mismatched) > 3 else ""
        raise CheckpointError(
            f"{path} has {len(mismatched)} tensors with the wrong shape: {detail}{more}",
            hint="the checkpoint is from a different Wav2Lip variant or a modified "
            f"architecture; {_HINT_GET}",
        )
