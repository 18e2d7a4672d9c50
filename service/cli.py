"""``heygem serve``: run the service under uvicorn.

Registered as a ``heygem`` subcommand through the ``heygem.commands`` entry point, so the
pipeline package never imports the service. Settings come from ``HEYGEM_SERVICE_*``
environment variables; the options here override them. Without an API key the server
only binds to loopback, unless told otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from heygem.cli import print_error
from heygem.errors import HeygemError

log = logging.getLogger("service.cli")

PROG = "heygem serve"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (default 127.0.0.1; others need an API key)")
    parser.add_argument("--port", type=int, help="port (default 8383)")
    parser.add_argument(
        "--workers", type=int, help="worker processes, each holding a warm pipeline (default 1)"
    )
    parser.add_argument("--data-dir", type=Path, help="job store, uploads and results")
    parser.add_argument(
        "--media-root", type=Path, help="directory the HeyGem-compatible API may read paths from"
    )


def register(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add_common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Add ``serve`` to the ``heygem`` command line (the ``heygem.commands`` entry point)."""
    serve = sub.add_parser("serve", help="run the REST generation service (uvicorn)")
    add_serve_arguments(serve)
    add_common(serve)
    serve.set_defaults(run=serve_args, configure_logging=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    add_serve_arguments(parser)
    return parser


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configure_service_logging(level: str, verbose: bool = False) -> None:
    """The service's own logging: HEYGEM_SERVICE_LOG_LEVEL decides, -v forces debug."""
    root = logging.getLogger()
    root.handlers.clear()
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else level.upper())


def serve_args(args: argparse.Namespace) -> int:
    """Run the server for parsed arguments (what ``heygem serve`` calls)."""
    import uvicorn

    from service.app import create_app
    from service.settings import ServiceSettings

    overrides: dict[str, Any] = {
        key: value
        for key, value in (
            ("host", args.host),
            ("port", args.port),
            ("workers", args.workers),
            ("data_dir", args.data_dir),
            ("media_root", args.media_root),
        )
        if value is not None
    }
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as exc:
        print(f"{PROG}: error: invalid service settings: {exc}", file=sys.stderr)
        return 2
    configure_service_logging(settings.log_level, getattr(args, "verbose", False))
    if (
        settings.api_key is None
        and not is_loopback(settings.host)
        and (not settings.allow_remote_without_key)
    ):
        print(
            f"{PROG}: error: refusing to serve on {settings.host} without an API key\n"
            "  what to do: set HEYGEM_SERVICE_API_KEY, bind to 127.0.0.1, or set "
            "HEYGEM_SERVICE_ALLOW_REMOTE_WITHOUT_KEY=1",
            file=sys.stderr,
        )
        return 2
    try:
        app = create_app(settings)
    except HeygemError as exc:  # e.g. the wav2lip generator without a checkpoint
        print_error(exc, PROG)
        return exc.exit_code
    log.info(
        "serving on http://%s:%d with %d workers, data in %s",
        settings.host,
        settings.port,
        settings.workers,
        settings.data_dir,
    )
    # One server process: the job pool lives in it (its own worker processes scale out).
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level, workers=1
    )
    return 0


def serve(argv: Sequence[str] | None = None) -> int:
    return serve_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(serve())
