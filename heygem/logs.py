"""Logging setup for the CLIs: readable text on stderr, optional JSON lines to a file.

The JSON lines (``ts``, ``level``, ``logger``, ``message``, ``job_id``, ``stage``,
``event`` plus any extra fields) are what ``heygem-diagnose log`` reads back.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

_PRINTED_BY_CLI = {"stage_stalled", "stage_crashed", "job_failed"}
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", None),
            "stage": getattr(record, "stage", None),
            "event": getattr(record, "event", None),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in data:
                data[key] = value if isinstance(value, int | float | str | bool) else str(value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def configure_logging(verbosity: int = 0, json_file: Path | None = None) -> None:
    """verbosity: -1 quiet (errors only), 0 warnings + our info, 1 debug."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.DEBUG}.get(verbosity, logging.INFO)
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(logging.DEBUG)
    console = logging.StreamHandler()
    console.setLevel(level)
    # The CLI prints a failed job's error once itself; its log events are for the JSON file.
    console.addFilter(lambda record: getattr(record, "event", None) not in _PRINTED_BY_CLI)
    console.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(console)
    if json_file is not None:
        handler = logging.FileHandler(json_file, encoding="utf-8")
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(JsonLineFormatter())
        root.addHandler(handler)
    for noisy in ("numba", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
