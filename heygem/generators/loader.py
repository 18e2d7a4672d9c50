"""Build the configured generator on the configured back-end (export to ONNX if needed).

The ONNX export is cached per generator, weights, generator code, torch version and
opset, with the generator's spec beside it: a job on ONNX Runtime whose model is in the
cache loads neither torch nor the checkpoint (torch's import alone is ~1 s of a job's
start-up on the project machine).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heygem.errors import OutputNotWritable
from heygem.generators.control import OpeningRowsRunner
from heygem.generators.export import OPSET
from heygem.generators.runtime import FaceFeatureOrtRunner, GraphRunner, OrtRunner, TorchRunner
from heygem.generators.shipped import current_shipped
from heygem.generators.spec import GeneratorSpec
from heygem.hashing import content_hash
from heygem.progress import StepCallback, StepProgress

log = logging.getLogger(__name__)

_GENERATORS_DIR = Path(__file__).resolve().parent
# Modules of the generators package that only run graphs or feed them: a change there
# does not change an exported graph (every other module may, and re-exports).
_RUNTIME_MODULES = frozenset(
    {"__init__.py", "cuda_libs.py", "loader.py", "mouths.py", "runtime.py", "samples.py",
     "shipped.py", "spec.py"}
)  # fmt: skip


@dataclass(frozen=True)
class ExportPaths:
    onnx: Path
    spec: Path
    # Wav2Lip's face encoder and the rest as two graphs (heygem.generators.face_features).
    face_split: tuple[Path, Path] | None = None
    # Where ONNX Runtime's optimised graphs are saved (exports in the cache; not the
    # package's shipped assets, which may be read-only).
    optimized: Path | None = None

    def complete(self) -> bool:
        files = [self.onnx, self.spec, *(self.face_split or ())]
        return all(path.is_file() for path in files)


def export_paths(name: str, checkpoint: Path | None, cache_dir: Path) -> ExportPaths:
    """Where the export of ``name`` with ``checkpoint`` lives in ``cache_dir``.

    The key covers everything the exported graph depends on: the generator, the weights'
    content, the graph-side code of the generators package (a change there re-exports
    rather than serve a stale graph), the torch version that traced it and the opset.
    """
    digest = hashlib.blake2b(digest_size=10)
    for part in (
        name,
        _weights_digest(checkpoint, cache_dir) if checkpoint is not None else "-",
        _generators_code_digest(),
        _torch_version(),
        str(OPSET),
    ):
        digest.update(part.encode() + b"\0")
    stem = cache_dir / "onnx" / f"{name}-{digest.hexdigest()}"
    split = None
    if name == "wav2lip":
        split = (stem.with_suffix(".encoder.onnx"), stem.with_suffix(".decoder.onnx"))
    return ExportPaths(
        stem.with_suffix(".onnx"), stem.with_suffix(".spec.json"), split, stem.parent / "optimized"
    )


@dataclass(frozen=True)
class PreparedGenerator:
    """A generator whose spec is known, ready to start on its back-end.

    ``graph`` is the torch module (torch back-end, or an ONNX export still to be made);
    ``onnx`` the exported file (to be written by ``start_runner`` when ``needs_export``).
    The spec comes first so that the template analysis can start while a first-time
    export runs.
    """

    spec: GeneratorSpec
    onnx: ExportPaths | None
    graph: Any = None
    needs_export: bool = False


def prepare_generator(
    name: str, checkpoint: Path | None, *, backend: str, cache_dir: Path
) -> PreparedGenerator:
    """The spec and what to run: the export shipped with the package or the cached one
    (both read without torch), else the torch graph (and, for ONNX Runtime, the export
    still to be made)."""
    if backend == "torch":
        from heygem.generators.graphs import build_graph

        graph, spec = build_graph(name, checkpoint)
        return PreparedGenerator(spec, None, graph)
    shipped = current_shipped(name, checkpoint)
    if shipped is not None:
        return PreparedGenerator(shipped.spec, ExportPaths(shipped.onnx, shipped.record))
    paths = export_paths(name, checkpoint, cache_dir)
    cached = _cached_spec(paths)
    if cached is not None:
        return PreparedGenerator(cached, paths)
    from heygem.generators.graphs import build_graph

    graph, spec = build_graph(name, checkpoint)
    return PreparedGenerator(spec, paths, graph, needs_export=True)


def start_runner(
    prepared: PreparedGenerator,
    *,
    device: str,
    threads: int,
    require_gpu: bool,
    precision: str = "fp32",
    on_step: StepCallback | None = None,
) -> GraphRunner:
    """The session (ONNX Runtime, exporting first if needed) or module (torch)."""
    runner: GraphRunner
    if prepared.onnx is None:
        runner = TorchRunner(prepared.graph, device, threads, require_gpu, precision=precision)
    else:
        if prepared.needs_export:
            _export(prepared, on_step)
        optimized = prepared.onnx.optimized
        if prepared.onnx.face_split is not None:
            encoder, decoder = prepared.onnx.face_split
            runner = FaceFeatureOrtRunner(
                encoder, decoder, device, threads, require_gpu, optimized_dir=optimized
            )
        else:
            runner = OrtRunner(
                prepared.onnx.onnx, device, threads, require_gpu, optimized_dir=optimized
            )
    if prepared.spec.name == "rewrite":
        runner = OpeningRowsRunner(runner)
    return runner


def load_generator(
    name: str,
    checkpoint: Path | None,
    *,
    backend: str,
    device: str,
    threads: int,
    require_gpu: bool,
    cache_dir: Path,
    precision: str = "fp32",
    on_step: StepCallback | None = None,
) -> tuple[GraphRunner, GeneratorSpec]:
    prepared = prepare_generator(name, checkpoint, backend=backend, cache_dir=cache_dir)
    runner = start_runner(
        prepared,
        device=device,
        threads=threads,
        require_gpu=require_gpu,
        precision=precision,
        on_step=on_step,
    )
    return runner, prepared.spec


def _cached_spec(paths: ExportPaths) -> GeneratorSpec | None:
    if not paths.complete():
        return None
    try:
        return GeneratorSpec.from_json(paths.spec.read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:  # damaged: export again
        log.warning("ONNX cache entry %s unreadable (%s); exporting again", paths.spec, exc)
        return None


def _export(prepared: PreparedGenerator, on_step: StepCallback | None) -> None:
    from heygem.generators.export import export_face_split, export_onnx

    assert prepared.onnx is not None
    if on_step is not None:
        on_step(StepProgress("export_onnx", 0, None))
    log.info("exporting %s to ONNX (once per model)", prepared.spec.name)
    export_onnx(prepared.graph, prepared.spec.crop.size, prepared.onnx.onnx, opset=OPSET)
    if prepared.onnx.face_split is not None:
        export_face_split(prepared.graph, prepared.spec.crop.size, *prepared.onnx.face_split)
    # The spec last: its presence marks a complete entry.
    _write_atomically(prepared.onnx.spec, prepared.spec.to_json())
    if on_step is not None:
        on_step(StepProgress("export_onnx", 1, None, finished=True))


def _write_atomically(target: Path, text: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, target)
    except OSError as exc:
        raise OutputNotWritable(
            f"cannot write {target}: {exc}", hint="choose a writable --cache-dir"
        ) from exc


def _weights_digest(checkpoint: Path, cache_dir: Path) -> str:
    """The checkpoint's content hash, remembered per (path, size, mtime, inode): hashing
    a 145 MB Wav2Lip checkpoint costs ~0.2 s of every job's start-up otherwise."""
    try:
        stat = checkpoint.stat()
    except OSError:
        return content_hash(checkpoint)  # the loader reports the missing file
    identity = f"{checkpoint.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}"
    memo = cache_dir / "hashes" / hashlib.blake2b(identity.encode(), digest_size=12).hexdigest()
    try:
        remembered = memo.read_text().strip()
        if len(remembered) == 32:
            return remembered
    except OSError:
        pass
    digest = content_hash(checkpoint)
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(memo, digest)
    except (OSError, OutputNotWritable):  # only a memo: the next job hashes again
        log.debug("cannot remember the hash of %s in %s", checkpoint, memo)
    return digest


def _torch_version() -> str:
    from importlib import metadata  # ~10 ms; only exports in the cache need it

    try:
        return metadata.version("torch").split("+")[0]
    except metadata.PackageNotFoundError:  # e.g. a source build registered differently
        import torch

        return str(torch.__version__).split("+")[0]


def _generators_code_digest() -> str:
    digest = hashlib.blake2b(digest_size=10)
    for source in sorted(_GENERATORS_DIR.glob("*.py")):
        if source.name not in _RUNTIME_MODULES:
            digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()
