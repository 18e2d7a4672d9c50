"""``heygem serve``: run the service under uvicorn.

Settings come from ``HEYGEM_SERVICE_*`` environment variables; the options here override
them. Without an API key the server only binds to loopback, unless told otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from heygem.cli import add_serve_arguments
from heygem.errors import HeygemError

log = logging.getLogger("service.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heygem serve", description=__doc__)
    add_serve_arguments(parser)
    return parser


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        print(f"error: invalid service settings: {exc}", file=sys.stderr)
        return 2
    if (
        settings.api_key is None
        and not is_loopback(settings.host)
        and (not settings.allow_remote_without_key)
    ):
        print(
            f"error: refusing to serve on {settings.host} without an API key\n"
            "  what to do: set HEYGEM_SERVICE_API_KEY, bind to 127.0.0.1, or set "
            "HEYGEM_SERVICE_ALLOW_REMOTE_WITHOUT_KEY=1",
            file=sys.stderr,
        )
        return 2
    try:
        app = create_app(settings)
    except HeygemError as exc:  # e.g. the wav2lip generator without a checkpoint
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"  what to do: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
    )
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
