"""Run the selected cells of one package combination, inside that combination's virtualenv.

Per runtime setting (DataLoader ``num_workers`` x ``/dev/shm`` size), three steps, each a
subprocess in a private ``/dev/shm`` of that size (a tmpfs in a new mount namespace, which
needs root; otherwise the cell is recorded "unavailable", never run on the host's shm):

1. ``heygem-diagnose env --json``: the doctor, told the same DataLoader shape;
2. ``heygem-diagnose run-probe --json``: one generation under the pipeline's watchdogs;
3. ``python -m matrix.load_probe``: a HeyGem 512x512 DataLoader load (see that module).

Every step has an outer timeout (a hung step is "stalled", its process group killed) and
one JSON line per cell is appended to the results file. Before the cells, once per package
combination (they depend on neither workers nor /dev/shm), ``python -m matrix.fingerprint``
takes the golden-regression fingerprints, stored beside the results file for the report's
drift table (``results.fingerprints/<combination>.json``); a failure is stored there too.
Exit 0 when every cell was recorded, whatever the outcomes; 2 when the harness itself could
not run.

Standard library only (the noxfile imports ``parse_args`` to validate its arguments).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata as md
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

from matrix.cells import (
    Cell,
    Packages,
    Selection,
    SelectionError,
    add_selection_arguments,
    find_packages,
    selection_from_namespace,
)
from matrix.results import (
    CellResult,
    Fingerprint,
    Outcome,
    StepResult,
    append_results,
    worst,
    write_fingerprint,
)

__all__ = [
    "FINGERPRINT_SCENARIOS",
    "CellOptions",
    "main",
    "parse_args",
    "run_cells",
    "shm_unavailable_reason",
]

log = logging.getLogger("matrix.run_cell")

DEFAULT_RESULTS = Path("matrix-results/results.jsonl")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# Distributions whose installed versions the record keeps (metadata only, no imports).
_DISTRIBUTIONS = (
    "numpy",
    "torch",
    "onnxruntime",
    "onnxruntime-gpu",
    "opencv-python-headless",
    "librosa",
    "av",
    "onnx",
    "scipy",
    "numba",
)
_PROBE_OUTCOMES = {
    "ok": Outcome.OK,
    "stalled": Outcome.STALLED,
    "crashed": Outcome.CRASHED,
    "bad-input": Outcome.ERROR,
    "error": Outcome.ERROR,
}
_DOCTOR_EVIDENCE = ("shm", "thread-env", "ort-cuda", "cuda-consistency", "gpu", "numpy-abi")
_TAIL = 12  # stderr lines kept as evidence when a step gives no JSON
# "video" runs every stage (inputs to mux) on a real template, "seeded-batch" the generator
# alone on fixed inputs: ~6 s together on 2 cores (all five scenarios: ~12 s).
FINGERPRINT_SCENARIOS: tuple[str, ...] = ("video", "seeded-batch")


@dataclass(frozen=True)
class CellOptions:
    packages: Packages
    selection: Selection = field(default_factory=Selection)
    results: Path = DEFAULT_RESULTS
    logs: Path | None = None  # default: "logs" beside the results file
    cache_dir: Path | None = None  # default: in the virtualenv (its torch exports the ONNX)
    session: str | None = None
    install_s: float | None = None
    seconds: float = 3.0  # speech the probe generates
    probe_size: str = "512x512"
    batch_size: int = 16
    stall_timeout: float = 10.0
    load_batches: int = 12
    load_face_size: int = 512
    warm_up: bool = True  # fill the face/ONNX caches first, so fps compares across cells
    doctor_only: tuple[str, ...] = ()  # doctor probe ids (empty: all of them)
    fingerprint: bool = True  # take the combination's regression fingerprints first
    fingerprint_scenarios: tuple[str, ...] = FINGERPRINT_SCENARIOS  # empty: all of them
    fingerprint_timeout: float = 120.0  # ~10x a loaded 2-core machine's time

    @property
    def log_dir(self) -> Path:
        return self.logs or self.results.parent / "logs"

    @property
    def cache(self) -> Path:
        return self.cache_dir or Path(sys.prefix) / "heygem-matrix-cache"


# --- command line ---------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SelectionError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m matrix.run_cell", description="Run matrix cells of one package combination."
    )
    parser.add_argument(
        "--packages",
        required=True,
        metavar="ID",
        help="package combination id (e.g. torch2.4.1-ort1.18.0-cpu), or "
        "'here' for whatever this environment has installed",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        help=f"JSON-lines file to append to ({DEFAULT_RESULTS})",
    )
    parser.add_argument("--logs", type=Path, help="step logs (default: logs/ beside results)")
    parser.add_argument("--cache-dir", type=Path, help="heygem cache (default: in the venv)")
    parser.add_argument("--session", help="nox session name, kept in the record")
    parser.add_argument("--install-seconds", type=float, help="install time, kept in the record")
    parser.add_argument("--seconds", type=float, default=3.0, help="probe speech seconds (3)")
    parser.add_argument("--probe-size", default="512x512", help="probe template size")
    parser.add_argument("--batch-size", type=int, default=16, help="DataLoader batch (16)")
    parser.add_argument(
        "--stall-timeout", type=float, default=10.0, help="probe watchdog stall timeout (10)"
    )
    parser.add_argument(
        "--load-batches", type=int, default=12, help="batches the HeyGem-sized load step pulls (12)"
    )
    parser.add_argument(
        "--load-face-size", type=int, default=512, help="face size of the load step (512)"
    )
    parser.add_argument(
        "--doctor-only",
        action="append",
        default=[],
        metavar="ID",
        help="run only these doctor probes (repeatable; default all)",
    )
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="skip the cache-filling probe run before the cells",
    )
    parser.add_argument(
        "--fingerprint-scenarios",
        metavar="LIST",
        default=",".join(FINGERPRINT_SCENARIOS),
        help="regression scenarios to fingerprint, comma-separated, or 'all' "
        f"(default {','.join(FINGERPRINT_SCENARIOS)})",
    )
    parser.add_argument(
        "--no-fingerprint",
        action="store_true",
        help="keep the combination's stored fingerprints, take none",
    )
    add_selection_arguments(parser)
    return parser


def parse_args(argv: Sequence[str]) -> CellOptions:
    """Raises SelectionError (a ValueError) with a one-line message on bad arguments."""
    ns = build_parser().parse_args(list(argv))
    packages = here_packages() if ns.packages == "here" else find_packages(ns.packages)
    return CellOptions(
        packages=packages,
        selection=selection_from_namespace(ns),
        results=ns.results,
        logs=ns.logs,
        cache_dir=ns.cache_dir,
        session=ns.session,
        install_s=ns.install_seconds,
        seconds=ns.seconds,
        probe_size=ns.probe_size,
        batch_size=ns.batch_size,
        stall_timeout=ns.stall_timeout,
        load_batches=ns.load_batches,
        load_face_size=ns.load_face_size,
        warm_up=not ns.no_warm_up,
        doctor_only=tuple(ns.doctor_only),
        fingerprint=not ns.no_fingerprint,
        fingerprint_scenarios=_scenario_list(ns.fingerprint_scenarios),
    )


def _scenario_list(text: str) -> tuple[str, ...]:
    """'video, seeded-batch' -> ('video', 'seeded-batch'); 'all' -> () (the child checks
    the names: this module cannot import the project)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    return () if names == ("all",) else names


