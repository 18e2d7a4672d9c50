"""Exports shipped with the package: the weight-free ``rewrite`` renderer's ONNX graph.

A generator without weights exports to the same graph on every machine, so its export is
made at development time and committed (``python -m heygem.generators.shipped`` re-makes
it): a first run then loads neither torch nor the exporter (~2 s on the project machine,
the most a first run would otherwise pay). No torch here.

Beside the graph, ``<name>.export.json`` records the generator's spec and a digest of the
sources the graph is made from (``GRAPH_SOURCES``). A checkout whose sources differ (the
renderer changed, the asset not yet re-made) does not use the shipped file and exports as
before; ``tests/heygem/generators/test_shipped.py`` fails until the asset is re-made, and
re-exports it to check that the shipped graph still computes what the code does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from heygem.generators.spec import GeneratorSpec

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "assets"
_GENERATORS_DIR = Path(__file__).resolve().parent
# The modules each shipped graph is built from (the renderer, its control layout, the
# spec in graphs.py and the exporter's settings).
GRAPH_SOURCES: dict[str, tuple[str, ...]] = {
    "rewrite": ("rewrite.py", "control.py", "graphs.py", "export.py"),
}


@dataclass(frozen=True)
class ShippedExport:
    onnx: Path
    record: Path  # <name>.export.json: the spec and the sources' digest
    spec: GeneratorSpec
    sources_digest: str  # of GRAPH_SOURCES when it was made


def sources_digest(name: str) -> str:
    """Digest of the sources ``name``'s graph is made from, as they are now."""
    digest = hashlib.blake2b(digest_size=10)
    for source in GRAPH_SOURCES[name]:
        digest.update(source.encode() + b"\0" + (_GENERATORS_DIR / source).read_bytes())
    return digest.hexdigest()


def asset_paths(name: str, directory: Path | None = None) -> tuple[Path, Path]:
    directory = directory or ASSETS_DIR
    return directory / f"{name}.onnx", directory / f"{name}.export.json"


def read_shipped(name: str, directory: Path | None = None) -> ShippedExport | None:
    """The shipped export of ``name`` as recorded, whether current or not (None: none)."""
    if name not in GRAPH_SOURCES:
        return None
    onnx, meta = asset_paths(name, directory)
    try:
        data = json.loads(meta.read_text())
        spec = GeneratorSpec.from_json(json.dumps(data["spec"]))
        digest = str(data["sources_digest"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not onnx.is_file():
        return None
    return ShippedExport(onnx, meta, spec, digest)


def current_shipped(
    name: str, checkpoint: Path | None, directory: Path | None = None
) -> ShippedExport | None:
    """The shipped export of ``name`` if the code still makes that graph, else None."""
    if checkpoint is not None:
        return None  # weights come from the user: only weight-free graphs are shipped
    shipped = read_shipped(name, directory)
    if shipped is None:
        return None
    if shipped.sources_digest != sources_digest(name):
        log.warning(
            "the shipped %s export is older than its code; exporting instead "
            "(re-make it: python -m heygem.generators.shipped)",
            name,
        )
        return None
    return shipped


def write_shipped(name: str, directory: Path | None = None) -> ShippedExport:
    """Export ``name`` (torch) into ``directory`` with its record: a development step."""
    from heygem.generators.export import OPSET, export_onnx
    from heygem.generators.graphs import build_graph

    directory = directory or ASSETS_DIR
    graph, spec = build_graph(name, None)
    onnx, meta = asset_paths(name, directory)
    export_onnx(graph, spec.crop.size, onnx, opset=OPSET)
    os.chmod(onnx, 0o644)  # mkstemp made it private; a package file is world-readable
    record = {"spec": json.loads(spec.to_json()), "sources_digest": sources_digest(name)}
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".part")
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(record, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, meta)
    return ShippedExport(onnx, meta, spec, record["sources_digest"])


def main() -> None:
    for name in GRAPH_SOURCES:
        shipped = write_shipped(name)
        print(f"wrote {shipped.onnx} ({shipped.spec.name}, sources {shipped.sources_digest})")


if __name__ == "__main__":
    main()
