"""Matrix axes, ids, tags and the command-line selection."""

from __future__ import annotations

import pytest

from matrix.cells import (
    FULL_PACKAGES,
    QUICK_PACKAGES,
    Cell,
    Packages,
    Runtime,
    Selection,
    SelectionError,
    find_packages,
    normalize_shm,
    parse_selection,
)


def test_full_matrix_is_every_combination_of_the_heygem_versions():
    assert len(FULL_PACKAGES) == 8
    assert {(p.torch, p.ort, p.flavour) for p in FULL_PACKAGES} == {
        (t, o, f) for t in ("2.1.2", "2.4.1") for o in ("1.16.3", "1.18.0") for f in ("cpu", "gpu")
    }
    assert len({p.id for p in FULL_PACKAGES}) == 8
    assert len(Selection().select(FULL_PACKAGES)) == 32  # x workers {0,4} x shm {64m,2g}


def test_quick_subset_is_the_on_disk_torch_with_both_ort_cpu_wheels():
    assert [(p.torch, p.ort, p.flavour) for p in QUICK_PACKAGES] == [
        ("2.13.0", "1.16.3", "cpu"),
        ("2.13.0", "1.18.0", "cpu"),
    ]
    assert all("quick" in p.tags for p in QUICK_PACKAGES)


def test_ids_tags_and_pins():
    packages = Packages("2.4.1", "1.18.0", "gpu")
    cell = Cell(packages, Runtime(4, "64m"))
    assert cell.id == "torch2.4.1-ort1.18.0-gpu-w4-shm64m"
    assert set(cell.tags) == {"torch-2.4.1", "ort-1.18.0", "gpu", "full", "workers-4", "shm-64m"}
    pins = packages.pins()
    assert "numpy<2" in pins and "torch==2.4.1" in pins and "onnxruntime-gpu==1.18.0" in pins
    assert not any(p.startswith("onnxruntime==") for p in pins)
    assert find_packages(packages.id) == packages


def test_selection_by_axis_values():
    selection = parse_selection(["--ort", "1.18.0", "--shm", "64m"])
    cells = selection.select(FULL_PACKAGES)
    assert len(cells) == 8  # 2 torch x 2 flavours x 2 worker counts
    assert all(c.packages.ort == "1.18.0" and c.runtime.shm == "64m" for c in cells)


def test_values_of_one_option_are_alternatives_options_combine():
    comma = parse_selection(["--torch", "2.1.2,2.4.1", "--workers", "4"])
    repeated = parse_selection(["--torch", "2.1.2", "--torch", "2.4.1", "--workers", "4"])
    assert comma == repeated
    assert {c.runtime.workers for c in comma.select(FULL_PACKAGES)} == {4}


def test_version_prefixes_and_shm_spellings():
    selection = parse_selection(["--ort", "1.18", "--torch", "2.4", "--shm", "2G"])
    cells = selection.select(FULL_PACKAGES)
    assert {c.packages.ort for c in cells} == {"1.18.0"}
    assert {c.packages.torch for c in cells} == {"2.4.1"}
    assert {c.runtime.shm for c in cells} == {"2g"}
    assert normalize_shm("64MB") == "64m"


def test_selection_by_tag():
    gpu = parse_selection(["--tag", "gpu"]).select(FULL_PACKAGES)
    assert gpu and all(c.packages.flavour == "gpu" for c in gpu)
    assert len(gpu) == 16
    shm = parse_selection(["--tag", "shm-64m"]).select(FULL_PACKAGES + QUICK_PACKAGES)
    assert {c.runtime.shm for c in shm} == {"64m"}
    assert parse_selection(["--tag", "quick"]).select(FULL_PACKAGES) == ()
    assert len(parse_selection(["--tag", "quick"]).select(QUICK_PACKAGES)) == 8


def test_unselected_package_combination_has_no_cells():
    selection = parse_selection(["--flavour", "cpu"])
    assert selection.cells(Packages("2.1.2", "1.16.3", "gpu")) == ()
    assert len(selection.cells(Packages("2.1.2", "1.16.3", "cpu"))) == 4


def test_runtime_values_beyond_the_axes_run_too():
    selection = parse_selection(["--workers", "0,2", "--shm", "2g"])
    assert selection.runtimes() == (Runtime(0, "2g"), Runtime(2, "2g"))
    assert "workers-2" in selection.known_tags()


def test_to_args_round_trips():
    selection = parse_selection(["--ort", "1.18.0", "--workers", "0,4", "--tag", "gpu"])
    assert parse_selection(selection.to_args()) == selection


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ort", "1.17.0"], "not a matrix version"),
        (["--torch", "2.2"], "not a matrix version"),
        (["--flavour", "rocm"], "not one of"),
        (["--shm", "lots"], "not a size"),
        (["--workers", "four"], "whole numbers"),
        (["--tag", "gpuu"], "unknown tag"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_bad_selection_is_a_clear_error(argv, message):
    with pytest.raises(SelectionError, match=message):
        parse_selection(argv)
