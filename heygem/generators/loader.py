"""Build the configured generator on the configured back-end (export to ONNX if needed)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from heygem.generators.export import OPSET, export_onnx
from heygem.generators.graphs import GeneratorSpec, build_graph
from heygem.generators.rewrite import OpeningRowsRunner
from heygem.generators.runtime import GraphRunner, OrtRunner, TorchRunner

log = logging.getLogger(__name__)


def load_generator(
    name: str,
    checkpoint: Path | None,
    *,
    backend: str,
    device: str,
    threads: int,
    require_gpu: bool,
    cache_dir: Path,
) -> tuple[GraphRunner, GeneratorSpec]:
    graph, spec = build_graph(name, checkpoint)
    runner: GraphRunner
    if backend == "torch":
        runner = TorchRunner(graph, device, threads, require_gpu)
    else:
        version = torch.__version__.split("+")[0]
        onnx_path = cache_dir / "onnx" / f"{spec.fingerprint}-torch{version}-op{OPSET}.onnx"
        if not onnx_path.exists():
            log.info("exporting %s to ONNX (once per model)", spec.name)
            export_onnx(graph, spec.crop.size, onnx_path)
        runner = OrtRunner(onnx_path, device, threads, require_gpu)
    if spec.name == "rewrite":
        runner = OpeningRowsRunner(runner)
    return runner, spec
