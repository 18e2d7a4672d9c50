"""`heygem-diagnose`: name why a HeyGem-style generation hangs, crashes or crawls.

Subcommands: env (the environment doctor), log (analyse a HeyGem dh.log or a heygem JSON
log), ps (inspect live heygem processes), run-probe (one small generation run under the
watchdogs), regress (golden fingerprints: did a library upgrade change the output?).
Human text by default, --json for machines.

Exit codes: 0 healthy, 1 problems found, 2 could not run (bad arguments, missing file,
unexpected error: one line on stderr; -v adds the traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from diagnostics.findings import (
    EXIT_COULD_NOT_RUN,
    EXIT_OK,
    Report,
    render_json,
    render_text,
)
from diagnostics.regress_scenarios import GOLDEN_OPTIONS

# Only light modules at import time: `heygem-diagnose --help` must not import torch.
from heygem import __version__
from heygem.config import GenerateOptions

if TYPE_CHECKING:
    from diagnostics.inspect import ProcessTreeReport
    from diagnostics.probe import ProbeConfig

log = logging.getLogger("diagnostics.cli")

# The options of the probe's generation (the rest are the probe's own: sizes, deadline).
PROBE_OPTIONS = (
    "generator", "checkpoint", "backend", "device", "require_gpu", "batch_size", "num_workers",
    "start_method", "stall_timeout", "fault", "cache_dir",
)  # fmt: skip
EXIT_INTERRUPTED = 130
PROG = "heygem-diagnose"


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit 2, like every other failure."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_COULD_NOT_RUN, f"{self.prog}: error: {message} (see --help)\n")


# --- argument types (argparse turns ArgumentTypeError into a one-line usage error) ----
def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _size(text: str) -> tuple[int, int]:
    from diagnostics.probe import parse_size
    from heygem.errors import HeygemError

    try:
        return parse_size(text)
    except HeygemError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# --- parser ---------------------------------------------------------------------------
def _common() -> _Parser:
    # SUPPRESS: a subcommand's default must not overwrite `heygem-diagnose -v/--json CMD`.
    common = _Parser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="debug logging, tracebacks on errors",
    )
    common.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print the report as JSON on stdout",
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--version", action="version", version=f"{PROG} (heygem-harness {__version__})"
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging, tracebacks on errors"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common()]
    raw = argparse.RawDescriptionHelpFormatter  # keep the paragraphs of the descriptions
    _add_env(
        sub.add_parser(
            "env",
            parents=common,
            help="check this machine (the doctor)",
            description=ENV_HELP,
            formatter_class=raw,
        )
    )
    _add_log(
        sub.add_parser(
            "log",
            parents=common,
            help="analyse a HeyGem dh.log",
            description=LOG_HELP,
            formatter_class=raw,
        )
    )
    _add_ps(
        sub.add_parser(
            "ps",
            parents=common,
            help="inspect live heygem processes",
            description=PS_HELP,
            formatter_class=raw,
        )
    )
    _add_probe(
        sub.add_parser(
            "run-probe",
            parents=common,
            help="one small generation under the watchdogs",
            description=PROBE_HELP,
            formatter_class=raw,
        )
    )
    _add_regress(
        sub.add_parser(
            "regress",
            parents=common,
            help="golden output fingerprints: record, check for drift",
            description=REGRESS_HELP,
            formatter_class=raw,
        )
    )
    sync = sub.add_parser(
        "sync-score",
        parents=common,
        help="does the mouth in a video follow an audio? (lip-landmark correlation)",
        description=SYNC_HELP,
        formatter_class=raw,
    )
    sync.add_argument("video", type=Path, help="the video to measure (e.g. a generated MP4)")
    sync.add_argument("audio", type=Path, help="the audio the mouth should follow")
    sync.add_argument(
        "--threshold", type=float, default=0.5, help="lowest passing correlation (0.5)"
    )
    return parser


SYNC_HELP = """\
Measure lip sync on the video's pixels: landmarks are detected afresh on every frame,
the inner-lip opening is correlated with the audio's loudness envelope (best of lags
-5..5 frames), and again with the audio rotated by half its length (the control).

Exit 1 (FAIL) when the correlation is below --threshold (0.5); a control of 0.2 or more
is a WARN (the score may be chance). Generated talking-template output scores >= 0.5,
stills >= 0.7; an untouched talking template scores ~0.2 against new audio."""

ENV_HELP = """\
Run the environment doctor: library versions and ABI rules, ONNX Runtime CUDA
libraries, GPU, multiprocessing start method and thread env vars, /dev/shm and
memory against the DataLoader workload given below, cgroup limits, codecs.

