"""``heygem worker``: a generation worker for ``HEYGEM_SERVICE_EXECUTOR=celery``.

Configured like ``heygem serve`` (the same ``HEYGEM_SERVICE_*`` settings; ``--data-dir``
is this machine's mount of the shared directory). Before it takes a job it checks what
would otherwise fail the first one, and refuses to start with the reason (exit 2):
the shared directory is the API's and is writable, the settings are sane, and the
doctor's probes for this worker's configuration pass (``/dev/shm`` for its DataLoader,
CUDA when a GPU is asked for). Warnings are logged and shown by ``heygem-diagnose ps``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heygem.config import GenerateOptions

if TYPE_CHECKING:
    from service.settings import ServiceSettings

log = logging.getLogger("service.worker_cli")

PROG = "heygem worker"
DOCTOR_TIMEOUT = 180.0
_DEVICES = ("auto", "cpu", "cuda")


def add_worker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="this machine's mount of the shared directory the API uses (HEYGEM_SERVICE_DATA_DIR)",
    )
    parser.add_argument(
        "--media-root", type=Path, help="this machine's mount of the API's media root, if any"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        help="pool processes, each with a warm pipeline and one job at a time "
        "(default HEYGEM_SERVICE_WORKERS, 1); one per GPU is the usual choice",
    )
    parser.add_argument(
        "--device",
        help="auto, cpu, cuda or cuda:N (this worker uses GPU N only: CUDA_VISIBLE_DEVICES)",
    )
    parser.add_argument(
        "--name",
        help="Celery node name (default heygem@<host name>; give each worker on one "
        "machine its own)",
    )
    parser.set_defaults(host=None, port=None, workers=None)


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``worker`` to the ``heygem`` command line (the ``heygem.commands`` entry point)."""
    worker = sub.add_parser(
        "worker", help="run a generation worker for the service's celery executor (Redis)"
    )
    add_worker_arguments(worker)
    add_common(worker)
    worker.set_defaults(run=worker_args, configure_logging=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    add_worker_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def fail(message: str, hint: str | None = None) -> int:
    print(f"{PROG}: error: {message}" + (f" (what to do: {hint})" if hint else ""), file=sys.stderr)
    return 2


def parse_device(text: str) -> tuple[str, str | None]:
    """``cuda:1`` -> ("cuda", "1"); the second part becomes CUDA_VISIBLE_DEVICES."""
    name, _, index = text.partition(":")
    if name not in _DEVICES or (index and (name != "cuda" or not index.isdigit())):
        raise ValueError(f"--device {text!r}: use auto, cpu, cuda or cuda:N")
    return name, index or None


def worker_args(args: argparse.Namespace) -> int:
    """Run a worker for parsed arguments (what ``heygem worker`` calls)."""
    from service.cli import check_settings, configure_service_logging, load_settings
    from service.options import PipelineOptionsModel
    from service.settings import ENV_PREFIX

    if args.concurrency is not None:
        args.workers = args.concurrency
    settings = load_settings(args)
    if isinstance(settings, str):
        return fail(settings)
    configure_service_logging(settings.log_level, getattr(args, "verbose", False))
    if settings.broker_url is None:
        return fail(
            f"{ENV_PREFIX}BROKER_URL is not set",
            hint="point it at the Redis the API uses, e.g. redis://redis:6379/0",
        )
    if settings.workers < 1:
        return fail("--concurrency must be at least 1")
    device = args.device or settings.options.device
    try:
        device_name, gpu_index = parse_device(device)
    except ValueError as exc:
        return fail(str(exc))
    if gpu_index is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_index  # before any CUDA library loads
    current: PipelineOptionsModel = settings.pipeline
    pipeline = current.model_copy(update={"device": device_name})
    settings = settings.model_copy(update={"pipeline": pipeline})
    try:
        options = settings.base_options()
    except Exception as exc:  # noqa: BLE001 - InvalidOption and friends: one line
        return fail(f"invalid service settings: {exc}")
    problem = check_settings(settings)
    if problem:
        return fail(problem)
    from service.shared import SharedDirectoryError, check_worker_access

    try:
        check_worker_access(settings)
    except SharedDirectoryError as exc:
        return fail(exc.message, exc.hint)
    findings = startup_findings(options)
    fatal = fatal_findings(findings, options, device)
    for finding in findings:
        level = logging.WARNING if finding["severity"] in ("warn", "fail") else logging.DEBUG
        log.log(level, "start-up check %s: %s", finding["id"], finding["title"])
    if fatal:
        return fail(fatal[0], fatal[1])
    return run(settings, options, device, args.name, findings)


def run(
    settings: ServiceSettings,
    options: GenerateOptions,
    device: str,
    name: str | None,
    findings: Sequence[dict[str, Any]] = (),
) -> int:
    import socket

    from service.celery_app import shown_url
    from service.celery_worker import WorkerSetup, build_app

    hostname = name or f"heygem@{socket.gethostname()}"
    with tempfile.TemporaryDirectory(prefix="heygem-worker-") as scratch:
        start_error = Path(scratch) / "start-error"
        setup = WorkerSetup(
            settings=settings,
            options=options,
            hostname=hostname,
            device=device,
            concurrency=settings.workers,
            start_error_file=start_error,
            findings=tuple(findings),
        )
        app = build_app(setup)
        log.info(
            "worker %s: %d pool process(es) on %s, queue %s on %s, shared directory %s",
            hostname,
            settings.workers,
            device,
            settings.celery_queue,
            shown_url(settings),
            settings.data_dir,
        )
        worker = app.Worker(
            hostname=hostname,
            concurrency=settings.workers,
            pool="prefork",
            queues=[settings.celery_queue],
            loglevel=settings.log_level.upper(),
            optimization="fair",
            without_gossip=True,
        )
        worker.start()
        if start_error.exists():
            return fail(
                f"the pipeline cannot be built on this worker: {start_error.read_text()}",
                hint="fix the model/device settings; `heygem-diagnose env` checks this machine",
            )
        return int(worker.exitcode or 0)


def startup_findings(options: GenerateOptions) -> list[dict[str, Any]]:
    """The doctor's probes for this worker's configuration, run in a child process (the
    CUDA probes must not initialise CUDA in the process that forks the pool)."""
    probes = ["shm", "cgroup-memory"]
    if options.gpu_requested:
        probes += ["gpu", "ort-cuda", "cuda-consistency"]
    command = [
        sys.executable,
        "-m",
        "diagnostics.cli",
        "env",
        "--json",
        "--num-workers",
        str(options.num_workers),
        "--batch-size",
        str(options.batch_size),
    ]
    for probe in probes:
        command += ["--only", probe]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=DOCTOR_TIMEOUT, check=False
        )
        findings: list[dict[str, Any]] = json.loads(done.stdout)["findings"]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError) as exc:
        log.warning("the start-up doctor could not run (%s); starting without its checks", exc)
        return []
    return findings


def fatal_findings(
    findings: Sequence[dict[str, Any]], options: GenerateOptions, device: str
) -> tuple[str, str | None] | None:
    """What keeps this worker from starting: a failed probe, or no working GPU provider
    for a worker asked to use a GPU (it would otherwise fail or crawl at its first job)."""
    by_id = {f["id"]: f for f in findings}
    for finding in findings:
        if finding["severity"] == "fail":
            evidence = "; ".join(finding.get("evidence", [])[:3])
            return f"start-up check failed: {finding['title']} ({evidence})", finding.get("fix")
    if options.gpu_requested:
        needed = "ort-cuda" if options.backend == "onnxruntime" else "gpu"
        probe = by_id.get(needed)
        if probe is not None and probe["severity"] != "ok":
            evidence = "; ".join(probe.get("evidence", [])[:3])
            return (
                f"--device {device} asks for a GPU, but this machine fails the check "
                f"'{probe['title']}': {evidence}",
                probe.get("fix")
                or "install the GPU build (pip install 'heygem-harness[gpu]') "
                "and the CUDA libraries it needs, or start the worker with --device cpu",
            )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    return worker_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
