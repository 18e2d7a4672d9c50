"""A Wav2Lip checkpoint in the published format, random weights (no downloads here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from heygem.generators.wav2lip import Wav2Lip, save_wav2lip_checkpoint


@pytest.fixture(scope="session")
def wav2lip_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "wav2lip.pth"
    return save_wav2lip_checkpoint(Wav2Lip(), path, global_step=1234)