Exit 1 if any check FAILs. WARN results are printed but exit 0, because many
are advice (e.g. no GPU on a CPU-only host); --strict makes WARN exit 1 too."""

LOG_HELP = """\
Analyse a HeyGem dh.log in any layout it comes in (with or without the source
field, `docker logs -t` / `docker compose logs` prefixes, ANSI, CRLF, damaged
lines), or heygem's own --log-json log: per task a timeline, the verdict with
its cause and evidence lines, the steady batch cost, the consumer's pace and the
longest wait for a free slot in HeyGem's queue (10 items, 60 s put timeout).

Exit 0 when every task finished normally (warnings, slower than real time and
damaged lines included), 1 when a FAIL finding shows a problem, 2 when the file
cannot be read or holds no log record."""

PS_HELP = """\
Inspect a live process tree (states, zombies, threads, CPU, RSS, /dev/shm held,
GPU use) and orphaned multiprocessing workers. Without --pid, every process
whose command line contains 'heygem' is inspected; none found is not a problem.

Exit 1 if any zombie, orphan or D-state process is found, else 0."""

PROBE_HELP = """\
Build small synthetic inputs (speech-like audio and a face template, no
downloads) in a temporary directory, generate once under the pipeline's
watchdogs and an outer deadline, and report the outcome (ok, stalled, crashed,
bad-input or error) with the classified cause, evidence, throughput, providers
requested/used, library versions and child processes left behind.
Without --fault, HEYGEM_FAULT=STAGE:KIND[:SECONDS] is honoured.

Exit 0 only for a healthy run: ok, no CPU fallback (CUDA requested, CPU used)
and no leftover child processes; 1 otherwise."""

REGRESS_HELP = """\
Run fixed generated scenarios (synthetic speech over the bundled portrait: a
video, a still PNG, a clip with face-less frames, a 12 s ping-pong loop) through
the real pipeline on CPU and fingerprint every stage: inputs, audio_features
(mel, voice activity), face_track (regions, crops), generate (a seeded batch and
the scenario's own crops), composite (sampled frames by PSNR/SSIM, per-frame
change) and mux (frame count, durations, A/V offset, lip lag).

  record  write the fingerprints as a golden directory (regress.json + PNGs)
  check   rerun with the golden's settings and compare by per-metric tolerances;
          names the first step that drifted and by how much

Typical use: `regress record --out DIR` before upgrading onnxruntime, torch,
librosa, opencv or PyAV, `regress check --golden DIR` after. Performance is
compared separately: python -m benchmarks.summary new.json --compare base.json

