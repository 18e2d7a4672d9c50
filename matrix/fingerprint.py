"""Print this environment's golden-regression fingerprints as one JSON object.

``python -m matrix.fingerprint --label ID [--scenario NAME ...]`` runs
``diagnostics.regress.fingerprint_environment_run`` (CPU, one thread, sampled frames
dropped: ~35 KB for the default scenarios) and prints the record for ``run_cell`` to store.
Exit 0 with the record on stdout; 2 for an unknown scenario; any other failure exits
non-zero with its traceback on stderr, which ``run_cell`` keeps as the evidence.

Runs inside a cell's virtualenv (needs numpy, opencv, torch, onnxruntime, heygem).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from diagnostics.regress import fingerprint_environment_run
from heygem.errors import InvalidOption


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m matrix.fingerprint", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--label", required=True, help="names this record in the drift table")
    parser.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help="repeatable; default: all scenarios",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        record = fingerprint_environment_run(
            args.scenario or None,
            backend="onnxruntime",
            device="cpu",
            label=args.label,
            frames=False,
        )
    except InvalidOption as exc:
        print(f"matrix.fingerprint: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(record, ensure_ascii=False))  # the parent reads this: CLI output
    return 0


if __name__ == "__main__":
    sys.exit(main())
