"""`heygem`: generate, demo, export-onnx. Errors become one line and a distinct exit code."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heygem import __version__
from heygem.config import BACKENDS, DEVICES, GENERATORS, X264_PRESETS, FaultInjection
from heygem.errors import HeygemError

if TYPE_CHECKING:
    from heygem.config import GenerateOptions
    from heygem.pipeline import GenerationResult

log = logging.getLogger("heygem.cli")


def _add_pipeline_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pipeline")
    group.add_argument("--generator", choices=GENERATORS, default="mouthwarp")
    group.add_argument("--checkpoint", type=Path, help="Wav2Lip .pth (for --generator wav2lip)")
    group.add_argument("--backend", choices=BACKENDS, default="onnxruntime")
    group.add_argument(
        "--device",
        choices=DEVICES,
        default="auto",
        help="auto picks CUDA only if a live session proves it works",
    )
    group.add_argument(
        "--require-gpu",
        action="store_true",
        help="fail instead of warning when the GPU silently falls back to CPU",
    )
    group.add_argument("--batch-size", type=int, default=16)
    group.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="DataLoader worker processes (HeyGem's num_threads)",
    )
    group.add_argument(
        "--start-method",
        choices=("spawn", "forkserver", "fork"),
        default="spawn",
        help="how DataLoader workers are started",
    )
    group.add_argument("--fps", type=float, help="output frame rate (default: the template's)")
    group.add_argument("--preset", choices=X264_PRESETS, default="veryfast")
    group.add_argument("--crf", type=int, default=23)
    group.add_argument(
        "--stall-timeout",
        type=float,
        default=10.0,
        help="seconds a stage may stay silent before the job fails",
    )
    group.add_argument(
        "--cache-dir", type=Path, help="template/ONNX cache (default ~/.cache/heygem)"
    )
    group.add_argument("--no-cache", action="store_true", help="re-analyse the template")


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only, no progress")
    parser.add_argument("--log-json", type=Path, help="also write JSON log lines to this file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The `serve` options; also used by `python -m service.cli` (service -> heygem)."""
    parser.add_argument("--host", help="bind address (default 127.0.0.1; others need an API key)")
    parser.add_argument("--port", type=int, help="port (default 8383)")
    parser.add_argument(
        "--workers", type=int, help="worker processes, each holding a warm pipeline (default 1)"
    )
    parser.add_argument("--data-dir", type=Path, help="job store, uploads and results")
    parser.add_argument(
        "--media-root", type=Path, help="directory the HeyGem-compatible API may read paths from"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heygem", description=__doc__)
    parser.add_argument("--version", action="version", version=f"heygem-harness {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="lip-sync a template video to an audio file")
    gen.add_argument("--audio", "-a", type=Path, required=True)
    gen.add_argument(
        "--video",
        "-i",
        type=Path,
        required=True,
        help="template video (or a still image) showing a face",
    )
    gen.add_argument("-o", "--output", type=Path, required=True, help="output .mp4")
    _add_pipeline_options(gen)
    _add_common(gen)

    demo = sub.add_parser("demo", help="build demo inputs and generate demo.mp4 (no downloads)")
    demo.add_argument("-o", "--output", type=Path, default=Path("demo.mp4"))
    demo.add_argument("--seconds", type=float, default=8.0, help="length of the demo speech")
    demo.add_argument("--inputs-dir", type=Path, help="where the demo inputs are written")
    _add_pipeline_options(demo)
    _add_common(demo)

    serve = sub.add_parser("serve", help="run the REST generation service (uvicorn)")
    add_serve_arguments(serve)
    _add_common(serve)

    export = sub.add_parser("export-onnx", help="export a generator to ONNX (ORT 1.16+)")
    export.add_argument("-o", "--output", type=Path, required=True)
    export.add_argument("--generator", choices=GENERATORS, default="mouthwarp")
    export.add_argument("--checkpoint", type=Path)
    export.add_argument("--opset", type=int, default=17)
    _add_common(export)
    return parser


def _options(args: argparse.Namespace) -> GenerateOptions:
    from heygem.config import GenerateOptions

    extra = {"cache_dir": args.cache_dir} if args.cache_dir else {}
    return GenerateOptions(
        generator=args.generator,
        checkpoint=args.checkpoint,
        backend=args.backend,
        device=args.device,
        require_gpu=args.require_gpu,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        start_method=args.start_method,
        fps=args.fps,
        preset=args.preset,
        crf=args.crf,
        stall_timeout=args.stall_timeout,
        use_face_cache=not args.no_cache,
        fault=FaultInjection.from_env(),
        **extra,
    ).validated()


def _run_generation(args: argparse.Namespace, audio: Path, video: Path) -> int:
    from tqdm import tqdm

    from heygem.pipeline import Pipeline

    pipeline = Pipeline(_options(args))
    bar: Any = None  # a tqdm bar, created lazily

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:  # created on the first frame, so errors before it print cleanly
            bar = tqdm(
                total=total,
                unit="frame",
                desc="generating",
                leave=False,
                disable=args.quiet or args.json,
            )
        bar.update(done - bar.n)

    try:
        result = pipeline.generate(audio, video, args.output, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif not args.quiet:
        _print_summary(result)
    return 0


def _print_summary(result: GenerationResult) -> None:
    lines = [
        f"wrote {result.output.resolve()}",
        f"  {result.frames} frames at {result.fps:g} fps, {result.duration:.2f} s, "
        f"{result.width}x{result.height}",
        f"  generator back-end: {result.backend}; providers used: "
        f"{', '.join(result.providers_used)} (requested: {', '.join(result.providers_requested)})",
        "  stage timings (s): " + ", ".join(f"{k}={v:.2f}" for k, v in result.timings.items()),
        f"  template from cache: {'yes' if result.template_from_cache else 'no'}; "
        f"silent frames: {result.silent_frames}; frames without a face: "
        f"{result.faceless_frames}",
    ]
    lines += [f"  warning: {w}" for w in result.warnings]
    print("\n".join(lines))


def cmd_generate(args: argparse.Namespace) -> int:
    return _run_generation(args, args.audio, args.video)


def cmd_demo(args: argparse.Namespace) -> int:
    from heygem.config import default_cache_dir
    from heygem.demo import build_demo_inputs

    inputs_dir = args.inputs_dir or (args.cache_dir or default_cache_dir()) / "demo-inputs"
    audio, video = build_demo_inputs(inputs_dir, audio_seconds=args.seconds)
    if not args.quiet and not args.json:
        print(f"demo inputs: {audio} + {video}")
    return _run_generation(args, audio, video)


def cmd_export(args: argparse.Namespace) -> int:
    from heygem.config import GenerateOptions
    from heygem.generators.export import export_onnx, verify_parity
    from heygem.generators.graphs import build_graph

    GenerateOptions(generator=args.generator, checkpoint=args.checkpoint).validated()
    graph, spec = build_graph(args.generator, args.checkpoint)
    path = export_onnx(graph, spec.crop.size, args.output, opset=args.opset)
    diff = verify_parity(graph, path, spec.crop.size)
    if args.json:
        print(
            json.dumps(
                {
                    "output": str(path),
                    "generator": spec.name,
                    "opset": args.opset,
                    "max_abs_diff_vs_torch": diff,
                }
            )
        )
    elif not args.quiet:
        print(f"wrote {path} ({spec.name}, opset {args.opset}); max |torch - ORT| = {diff:.2e}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # The CLI is an edge: the service (FastAPI, uvicorn) is imported only on use, so the
    # pipeline package itself never depends on it.
    from service.cli import serve_args

    return serve_args(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "generate": cmd_generate,
    "demo": cmd_demo,
    "export-onnx": cmd_export,
    "serve": cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    from heygem.logs import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(-1 if args.quiet else (1 if args.verbose else 0), args.log_json)
    try:
        return COMMANDS[args.command](args)
    except HeygemError as exc:
        log.debug("failure details", exc_info=True)
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  what to do: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
