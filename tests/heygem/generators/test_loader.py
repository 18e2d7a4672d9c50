"""The ONNX export cache: keyed by the weights' content, read without torch."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from heygem.generators.graphs import build_graph
from heygem.generators.loader import (
    PreparedGenerator,
    export_paths,
    prepare_generator,
    start_runner,
)
from heygem.generators.wav2lip import Wav2Lip, save_wav2lip_checkpoint
from heygem.progress import StepProgress


def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_wav2lip_checkpoint(Wav2Lip(), path)


def test_the_export_follows_the_weights_content(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = export_paths("wav2lip", _checkpoint(tmp_path / "a.pth", 0), cache).onnx
    copy = shutil.copy(tmp_path / "a.pth", tmp_path / "b.pth")
    assert export_paths("wav2lip", Path(copy), cache).onnx == first  # same weights elsewhere
    assert export_paths("wav2lip", tmp_path / "a.pth", cache).onnx == first  # remembered
    # New weights written over the same file (same size): a different export.
    before = (tmp_path / "a.pth").stat()
    _checkpoint(tmp_path / "a.pth", 1)
    os.utime(tmp_path / "a.pth", ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    assert export_paths("wav2lip", tmp_path / "a.pth", cache).onnx != first


def test_a_damaged_cache_entry_is_exported_again(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "w.pth", 0)
    paths = export_paths("wav2lip", checkpoint, tmp_path / "c")
    paths.onnx.parent.mkdir(parents=True)
    paths.onnx.write_bytes(b"not onnx")
    paths.spec.write_text("{broken")
    prepared = prepare_generator(
        "wav2lip", checkpoint, backend="onnxruntime", cache_dir=tmp_path / "c"
    )
    assert prepared.needs_export and prepared.spec.crop.size == 96


def test_an_export_reports_its_progress_and_is_cached(tmp_path: Path) -> None:
    """What a generator without a shipped export (a checkpoint's) goes through once."""
    graph, spec = build_graph("rewrite", None)
    paths = export_paths("rewrite", None, tmp_path)
    events: list[StepProgress] = []
    prepared = PreparedGenerator(spec, paths, graph, needs_export=True)
    start_runner(prepared, device="cpu", threads=1, require_gpu=False, on_step=events.append)
    assert [(e.step, e.finished) for e in events] == [("export_onnx", False), ("export_onnx", True)]
    assert paths.onnx.is_file() and paths.spec.is_file()