def here_packages() -> Packages:
    """The combination installed in this environment (for a run outside nox)."""
    versions = installed_versions()
    flavour = "gpu" if versions.get("onnxruntime-gpu") else "cpu"
    ort = versions.get("onnxruntime-gpu") or versions.get("onnxruntime") or "none"
    torch = (versions.get("torch") or "none").split("+")[0]
    return Packages(torch, ort, flavour, quick=True)


def installed_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": ".".join(map(str, sys.version_info[:3]))}
    for dist in _DISTRIBUTIONS:
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return versions


def version_mismatches(packages: Packages, versions: Mapping[str, str | None]) -> list[str]:
    """Pins the environment does not honour (pip upgraded something it should not have)."""
    problems = []
    torch = versions.get("torch") or ""
    if torch.split("+")[0] != packages.torch:
        problems.append(f"torch {torch or 'missing'} installed, cell pins {packages.torch}")
    ort = versions.get(packages.ort_distribution)
    if ort != packages.ort:
        problems.append(
            f"{packages.ort_distribution} {ort or 'missing'} installed, cell pins {packages.ort}"
        )
    other = "onnxruntime" if packages.flavour == "gpu" else "onnxruntime-gpu"
    if versions.get(other):
        problems.append(
            f"{other} {versions[other]} is installed too (same module: which "
            "one loads is undefined)"
        )
    numpy = versions.get("numpy") or "missing"
    if packages.torch != "none" and not numpy.startswith("1.") and not packages.quick:
        problems.append(f"numpy {numpy} installed, cell pins numpy<2")
    return problems