Exit codes: record 0; check 0 within tolerance, 1 regression (0 with --update,
which re-records the golden on purpose); 2 could not run."""

RECORD_HELP = """\
Run the scenarios and write their fingerprints as a golden directory
(regress.json + frames/*.png, ~160 KiB); an existing golden there is replaced."""

CHECK_HELP = """\
Run the golden's scenarios with its settings and compare by per-metric tolerance.
--perturb STEP:AMOUNT rehearses a drift (audio_features: mel offset, face_track:
pixels, generate: output offset) to see the checker fail."""


def _perturbation(text: str) -> Any:
    from diagnostics.regress_scenarios import parse_perturbation
    from heygem.errors import HeygemError

    try:
        return parse_perturbation(text)
    except HeygemError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_regress(p: argparse.ArgumentParser) -> None:
    from diagnostics.regress_scenarios import DEFAULT_GOLDEN, SCENARIO_NAMES

    actions = p.add_subparsers(dest="regress_command", required=True, metavar="ACTION")
    common = [_common()]
    record = actions.add_parser(
        "record",
        parents=common,
        help="run the scenarios, write a golden directory",
        description=RECORD_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check = actions.add_parser(
        "check",
        parents=common,
        help="compare a fresh run with a golden record",
        description=CHECK_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scenario_help = f"run only this scenario (repeatable): {', '.join(SCENARIO_NAMES)}"
    for action in (record, check):
        action.add_argument(
            "--scenario",
            action="append",
            choices=SCENARIO_NAMES,
            metavar="NAME",
            help=scenario_help,
        )
    record.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_GOLDEN,
        metavar="DIR",
        help="golden directory to write (default: the checkout's tests/golden)",
    )
    # cpu by default (reproducible); cuda/auto fingerprint a GPU.
    GenerateOptions.add_arguments(record, only=("backend", "device"), base=GOLDEN_OPTIONS)
    check.add_argument(
        "--golden",
        type=Path,
        default=DEFAULT_GOLDEN,
        metavar="DIR",
        help="golden directory (default: the checkout's tests/golden)",
    )
    check.add_argument(
        "--update",
        action="store_true",
        help="after comparing, write this run as the new golden (deliberate re-record)",
    )
    check.add_argument(
        "--perturb",
        type=_perturbation,
        metavar="STEP:AMOUNT",
        help="rehearse a drift, e.g. generate:0.01",
    )


def _add_env(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=4, help="DataLoader batch size (4)")
    p.add_argument(
        "--num-workers", type=_count, default=4, help="DataLoader workers, HeyGem's num_threads (4)"
    )
    p.add_argument("--prefetch", type=int, default=2, help="DataLoader prefetch_factor (2)")
    p.add_argument("--face-size", type=int, default=512, help="face crop side in pixels (512)")
    p.add_argument(
        "--only", action="append", metavar="ID", help="run only this probe (repeatable); see --list"
    )
    p.add_argument("--list", action="store_true", help="list the probe ids and exit")
    p.add_argument("--strict", action="store_true", help="exit 1 on WARN as well as FAIL")


def _add_log(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help="dh.log, docker logs or JSON log; - reads it from standard input",
    )


def _add_ps(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pid", type=int, help="root of the tree to inspect")
    p.add_argument(
        "--pattern",
        default="heygem",
        help="without --pid: command-line substring to look for (heygem)",
    )


def _add_probe(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=3.0, help="seconds of speech (3)")
    p.add_argument(
        "--template-seconds",
        type=float,
        default=2.0,
        help="seconds of template video (2; shorter than the speech, so the ping-pong loop runs)",
    )
    p.add_argument(
        "--size",
        type=_size,
        default=(512, 512),
        metavar="WxH",
        help="template size (512x512, HeyGem's face size)",
    )
    GenerateOptions.add_arguments(p, only=PROBE_OPTIONS)
    p.add_argument("--keep-output", type=Path, metavar="PATH", help="keep the generated MP4 here")
    p.add_argument(
        "--timeout",
        type=float,
        help="outer deadline in seconds, in case the watchdog never fires "
        "(default: derived from the inputs and options)",
    )


# --- commands -------------------------------------------------------------------------
def _emit(args: argparse.Namespace, report: Report) -> None:
    """Print a report the one way: text by default, JSON with --json."""
    _print(render_json(report) if args.json else render_text(report))


def _print(text: str) -> None:
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader stopped early (`| head`): not a failure, the verdict is the exit code.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def cmd_env(args: argparse.Namespace) -> int:
    from diagnostics.doctor import PROBES, DoctorConfig, run_doctor

    if args.list:
        _print(json.dumps({"probes": list(PROBES)}) if args.json else "\n".join(PROBES))
        return EXIT_OK
    config = DoctorConfig(
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        prefetch_factor=args.prefetch,
        face_size=args.face_size,
    )
    report = run_doctor(config, only=args.only)
    _emit(args, report)
    return report.exit_code(strict=args.strict)


def cmd_log(args: argparse.Namespace) -> int:
    from diagnostics.logs import analyze_log

    report = analyze_log(args.file)  # a file that cannot be read at all raises: exit 2
    _emit(args, report)
    return report.exit_code()


def cmd_ps(args: argparse.Namespace) -> int:
    from diagnostics.inspect import find_heygem_processes, inspect_process_tree, process_report

    if args.pid is not None:
        reports = [inspect_process_tree(args.pid)]  # a wrong pid is the user's: exit 2
    else:
        reports = _inspect_found(find_heygem_processes(args.pattern))
    report = process_report(reports, args.pattern)
    _emit(args, report)
    return report.exit_code()


def _inspect_found(pids: list[int]) -> list[ProcessTreeReport]:
    """Inspect each process found by a scan; one that exited meanwhile is skipped."""
    from diagnostics.inspect import inspect_process_tree
    from heygem.errors import InputNotFound

    reports = []
    for pid in pids:
        try:
            reports.append(inspect_process_tree(pid))
        except InputNotFound:
            log.debug("pid %d exited before it could be inspected", pid)
    return reports


def _probe_config(args: argparse.Namespace) -> ProbeConfig:
    from diagnostics.probe import ProbeConfig

    return ProbeConfig(
        options=GenerateOptions.from_arguments(args),
        audio_seconds=args.seconds,
        template_seconds=args.template_seconds,
        size=args.size,
        keep_output=args.keep_output,
        timeout=args.timeout,
    )


def cmd_probe(args: argparse.Namespace) -> int:
    from diagnostics.probe import probe_report, run_probe

    config = _probe_config(args)  # invalid options raise here: exit 2, not a finding
    with _progress_bar(enabled=not args.json and sys.stderr.isatty()) as progress:
        outcome = run_probe(config, progress=progress, echo_logs=args.verbose)
    report = probe_report(outcome)
    _emit(args, report)
    return report.exit_code()


@contextlib.contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A tqdm bar on stderr for interactive runs; nothing when piped or --json."""
    if not enabled:
        yield None
        return
    from tqdm import tqdm

    bars: list[tqdm[Any]] = []  # created on the first frame, so early errors print cleanly

    def update(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="frame", desc="probe", leave=False))
        bars[0].update(done - bars[0].n)

    try:
        yield update
    finally:
        for bar in bars:
            bar.close()


def cmd_regress(args: argparse.Namespace) -> int:
    from diagnostics import regress

    interactive = not args.json and sys.stderr.isatty()
    if args.regress_command == "record":
        regress.check_golden_dir(args.out)
        with _scenario_progress(interactive) as on_scenario:
            options = GenerateOptions.from_arguments(args, GOLDEN_OPTIONS)
            record = regress.record_run(
                args.scenario,
                backend=options.backend,
                device=options.device,
                on_scenario=on_scenario,
            )
        regress.write_golden(args.out, record)
        _emit(args, regress.record_report(args.out, record))
        return EXIT_OK
    with _scenario_progress(interactive) as on_scenario:
        report = regress.check(
            args.golden,
            args.scenario,
            perturb=args.perturb,
            update=args.update,
            on_scenario=on_scenario,
        )
    result = regress.check_report(report)
    _emit(args, result)
    return EXIT_OK if args.update else result.exit_code()


@contextlib.contextmanager
def _scenario_progress(enabled: bool) -> Iterator[Callable[[str], None] | None]:
    """One stderr line per scenario for interactive runs (each takes seconds)."""
    if not enabled:
        yield None
        return

    def started(name: str) -> None:
        print(f"{PROG}: regress: running scenario {name}", file=sys.stderr)

    yield started


def cmd_sync_score(args: argparse.Namespace) -> int:
    from diagnostics.findings import render_json, render_text
    from diagnostics.syncscore import sync_report, sync_score
    from heygem.errors import InputNotFound

    for path in (args.video, args.audio):
        if not path.is_file():
            raise InputNotFound(f"{str(path)!r} does not exist", hint="check the path")
    report = sync_report(
        sync_score(args.video, args.audio),
        video=str(args.video),
        audio=str(args.audio),
        threshold=args.threshold,
    )
    print(render_json(report) if args.json else render_text(report))
    return report.exit_code()


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "env": cmd_env,
    "log": cmd_log,
    "ps": cmd_ps,
    "run-probe": cmd_probe,
    "regress": cmd_regress,
    "sync-score": cmd_sync_score,
}


# --- entry point ----------------------------------------------------------------------
def _exit_code(code: object) -> int:
    """SystemExit.code as an int: argparse uses 0 (--help/--version) and our 2."""
    if code is None:
        return EXIT_OK
    return code if isinstance(code, int) else EXIT_COULD_NOT_RUN


def _could_not_run(exc: BaseException, verbose: bool) -> int:
    from heygem.errors import HeygemError

    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    text = str(exc) if isinstance(exc, HeygemError) else f"{type(exc).__name__}: {exc}"
    print(f"{PROG}: error: {' '.join(text.split())}", file=sys.stderr)
    return EXIT_COULD_NOT_RUN


def _configure_logging(verbose: bool) -> None:
    # basicConfig leaves an already configured root alone (an embedding app, pytest).
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: argparse has printed
        return _exit_code(exc.code)
    _configure_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the edge: any failure to run is exit 2
        return _could_not_run(exc, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
