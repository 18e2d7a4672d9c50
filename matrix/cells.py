"""Matrix axes, cell ids and tags, and the command-line selection of a subset.

A cell is one package combination (torch x onnxruntime version x CPU/GPU wheel: one
virtualenv, one nox session) run with one runtime setting (DataLoader ``num_workers`` x
``/dev/shm`` size: varied inside that virtualenv). Selection options restrict any axis
(``--ort 1.18.0 --shm 64m``) or pick cells by tag (``--tag gpu``); values of one option
are alternatives (``--ort 1.16.3,1.18.0`` or the option twice), different options must
all match. Standard library only: the noxfile imports this module.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NoReturn

__all__ = [
    "FLAVOURS",
    "FULL_PACKAGES",
    "LIBRARY_PINS",
    "ORT_VERSIONS",
    "QUICK_PACKAGES",
    "SHM_SIZES",
    "TORCH_VERSIONS",
    "WORKERS",
    "Cell",
    "Packages",
    "Runtime",
    "Selection",
    "SelectionError",
    "add_selection_arguments",
    "find_packages",
    "parse_selection",
    "selection_from_namespace",
]

# The versions operators swapped between in the HeyGem reports.
ORT_VERSIONS: tuple[str, ...] = ("1.16.3", "1.18.0")
TORCH_VERSIONS: tuple[str, ...] = ("2.1.2", "2.4.1")
FLAVOURS: tuple[str, ...] = ("cpu", "gpu")
WORKERS: tuple[int, ...] = (0, 4)
SHM_SIZES: tuple[str, ...] = ("64m", "2g")  # Docker's default, and the usual fix
# The quick (CI) subset reuses the torch build already on this machine's disk (CPU, small);
# PyPI's Linux torch 2.1.2/2.4.1 wheels are ~5 GB CUDA builds.
QUICK_TORCH = "2.13.0"

# torch 2.1/2.4 and onnxruntime < 1.19 are built against numpy 1.x. These are the newest
# releases of the other numpy-using libraries that still install and work with numpy<2
# (opencv 4.11+ requires numpy>=2 on Python 3.11); av 12 is the oldest the project allows,
# the era of the HeyGem images. Checked by installing them beside each torch version.
NUMPY_PIN = "numpy<2"
LIBRARY_PINS: tuple[str, ...] = (
    "opencv-python-headless==4.10.0.84",
    "librosa==0.10.2.post1",
    "av==12.3.0",
)


class SelectionError(ValueError):
    """A selection option named a value no cell has."""


@dataclass(frozen=True)
class Packages:
    """One package combination: one virtualenv, one nox session."""

    torch: str
    ort: str
    flavour: str  # "cpu": the onnxruntime wheel, "gpu": onnxruntime-gpu
    quick: bool = False

    @property
    def id(self) -> str:
        return f"torch{self.torch}-ort{self.ort}-{self.flavour}"

    @property
    def ort_distribution(self) -> str:
        return "onnxruntime-gpu" if self.flavour == "gpu" else "onnxruntime"

    @property
    def tags(self) -> tuple[str, ...]:
        return (
            f"torch-{self.torch}",
            f"ort-{self.ort}",
            self.flavour,
            "quick" if self.quick else "full",
        )

    def pins(self) -> tuple[str, ...]:
        """Exact requirements of this combination (pip constraints as well)."""
        return (
            NUMPY_PIN,
            f"torch=={self.torch}",
            f"{self.ort_distribution}=={self.ort}",
            *LIBRARY_PINS,
        )


@dataclass(frozen=True, order=True)
class Runtime:
    """Settings varied inside one virtualenv."""

    workers: int
    shm: str  # tmpfs size as mount(8) takes it: 64m, 2g

    @property
    def id(self) -> str:
        return f"w{self.workers}-shm{self.shm}"

    @property
    def tags(self) -> tuple[str, ...]:
        return (f"workers-{self.workers}", f"shm-{self.shm}")


@dataclass(frozen=True)
class Cell:
    packages: Packages
    runtime: Runtime

    @property
    def id(self) -> str:
        return f"{self.packages.id}-{self.runtime.id}"

    @property
    def tags(self) -> tuple[str, ...]:
        return self.packages.tags + self.runtime.tags


FULL_PACKAGES: tuple[Packages, ...] = tuple(
    Packages(torch, ort, flavour)
    for torch in TORCH_VERSIONS
    for ort in ORT_VERSIONS
    for flavour in FLAVOURS
)
QUICK_PACKAGES: tuple[Packages, ...] = tuple(
    Packages(QUICK_TORCH, ort, "cpu", quick=True) for ort in ORT_VERSIONS
)
ALL_PACKAGES: tuple[Packages, ...] = FULL_PACKAGES + QUICK_PACKAGES


def find_packages(packages_id: str) -> Packages:
    for packages in ALL_PACKAGES:
        if packages.id == packages_id:
            return packages
    known = ", ".join(p.id for p in ALL_PACKAGES)
    raise SelectionError(f"unknown package combination {packages_id!r}; known: {known}")


# --- selection ------------------------------------------------------------------------
_SHM = re.compile(r"(\d+)([kmg])b?")


def normalize_shm(text: str) -> str:
    """'64M', '64mb', '64m' -> '64m' (the form mount -o size= takes)."""
    match = _SHM.fullmatch(text.strip().lower())
    if match is None or int(match.group(1)) == 0:
        raise SelectionError(f"shm size {text!r} is not a size like 64m or 2g")
    return f"{int(match.group(1))}{match.group(2)}"


def _version_matches(wanted: str, actual: str) -> bool:
    """'1.18' selects 1.18.0; '1.1' does not select 1.16.3."""
    return actual == wanted or actual.startswith(wanted + ".")


@dataclass(frozen=True)
class Selection:
    """Which cells to run. An empty tuple means every value of that axis."""

    torch: tuple[str, ...] = ()
    ort: tuple[str, ...] = ()
    flavour: tuple[str, ...] = ()
    workers: tuple[int, ...] = ()
    shm: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for option, wanted, known in (
            ("--torch", self.torch, TORCH_VERSIONS + (QUICK_TORCH,)),
            ("--ort", self.ort, ORT_VERSIONS),
        ):
            for value in wanted:
                if not any(_version_matches(value, k) for k in known):
                    raise SelectionError(
                        f"{option} {value} is not a matrix version; choose from {', '.join(known)}"
                    )
        for value in self.flavour:
            if value not in FLAVOURS:
                raise SelectionError(f"--flavour {value} is not one of {', '.join(FLAVOURS)}")
        for count in self.workers:
            if count < 0:
                raise SelectionError(f"--workers {count} must be >= 0")
        unknown = sorted(set(self.tags) - self.known_tags())
        if unknown:
            raise SelectionError(
                f"unknown tag(s) {', '.join(unknown)}; known tags: "
                f"{', '.join(sorted(self.known_tags()))}"
            )

    def runtimes(self) -> tuple[Runtime, ...]:
        """Runtime settings to run, axis values by default (other values run too)."""
        return tuple(
            Runtime(w, s) for w in (self.workers or WORKERS) for s in (self.shm or SHM_SIZES)
        )

    def known_tags(self) -> set[str]:
        tags = {tag for p in ALL_PACKAGES for tag in p.tags}
        return tags | {tag for r in self.runtimes() for tag in r.tags}

    def _packages_match(self, packages: Packages) -> bool:
        return (
            (not self.torch or any(_version_matches(v, packages.torch) for v in self.torch))
            and (not self.ort or any(_version_matches(v, packages.ort) for v in self.ort))
            and (not self.flavour or packages.flavour in self.flavour)
        )

    def matches(self, cell: Cell) -> bool:
        if not self._packages_match(cell.packages):
            return False
        if (self.workers and cell.runtime.workers not in self.workers) or (
            self.shm and cell.runtime.shm not in self.shm
        ):
            return False
        return not self.tags or bool(set(self.tags) & set(cell.tags))

    def cells(self, packages: Packages) -> tuple[Cell, ...]:
        """The selected cells of one package combination (none: skip its session)."""
        return tuple(c for r in self.runtimes() if self.matches(c := Cell(packages, r)))

    def select(self, packages: Iterable[Packages]) -> tuple[Cell, ...]:
        return tuple(c for p in packages for c in self.cells(p))

    def to_args(self) -> list[str]:
        """The options that rebuild this selection (passed on to run_cell)."""
        args: list[str] = []
        for option, values in (
            ("--torch", self.torch),
            ("--ort", self.ort),
            ("--flavour", self.flavour),
            ("--workers", tuple(str(w) for w in self.workers)),
            ("--shm", self.shm),
            ("--tag", self.tags),
        ):
            if values:
                args += [option, ",".join(values)]
        return args


# --- command line ---------------------------------------------------------------------
class _RaisingParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SelectionError(message)


def _split(values: Sequence[str] | None) -> tuple[str, ...]:
    """['1.16.3,1.18.0', '2g'] -> ('1.16.3', '1.18.0', '2g'), order kept, no repeats."""
    out: list[str] = []
    for value in values or ():
        out += [v.strip() for v in value.split(",") if v.strip() and v.strip() not in out]
    return tuple(out)


def add_selection_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "cell selection (comma lists or repeated options; values of one option OR, options AND)"
    )
    group.add_argument(
        "--torch",
        action="append",
        metavar="VERSION",
        help=f"torch: {', '.join(TORCH_VERSIONS)} ({QUICK_TORCH} quick)",
    )
    group.add_argument(
        "--ort",
        action="append",
        metavar="VERSION",
        help=f"onnxruntime: {', '.join(ORT_VERSIONS)} ('1.18' works too)",
    )
    group.add_argument(
        "--flavour",
        action="append",
        metavar="cpu|gpu",
        help="onnxruntime wheel: cpu (onnxruntime) or gpu (onnxruntime-gpu)",
    )
    group.add_argument(
        "--workers",
        action="append",
        metavar="N",
        help=f"DataLoader num_workers (default {','.join(map(str, WORKERS))}; "
        "other counts run too)",
    )
    group.add_argument(
        "--shm",
        action="append",
        metavar="SIZE",
        help=f"/dev/shm size (default {','.join(SHM_SIZES)}; any tmpfs size)",
    )
    group.add_argument(
        "--tag",
        action="append",
        metavar="TAG",
        help="cells carrying any of these tags: quick, full, cpu, gpu, "
        "torch-2.4.1, ort-1.18.0, workers-4, shm-64m, ...",
    )


def selection_from_namespace(ns: argparse.Namespace) -> Selection:
    try:
        workers = tuple(int(w) for w in _split(ns.workers))
    except ValueError:
        raise SelectionError(f"--workers takes whole numbers, got {ns.workers}") from None
    return Selection(
        torch=_split(ns.torch),
        ort=_split(ns.ort),
        flavour=_split(ns.flavour),
        workers=workers,
        shm=tuple(normalize_shm(s) for s in _split(ns.shm)),
        tags=_split(ns.tag),
    )


def parse_selection(argv: Sequence[str]) -> Selection:
    """Selection options only; anything else is an error (SelectionError)."""
    parser = _RaisingParser(prog="matrix", add_help=False)
    add_selection_arguments(parser)
    return selection_from_namespace(parser.parse_args(list(argv)))