# --- the private /dev/shm -------------------------------------------------------------
# $0 is the size and "$@" the command, so nothing is interpolated into the shell text.
_MOUNT_AND_EXEC = 'mount -t tmpfs -o size="$0" tmpfs /dev/shm && exec "$@"'


def shm_unavailable_reason() -> str | None:
    """None if a private tmpfs /dev/shm can be mounted here, else why not."""
    if os.geteuid() != 0:
        return (
            "not root: a private /dev/shm of a given size needs a new mount namespace "
            "(run the matrix as root, e.g. in its container)"
        )
    unshare = shutil.which("unshare")
    if unshare is None:
        return "unshare(1) not found (util-linux)"
    try:
        trial = subprocess.run(
            [unshare, "--mount", "sh", "-c", _MOUNT_AND_EXEC, "1m", "true"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unshare --mount could not run: {exc}"
    if trial.returncode != 0:
        return f"unshare --mount + mount tmpfs failed: {trial.stderr.strip()[-300:]}"
    return None


def in_private_shm(size: str, command: Sequence[str]) -> list[str]:
    return ["unshare", "--mount", "sh", "-c", _MOUNT_AND_EXEC, size, *command]


# --- running one step -----------------------------------------------------------------
@dataclass(frozen=True)
class StepRun:
    returncode: int | None  # None: killed at the timeout
    stdout: str
    stderr_tail: tuple[str, ...]
    seconds: float
    leftover: int  # processes of its group still alive afterwards (then killed)

    def json(self) -> dict[str, Any] | None:
        """The step's JSON report (the first '{' on), or None."""
        start = self.stdout.find("{")
        if start < 0:
            return None
        try:
            data = json.loads(self.stdout[start:])
        except ValueError:
            return None
        return data if isinstance(data, dict) else None


def _group_members(pgid: int) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            # Fields after the ')' of the command name: state, ppid, pgrp.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                count += 1
    return count


def run_step(
    command: Sequence[str], *, timeout: float, log_path: Path, env: Mapping[str, str]
) -> StepRun:
    """Run in its own process group; stderr to ``log_path``, stdout to a file beside it
    (a pipe would stay open while an orphaned worker holds it: waiting for its EOF would
    turn a finished step into a hang). Whatever the step leaves running is counted and
    killed, so the next cell starts clean."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out_path = log_path.with_suffix(".out")
    started = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as stderr, out_path.open("w") as stdout:
        stderr.write("$ " + " ".join(command) + "\n")
        stderr.flush()
        proc = subprocess.Popen(
            list(command),
            stdout=stdout,
            stderr=stderr,
            text=True,
            env=dict(env),
            start_new_session=True,
        )
        try:
            returncode: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            returncode = None
    seconds = round(time.perf_counter() - started, 3)
    leftover = _group_members(proc.pid)
    if leftover:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]
    return StepRun(
        returncode,
        out_path.read_text(encoding="utf-8", errors="replace"),
        tuple(lines[-_TAIL:]),
        seconds,
        leftover,
    )


# --- the cell -------------------------------------------------------------------------
@dataclass(frozen=True)
class _Context:
    options: CellOptions
    diagnose: tuple[str, ...]  # how to start heygem-diagnose in this environment
    env: Mapping[str, str]
    versions: Mapping[str, str | None]


def _diagnose_command() -> tuple[str, ...]:
    script = Path(sys.executable).with_name("heygem-diagnose")
    return (str(script),) if script.exists() else (sys.executable, "-m", "diagnostics.cli")


def _step_env() -> dict[str, str]:
    """The environment of every step. The thread variables HeyGem operators set are set
    (to the usable CPU count, which changes nothing here) unless the caller set them, so
    the doctor has something to check for reaching spawn/forkserver children."""
    env = dict(os.environ)
    cpus = str(len(os.sched_getaffinity(0)))
    for name in THREAD_VARS:
        env.setdefault(name, cpus)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _probe_command(ctx: _Context, workers: int, seconds: float) -> list[str]:
    o = ctx.options
    return [
        *ctx.diagnose,
        "run-probe",
        "--json",
        "--seconds",
        f"{seconds:g}",
        "--size",
        o.probe_size,
        "--num-workers",
        str(workers),
        "--batch-size",
        str(o.batch_size),
        "--stall-timeout",
        f"{o.stall_timeout:g}",
        "--cache-dir",
        str(o.cache),
    ]


def _probe_timeout(options: CellOptions, workers: int) -> float:
    # Above the probe's own deadline (60 + 10/s of speech + 3 stall timeouts + start-up),
    # so the probe reports a stall itself whenever it can.
    return 120.0 + 10.0 * options.seconds + 3.0 * options.stall_timeout + 5.0 * workers


def warm_up(ctx: _Context) -> None:
    """One throw-away probe run that fills the template and ONNX caches (export + face
    track), so the first cell's fps is not charged for them."""
    marker = ctx.options.cache / ".matrix-warm"
    if marker.exists():
        return
    log.info("warming the caches in %s (one probe run)", ctx.options.cache)
    ctx.options.cache.mkdir(parents=True, exist_ok=True)
    run = run_step(
        _probe_command(ctx, 0, 1.0),
        timeout=_probe_timeout(ctx.options, 0),
        log_path=ctx.options.log_dir / ctx.options.packages.id / "warm-up.log",
        env=ctx.env,
    )
    if run.returncode in (0, 1):
        marker.write_text(f"{run.seconds}\n")
    else:
        log.warning("warm-up probe failed (exit %s); the cells will show why", run.returncode)


def _take_fingerprint(ctx: _Context) -> Fingerprint:
    """The combination's golden-regression fingerprints; a failure is a result, not raised."""
    o = ctx.options
    started = datetime.now(UTC).isoformat(timespec="seconds")
    command = [sys.executable, "-m", "matrix.fingerprint", "--label", o.packages.id]
    for name in o.fingerprint_scenarios:
        command += ["--scenario", name]
    run = run_step(
        command,
        timeout=o.fingerprint_timeout,
        log_path=o.log_dir / o.packages.id / "fingerprint.log",
        env=ctx.env,
    )
    record = run.json() if run.returncode == 0 else None
    common: dict[str, Any] = {
        "packages_id": o.packages.id,
        "seconds": run.seconds,
        "started": started,
        "scenarios": o.fingerprint_scenarios,
    }
    if record is not None and record.get("kind") == "heygem-regress":
        return Fingerprint(ok=True, record=record, **common)
    if run.returncode is None:
        why = f"timed out after {o.fingerprint_timeout:g} s"
    elif run.returncode == 0:
        why = "printed no regression record"
    else:
        why = f"exit {run.returncode}"
    return Fingerprint(
        ok=False, error=f"python -m matrix.fingerprint {why}", tail=run.stderr_tail, **common
    )


def _fingerprint(ctx: _Context) -> None:
    """Take and store the fingerprints; nothing here may stop the cells from running."""
    try:
        fingerprint = _take_fingerprint(ctx)
        path = write_fingerprint(ctx.options.results, fingerprint)
    except OSError as exc:
        log.warning("fingerprints of %s not stored: %s", ctx.options.packages.id, exc)
        return
    if fingerprint.ok:
        log.info("fingerprints in %.1f s: %s", fingerprint.seconds, path)
    else:
        log.warning(
            "fingerprinting failed (%s), recorded in %s:\n  %s",
            fingerprint.error,
            path,
            "\n  ".join(fingerprint.tail),
        )


def _doctor(
    ctx: _Context, cell: Cell, prefix: list[str], logs: Path
) -> tuple[dict[str, Any], float]:
    o = ctx.options
    command = [
        *prefix,
        *ctx.diagnose,
        "env",
        "--json",
        "--num-workers",
        str(cell.runtime.workers),
        "--batch-size",
        str(o.batch_size),
        "--face-size",
        str(o.load_face_size),
    ]
    for probe_id in o.doctor_only:
        command += ["--only", probe_id]
    run = run_step(command, timeout=180.0, log_path=logs / "doctor.log", env=ctx.env)
    report = run.json() if run.returncode in (0, 1) else None
    if report is None:
        why = "timed out" if run.returncode is None else f"exit {run.returncode}"
        return {"error": f"heygem-diagnose env {why}", "tail": list(run.stderr_tail)}, run.seconds
    results = report.get("findings", [])
    return {
        "worst": report.get("worst"),
        "status": {r["id"]: r["severity"] for r in results},
        "evidence": {
            r["id"]: [_clean(line) for line in r.get("evidence", [])[:12]]
            for r in results
            if r["id"] in _DOCTOR_EVIDENCE
        },
        "fix": {
            r["id"]: r["fix"]
            for r in results
            if r.get("fix") and r.get("severity") in ("fail", "warn")
        },
    }, run.seconds


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _clean(line: str) -> str:
    """One evidence line: no terminal colours (ORT's logger), not a screenful long."""
    line = _ANSI.sub("", str(line)).strip()
    return line if len(line) <= 240 else line[:237] + "..."


# Doctor lines that say why a GPU went unused (ORT's loader errors, torch's CUDA state).
_FALLBACK_WHY = ("cannot find", "Failed to load", "not in use", "is_available")


def _no_answer(run: StepRun, what: str, timeout: float) -> StepResult:
    """A step that printed no JSON: hung (stalled) or could not run (error)."""
    if run.returncode is None:
        return StepResult(
            Outcome.STALLED,
            f"{what} gave no answer within {timeout:g} s",
            run.stderr_tail,
            run.seconds,
            {"leftover_processes": run.leftover},
        )
    return StepResult(
        Outcome.ERROR,
        f"{what} could not run (exit {run.returncode})",
        run.stderr_tail,
        run.seconds,
        {"leftover_processes": run.leftover},
    )


def _probe(
    ctx: _Context, cell: Cell, prefix: list[str], logs: Path
) -> tuple[StepResult, dict[str, Any]]:
    timeout = _probe_timeout(ctx.options, cell.runtime.workers)
    command = [*prefix, *_probe_command(ctx, cell.runtime.workers, ctx.options.seconds)]
    run = run_step(command, timeout=timeout, log_path=logs / "probe.log", env=ctx.env)
    data = run.json() if run.returncode in (0, 1) else None
    if data is None:
        return _no_answer(run, "heygem-diagnose run-probe", timeout), {}
    evidence: list[str] = []
    if ev := data.get("evidence"):
        message = [line for line in str(ev.get("message", "")).splitlines() if line.strip()]
        message[:1] = [f"{ev.get('error_type')}: {message[0] if message else ''}"]
        # Head names the stage, tail holds the stuck call or the real exception.
        evidence += message if len(message) <= 5 else [*message[:2], "...", *message[-2:]]
        if ev.get("hint"):
            evidence.append(f"hint: {ev['hint']}")
    if data.get("cpu_fallback"):
        evidence.append(
            f"providers requested {data.get('providers_requested')}, used "
            f"{data.get('providers_used')}"
        )
    evidence += [f"leftover: {d}" for d in data.get("leftover_detail", [])]
    evidence += [f"warning: {w}" for w in data.get("warnings", [])[:3]]
    detail = {
        k: data.get(k)
        for k in ("frames", "fps", "timings", "leftover_children", "healthy", "config")
    }
    if run.leftover:
        detail["leftover_processes"] = run.leftover
    outcome = _PROBE_OUTCOMES.get(str(data.get("outcome")), Outcome.ERROR)
    return StepResult(
        outcome, data.get("cause"), tuple(dict.fromkeys(evidence)), run.seconds, detail
    ), data


def lost_batch_line(log_path: Path) -> str | None:
    """The worker's ENOSPC line behind a stalled load, if the step's log has one: its queue
    feeder thread could not put a batch into /dev/shm, so the batch never arrived."""
    with contextlib.suppress(OSError):
        for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if "No space left on device" in line and "shared memory" in line:
                return _clean(line)
    return None


def _load(ctx: _Context, cell: Cell, prefix: list[str], logs: Path) -> StepResult:
    o = ctx.options
    command = [
        *prefix,
        sys.executable,
        "-m",
        "matrix.load_probe",
        "--workers",
        str(cell.runtime.workers),
        "--batch-size",
        str(o.batch_size),
        "--face-size",
        str(o.load_face_size),
        "--batches",
        str(o.load_batches),
    ]
    timeout = 90.0 + 10.0 * cell.runtime.workers + 2.0 * o.load_batches
    run = run_step(command, timeout=timeout, log_path=logs / "load.log", env=ctx.env)
    data = run.json() if run.returncode in (0, 1) else None
    step = (
        _no_answer(run, "the HeyGem-sized DataLoader load", timeout)
        if data is None
        else StepResult.from_dict(data)
    )
    if step.outcome is Outcome.STALLED and (line := lost_batch_line(logs / "load.log")):
        step = replace(
            step,
            cause="shared memory exhausted: a worker's batch was lost (no "
            "space left on /dev/shm) and the loader waited for it",
            evidence=(line, *step.evidence),
        )
    if run.leftover:
        step = replace(step, detail={**step.detail, "leftover_processes": run.leftover})
    return step


def run_one(ctx: _Context, cell: Cell, shm_problem: str | None) -> CellResult:
    started = datetime.now(UTC).isoformat(timespec="seconds")
    common: dict[str, Any] = {
        "started": started,
        "session": ctx.options.session,
        "install_s": ctx.options.install_s,
        "versions": ctx.versions,
    }
    if shm_problem is not None:
        return CellResult.for_cell(
            cell,
            Outcome.UNAVAILABLE,
            cause=f"private /dev/shm of {cell.runtime.shm} not possible here",
            evidence=(shm_problem,),
            failed_step="namespace",
            **common,
        )
    mismatches = version_mismatches(cell.packages, ctx.versions)
    if mismatches:
        return CellResult.for_cell(
            cell,
            Outcome.ERROR,
            cause="installed versions differ from the cell's pins",
            evidence=tuple(mismatches),
            failed_step="install",
            **common,
        )
    logs = ctx.options.log_dir / cell.id
    prefix = in_private_shm(cell.runtime.shm, [])
    doctor, doctor_s = _doctor(ctx, cell, prefix, logs)
    probe, probe_data = _probe(ctx, cell, prefix, logs)
    load = _load(ctx, cell, prefix, logs)
    steps = {"probe": probe, "load": load}
    outcome = worst(s.outcome for s in steps.values())
    failing = [name for name, s in steps.items() if s.outcome is not Outcome.OK]
    first = next((n for n in failing if steps[n].outcome is outcome), None)
    cause = steps[first].cause if first else probe.cause  # ok: e.g. "CPU fallback"
    evidence = tuple(f"{n}: {line}" for n in failing for line in steps[n].evidence)
    left = probe_data.get("leftover_children") or 0
    if left and outcome is Outcome.OK:  # ok, but HeyGem's <defunct> symptom: say so
        cause = cause or f"{left} child process(es) left behind"
        evidence += tuple(f"probe: {line}" for line in probe.evidence if "leftover" in line)
    if probe_data.get("cpu_fallback"):
        evidence += tuple(f"probe: {line}" for line in probe.evidence)
        evidence += tuple(
            f"doctor {key}: {line}"
            for key in ("ort-cuda", "gpu")
            for line in doctor.get("evidence", {}).get(key, [])
            if any(word in line for word in _FALLBACK_WHY)
        )
    return CellResult.for_cell(
        cell,
        outcome,
        cause=cause,
        evidence=tuple(dict.fromkeys(evidence)),
        failed_step=first,
        fps=probe_data.get("fps"),
        providers_requested=tuple(probe_data.get("providers_requested", ())),
        providers_used=tuple(probe_data.get("providers_used", ())),
        cpu_fallback=bool(probe_data.get("cpu_fallback")),
        doctor=doctor,
        steps=steps,
        duration_s=round(doctor_s + probe.seconds + load.seconds, 3),
        **common,
    )


def run_cells(
    options: CellOptions, shm_check: Callable[[], str | None] = shm_unavailable_reason
) -> list[CellResult]:
    """Run and record every selected cell of ``options.packages``; returns the records."""
    cells = options.selection.cells(options.packages)
    if not cells:
        log.info("no cell of %s is selected", options.packages.id)
        return []
    ctx = _Context(options, _diagnose_command(), _step_env(), installed_versions())
    shm_problem = shm_check()
    if shm_problem:
        log.warning("private /dev/shm unavailable: %s", shm_problem)
    elif options.warm_up:
        warm_up(ctx)
    if options.fingerprint:
        _fingerprint(ctx)
    records = []
    for number, cell in enumerate(cells, 1):
        log.info("[%d/%d] %s ...", number, len(cells), cell.id)
        record = run_one(ctx, cell, shm_problem)
        append_results(options.results, [record])  # as we go: a killed run keeps its cells
        records.append(record)
        why = f" - {record.cause}" if record.outcome is not Outcome.OK and record.cause else ""
        log.info(
            "[%d/%d] %s: %s%s%s in %.1f s",
            number,
            len(cells),
            cell.id,
            record.outcome,
            " (CPU fallback)" if record.cpu_fallback else "",
            why,
            record.duration_s,
        )
    return records


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        options = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"matrix.run_cell: error: {exc}", file=sys.stderr)
        return 2
    run_cells(options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
