"""The ``rewrite`` renderer's ONNX graph shipped with the package: current, and used.

The asset is made at development time (``python -m heygem.generators.shipped``); these
tests fail when the renderer's code changed and the asset was not re-made, and re-export
the graph to check that the shipped file still computes what the code computes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort

from heygem.generators import shipped
from heygem.generators.export import PARITY_TOLERANCE, example_inputs, verify_parity
from heygem.generators.graphs import build_graph
from heygem.generators.loader import prepare_generator

REMAKE = "re-make it: python -m heygem.generators.shipped"


def _run(path: Path, face: np.ndarray, control: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"face": face, "control": control})[0])


def test_the_shipped_rewrite_graph_is_made_from_the_current_code() -> None:
    record = shipped.read_shipped("rewrite")
    assert record is not None, f"heygem/assets has no rewrite export; {REMAKE}"
    assert record.sources_digest == shipped.sources_digest("rewrite"), REMAKE
    _, spec = build_graph("rewrite", None)
    assert record.spec == spec, REMAKE


def test_the_shipped_graph_computes_what_a_fresh_export_does(tmp_path: Path) -> None:
    graph, spec = build_graph("rewrite", None)
    fresh = shipped.write_shipped("rewrite", tmp_path)
    record = shipped.read_shipped("rewrite")
    assert record is not None
    assert verify_parity(graph, record.onnx, spec.crop.size) <= PARITY_TOLERANCE, REMAKE
    for seed in range(3):
        face, control = (t.numpy() for t in example_inputs(spec.crop.size, 4, seed, graph))
        np.testing.assert_allclose(
            _run(record.onnx, face, control), _run(fresh.onnx, face, control), atol=1e-6
        )


def test_a_fresh_machine_uses_the_shipped_graph_without_exporting(tmp_path: Path) -> None:
    prepared = prepare_generator("rewrite", None, backend="onnxruntime", cache_dir=tmp_path)
    record = shipped.read_shipped("rewrite")
    assert record is not None and prepared.onnx is not None
    assert not prepared.needs_export and prepared.onnx.onnx == record.onnx
    assert not (tmp_path / "onnx").exists()  # nothing written to the cache


def test_a_stale_or_missing_shipped_graph_is_not_used(tmp_path: Path) -> None:
    """Assets recorded for other sources (the renderer changed since the asset was made)
    or damaged are not served: the loader exports as it did before assets were shipped."""
    onnx, meta = shipped.asset_paths("rewrite")
    assets = tmp_path / "assets"
    assets.mkdir()
    shutil.copy(onnx, assets / onnx.name)
    data = json.loads(meta.read_text())
    (assets / meta.name).write_text(json.dumps(data))
    assert shipped.current_shipped("rewrite", None, assets) is not None
    assert shipped.current_shipped("rewrite", tmp_path / "weights.pth", assets) is None
    (assets / meta.name).write_text(json.dumps({**data, "sources_digest": "0" * 20}))
    assert shipped.current_shipped("rewrite", None, assets) is None
    (assets / meta.name).write_text("{broken")
    assert shipped.current_shipped("rewrite", None, assets) is None
    assert shipped.current_shipped("wav2lip", None, assets) is None
