"""Wav2Lip generator: architecture parity with the published model and checkpoint I/O."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from heygem.errors import CheckpointError, InvalidOption
from heygem.generators.wav2lip import (
    PARAMETER_COUNT,
    Wav2Lip,
    load_wav2lip_checkpoint,
    save_wav2lip_checkpoint,
)

# Every key and shape of the published 96x96 checkpoint (a copy of shared/, so the test
# runs in any clone).
PUBLISHED_SPEC = Path(__file__).parents[2] / "fixtures" / "wav2lip_state_dict.json"


@dataclass
class _Marker:
    """An arbitrary class: pickling it makes a file weights_only loading must refuse."""

    note: str = "not a tensor"


@pytest.fixture(scope="module")
def model() -> Wav2Lip:
    torch.manual_seed(0)
    return Wav2Lip().eval()


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    audio = torch.randn(2, 1, 80, 16, generator=gen)
    face = torch.rand(2, 6, 96, 96, generator=gen)
    return audio, face


@pytest.fixture(scope="module")
def saved(model: Wav2Lip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The only full-size (145 MB) write in this file; everything else uses _cheap_state.
    return save_wav2lip_checkpoint(
        model, tmp_path_factory.mktemp("ckpt") / "w2l.pth", global_step=42
    )


def _cheap_state(model: Wav2Lip, prefix: str = "") -> dict[str, torch.Tensor]:
    """Right keys and shapes, all 0.5, stored as stride-0 views so files stay ~100 KB."""
    return {
        prefix + k: torch.full((), 0.5, dtype=v.dtype).expand(v.shape)
        for k, v in model.state_dict().items()
    }


def _load_error(path: Path) -> CheckpointError:
    with pytest.raises(CheckpointError) as info:
        load_wav2lip_checkpoint(path)
    assert info.value.hint, "every CheckpointError must say what to do"
    return info.value


# --- architecture ----------------------------------------------------------------------
def test_state_dict_matches_published_model(model: Wav2Lip) -> None:
    spec = json.loads(PUBLISHED_SPEC.read_text())
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = spec["state_dict"]
    assert sorted(set(theirs) - set(ours)) == []  # missing from our module
    assert sorted(set(ours) - set(theirs)) == []  # extra in our module
    assert ours == theirs
    assert spec["parameter_count"] == PARAMETER_COUNT


def test_parameter_count(model: Wav2Lip) -> None:
    assert sum(p.numel() for p in model.parameters()) == 36_298_035


def test_forward_shape_and_range(model: Wav2Lip, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
    with torch.no_grad():
        out = model(*inputs)
    assert out.shape == (2, 3, 96, 96)
    assert out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


# --- checkpoint round trip -------------------------------------------------------------
def test_saved_file_has_published_layout(saved: Path) -> None:
    raw = torch.load(saved, map_location="cpu", weights_only=True)
    assert set(raw) == {"state_dict", "global_step", "optimizer"}
    assert raw["global_step"] == 42
    assert all(k.startswith("module.") for k in raw["state_dict"])
    assert not list(saved.parent.glob("*.tmp"))


def test_round_trip_gives_identical_outputs(
    model: Wav2Lip, saved: Path, inputs: tuple[torch.Tensor, torch.Tensor]
) -> None:
    loaded = load_wav2lip_checkpoint(saved)
    assert not loaded.training
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), model(*inputs), rtol=0, atol=0)


@pytest.mark.parametrize("prefix", ["module.", "", "module.module."])
def test_module_prefix_stripped_and_bare_state_dict(
    model: Wav2Lip, tmp_path: Path, prefix: str
) -> None:
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": _cheap_state(model, prefix), "global_step": 1}, wrapped)
    bare = tmp_path / "bare.pth"
    torch.save(_cheap_state(model, prefix), bare)
    for path in (wrapped, bare):
        loaded = load_wav2lip_checkpoint(path)
        bias = loaded.state_dict()["output_block.1.bias"]
        assert torch.equal(bias, torch.full((3,), 0.5))


# --- failures --------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    err = _load_error(tmp_path / "nope.pth")
    assert "not found" in err.message and "nope.pth" in err.message


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert "not a file" in _load_error(tmp_path).message


@pytest.mark.parametrize("kind", ["random", "empty", "text", "truncated"])
def test_garbage_bytes(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"{kind}.pth"
    if kind == "truncated":
        torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        data = {"random": os.urandom(4096), "empty": b"", "text": b"<html>404</html>"}
        path.write_bytes(data[kind])
    err = _load_error(path)
    assert "not a readable torch checkpoint" in err.message
    assert "download it again" in (err.hint or "")


def test_unsafe_pickle_refused(model: Wav2Lip, tmp_path: Path) -> None:
    path = tmp_path / "pickled.pth"
    torch.save({"state_dict": _cheap_state(model), "extra": _Marker()}, path)
    err = _load_error(path)
    assert "refusing to unpickle" in err.message
    assert "_Marker" in err.message


def test_dict_without_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "epoch": 3}, path)
    err = _load_error(path)
    assert "no 'state_dict'" in err.message
    assert "'model'" in err.message and "'epoch'" in err.message


def test_missing_keys_named(model: Wav2Lip, tmp_path: Path) -> None:
    state = _cheap_state(model, "module.")
    del state["module.output_block.1.weight"]
    path = tmp_path / "missing.pth"
    torch.save({"state_dict": state}, path)
    err = _load_error(path)
    assert "1 missing keys" in err.message
    assert "output_block.1.weight" in err.message
    assert "192x192" not in err.message


def test_192_variant_detected(model: Wav2Lip, tmp_path: Path) -> None:
    state = _cheap_state(model, "module.")
    state["module.face_encoder_blocks.7.0.conv_block.0.weight"] = torch.zeros(1)
    state["module.face_decoder_blocks.7.0.conv_block.0.weight"] = torch.zeros(1)
    path = tmp_path / "w2l_192.pth"
    torch.save({"state_dict": state}, path)
    err = _load_error(path)
    assert "2 unexpected keys" in err.message
    assert "face_encoder_blocks.7.0.conv_block.0.weight" in err.message
    assert "192x192 variant" in err.message
    assert "only the published 96x96 Wav2Lip is supported" in err.message


def test_wrong_shape_named(model: Wav2Lip, tmp_path: Path) -> None:
    state = _cheap_state(model)
    state["face_encoder_blocks.0.0.conv_block.0.weight"] = torch.zeros(16, 3, 7, 7)
    path = tmp_path / "shape.pth"
    torch.save({"state_dict": state}, path)
    err = _load_error(path)
    assert "face_encoder_blocks.0.0.conv_block.0.weight" in err.message
    assert "expected [16, 6, 7, 7], got [16, 3, 7, 7]" in err.message


def test_non_tensor_entry(model: Wav2Lip, tmp_path: Path) -> None:
    state: dict[str, object] = dict(_cheap_state(model))
    state["output_block.1.bias"] = [0.5, 0.5, 0.5]
    path = tmp_path / "list.pth"
    torch.save({"state_dict": state}, path)
    assert "not a tensor" in _load_error(path).message


def test_bad_device_string(tmp_path: Path) -> None:
    # Checked before the file is touched, so a bad option is reported as such.
    with pytest.raises(InvalidOption, match="invalid torch device"):
        load_wav2lip_checkpoint(tmp_path / "unused.pth", device="tpu:banana")
