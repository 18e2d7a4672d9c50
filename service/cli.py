"""``heygem serve``: run the service under uvicorn.

Registered as a ``heygem`` subcommand through the ``heygem.commands`` entry point, so the
pipeline package never imports the service; it configures logging itself (from
HEYGEM_SERVICE_LOG_LEVEL, -v forces debug). Settings come from ``HEYGEM_SERVICE_*``
environment variables; the options here override them. A bad setting is one line on
stderr and exit status 2. Without an API key the server only binds to loopback, unless
told otherwise. SIGTERM drains: new work gets 503, running jobs get the shutdown grace,
then they are cancelled with that reason; a second signal stops at once.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from heygem.errors import HeygemError

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from service.settings import ServiceSettings

log = logging.getLogger("service.cli")

PROG = "heygem serve"
LOG_FORMAT = "%(levelname)s %(name)s [req=%(request_id)s job=%(job_id)s]: %(message)s"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="bind address (default 127.0.0.1; others need an API key)")
    parser.add_argument("--port", type=int, help="port (default 8383)")
    parser.add_argument(
        "--workers", type=int, help="worker processes, each holding a warm pipeline (default 1)"
    )
    parser.add_argument(
        "--data-dir", type=Path, help="job store, uploads, results and the template cache"
    )
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
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configure_service_logging(level: str, verbose: bool = False) -> None:
    """The service's own logging: HEYGEM_SERVICE_LOG_LEVEL decides, -v forces debug.

    Every line carries the request id and the job id it concerns ('-' when none)."""
    from service.observe import ContextFilter

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else level.upper())


def fail(message: str, hint: str | None = None) -> int:
    """A configuration problem: one line (plus what to do), exit status 2."""
    print(f"{PROG}: error: {message}" + (f" (what to do: {hint})" if hint else ""), file=sys.stderr)
    return 2


def load_settings(args: argparse.Namespace) -> ServiceSettings | str:
    """The settings, or the one line that says what is wrong with them."""
    from service.settings import (
        ENV_PREFIX,
        ServiceSettings,
        settings_error_line,
        unknown_env_vars,
    )

    unknown = unknown_env_vars(os.environ)
    if unknown:
        return f"unknown setting {', '.join(unknown)} (a typo? see the README's service section)"
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
        return ServiceSettings(**overrides)
    except ValidationError as exc:
        return settings_error_line(exc)
    except SettingsError as exc:  # a nested value that is not JSON
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"{ENV_PREFIX}{field.group(1).upper()}" if field else "a setting"
        cause = str(exc.__cause__ or exc).splitlines()[0]
        return f"invalid service settings: {name} is not valid JSON ({cause})"


def check_settings(settings: ServiceSettings) -> str | None:
    """What the settings cannot express by themselves: directories, keys off loopback."""
    from service.settings import ENV_PREFIX

    if settings.media_root is not None and not settings.media_root.is_dir():
        return f"{ENV_PREFIX}MEDIA_ROOT: {settings.media_root} is not a directory"
    checkpoint = settings.options.checkpoint
    if checkpoint is not None and not checkpoint.is_file():
        return f"{ENV_PREFIX}PIPELINE__CHECKPOINT: {checkpoint} is not a file"
    for name, path in (
        ("DATA_DIR", settings.data_dir),
        ("PIPELINE__CACHE_DIR", settings.cache_dir),
        ("DATABASE_PATH", settings.database.parent),
    ):
        try:
            path.mkdir(parents=True, exist_ok=True)
            # A probe of its own: workers on several machines check one shared directory at
            # once (one fixed name let one process delete another's probe under it).
            with tempfile.NamedTemporaryFile(dir=path, prefix=".heygem-write-test-"):
                pass
        except OSError as exc:
            return f"{ENV_PREFIX}{name}: {path} is not a writable directory ({exc.strerror})"
    if (
        not settings.auth_enabled
        and not is_loopback(settings.host)
        and not settings.allow_remote_without_key
    ):
        return (
            f"refusing to serve on {settings.host} without an API key (set "
            "HEYGEM_SERVICE_API_KEY or HEYGEM_SERVICE_API_KEYS, bind to 127.0.0.1, or set "
            "HEYGEM_SERVICE_ALLOW_REMOTE_WITHOUT_KEY=1)"
        )
    return None


def serve_args(args: argparse.Namespace) -> int:
    """Run the server for parsed arguments (what ``heygem serve`` calls)."""
    import uvicorn

    from service.app import create_app

    settings = load_settings(args)
    if isinstance(settings, str):
        return fail(settings)
    configure_service_logging(settings.log_level, getattr(args, "verbose", False))
    problem = check_settings(settings)
    if problem:
        return fail(problem)
    try:
        app = create_app(settings)
    except HeygemError as exc:  # e.g. the wav2lip generator without a checkpoint
        return fail(f"invalid service settings: {exc.message}", exc.hint)
    log.info(
        "serving on http://%s:%d with %d workers, data in %s",
        settings.host,
        settings.port,
        settings.workers,
        settings.data_dir,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # ours (configure_service_logging), not uvicorn's
        access_log=False,  # service.observe writes one access line with the request id
        workers=1,  # one server process: the job pool lives in it
    )
    draining_server(config, app).run()
    return 0


def draining_server(config: uvicorn.Config, app: FastAPI) -> uvicorn.Server:
    """uvicorn's server, whose first SIGTERM/SIGINT drains the jobs before it stops."""
    import uvicorn

    from service.app import drain

    class DrainingServer(uvicorn.Server):
        drainer: threading.Thread | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.drainer is not None or self.should_exit:
                super().handle_exit(sig, frame)  # a second signal: stop now
                return
            log.warning("received %s: draining", signal.Signals(sig).name)
            self._captured_signals.append(sig)  # re-raised by uvicorn once it stopped
            self.drainer = threading.Thread(
                target=self._drain_then_exit, name="heygem-drain", daemon=True
            )
            self.drainer.start()

        def _drain_then_exit(self) -> None:
            try:
                drain(app)
            except Exception:
                log.exception("draining failed; stopping anyway")
            self.should_exit = True

    return DrainingServer(config)


def serve(argv: Sequence[str] | None = None) -> int:
    return serve_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(serve())
