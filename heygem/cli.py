"""`heygem`: generate, demo, export-onnx. Errors become one line and a distinct exit code."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from heygem import __version__
from heygem.config import GenerateOptions
from heygem.errors import HeygemError

if TYPE_CHECKING:
    from heygem.pipeline import GenerationResult

log = logging.getLogger("heygem.cli")

# Entry-point group through which other packages add `heygem` subcommands: each entry is
# ``register(subparsers, add_common_flags)`` and sets ``run`` (and ``configure_logging``
# False when the command sets up logging itself).
COMMAND_PLUGINS = "heygem.commands"


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="errors only, no progress")
    parser.add_argument("--log-json", type=Path, help="also write JSON log lines to this file")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")


def build_parser(*, plugins: bool = True) -> argparse.ArgumentParser:
    """Every command; ``plugins=False`` leaves out the commands of other packages (their
    imports cost ~0.1 s, which a built-in command need not pay)."""
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
    GenerateOptions.add_arguments(gen, base=GenerateOptions.from_env())
    _add_common(gen)

    demo = sub.add_parser("demo", help="build demo inputs and generate demo.mp4 (no downloads)")
    demo.add_argument("-o", "--output", type=Path, default=Path("demo.mp4"))
    demo.add_argument("--seconds", type=float, default=8.0, help="length of the demo speech")
    demo.add_argument("--inputs-dir", type=Path, help="where the demo inputs are written")
    GenerateOptions.add_arguments(demo, base=GenerateOptions.from_env())
    _add_common(demo)

    export = sub.add_parser("export-onnx", help="export a generator to ONNX (ORT 1.16+)")
    export.add_argument("-o", "--output", type=Path, required=True)
    GenerateOptions.add_arguments(export, only=("generator", "checkpoint"))
    export.add_argument("--opset", type=int, default=17)
    _add_common(export)
    for name, run in COMMANDS.items():
        sub.choices[name].set_defaults(run=run)
    if plugins:
        from importlib.metadata import entry_points  # 15-25 ms: only when plugins are wanted

        for plugin in entry_points(group=COMMAND_PLUGINS):
            # e.g. `serve` and `worker` from the service: heygem itself never imports it.
            plugin.load()(sub, _add_common)
    return parser


def _run_generation(args: argparse.Namespace, audio: Path, video: Path) -> int:
    from heygem.face.landmarks import start_landmark_conversion

    start_landmark_conversion()  # (a machine's first job only: before the imports)
    from heygem.pipeline import Pipeline
    from heygem.progress_bars import StepBars

    pipeline = Pipeline(GenerateOptions.from_arguments(args))
    with StepBars(disabled=args.quiet or args.json) as bars:
        result = pipeline.generate(audio, video, args.output, on_step=bars)
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
    from heygem.demo import build_demo_inputs

    cache_dir = GenerateOptions.from_arguments(args).cache_dir
    inputs_dir = args.inputs_dir or cache_dir / "demo-inputs"
    audio, video = build_demo_inputs(inputs_dir, audio_seconds=args.seconds)
    if not args.quiet and not args.json:
        print(f"demo inputs: {audio} + {video}")
    return _run_generation(args, audio, video)


def cmd_export(args: argparse.Namespace) -> int:
    from heygem.generators.export import export_onnx, verify_parity
    from heygem.generators.graphs import build_graph

    options = GenerateOptions.from_arguments(args)
    graph, spec = build_graph(options.generator, options.checkpoint)
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


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "generate": cmd_generate,
    "demo": cmd_demo,
    "export-onnx": cmd_export,
}


def print_error(exc: HeygemError, prog: str) -> None:
    """How every CLI of this project shows an error: what happened, then what to do."""
    log.debug("failure details", exc_info=exc)
    print(f"{prog}: error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"  what to do: {exc.hint}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    from heygem.logs import configure_logging

    try:
        words = list(sys.argv[1:] if argv is None else argv)
        builtin = bool(words) and words[0] in COMMANDS
        args = build_parser(plugins=not builtin).parse_args(words)
        if getattr(args, "configure_logging", True):
            configure_logging(-1 if args.quiet else (1 if args.verbose else 0), args.log_json)
        run: Callable[[argparse.Namespace], int] = args.run
        return run(args)
    except HeygemError as exc:
        print_error(exc, "heygem")
        return exc.exit_code
    except KeyboardInterrupt:
        print("heygem: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
