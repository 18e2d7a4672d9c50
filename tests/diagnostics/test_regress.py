"""`heygem-diagnose regress`: record then check passes, deliberate drifts fail naming their
step, the stored golden (tests/golden) passes here, and the matrix helpers."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from diagnostics.cli import main
from diagnostics.findings import render_text
from diagnostics.regress import (
    RECORD_FILE,
    check,
    check_report,
    compare_records,
    drift_table,
    fingerprint_environment_run,
    format_drift_table,
    golden_size,
    load_golden,
    write_golden,
)
from diagnostics.regress_metrics import decode_png, encode_png
from diagnostics.regress_run import best_lag
from diagnostics.regress_scenarios import SCENARIO_NAMES, STEPS, Perturbation

STORED = Path(__file__).resolve().parents[2] / "tests" / "golden"
MAX_GOLDEN_BYTES = 2 * 1024 * 1024


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every scenario recorded once through the CLI, into a temporary golden directory."""
    out = tmp_path_factory.mktemp("golden")
    assert main(["regress", "record", "--out", str(out), "--json"]) == 0
    return out


@pytest.fixture(scope="module")
def golden(recorded: Path) -> dict[str, Any]:
    return load_golden(recorded)


def _first_drift(data: dict[str, Any]) -> str | None:
    first = data["first_drift"]
    return None if first is None else first["step"]


# --- record / check ---------------------------------------------------------------------
def test_record_writes_a_small_complete_golden(recorded: Path, golden: dict[str, Any]) -> None:
    assert list(golden["scenarios"]) == list(SCENARIO_NAMES)
    for name, steps in golden["scenarios"].items():
        expected = ["generate"] if name == "seeded-batch" else list(STEPS)
        assert list(steps) == expected, name
    files, size = golden_size(recorded)
    assert files > 1 and size < MAX_GOLDEN_BYTES
    frames = golden["scenarios"]["face-gap"]["composite"]["frames"]
    gap = next(f for f in frames if f["index"] == 25)  # template frame 25 is a grey card
    assert gap["mouth"] is None and gap["region"] is None
    assert decode_png(gap["full"]["png"]).shape == (60, 80)
    mux = golden["scenarios"]["long"]["mux"]
    assert mux["frames"] == 300 and abs(mux["audio_seconds"] - 12.0) < 0.07
    assert abs(mux["av_offset_ms"]) <= 10.0


def test_record_then_check_on_the_same_machine_passes(
    capsys: pytest.CaptureFixture[str], recorded: Path
) -> None:
    code, out, _ = run(capsys, "regress", "check", "--golden", str(recorded), "--json")
    data = json.loads(out)
    assert code == 0, [r for r in data["regressions"]]
    assert data["ok"] and _first_drift(data) is None
    # Same libraries, one thread, lossless output: bit-for-bit, not merely within tolerance.
    assert all(step["identical"] for step in data["steps"]), data["steps"]


def test_the_stored_golden_passes_here(capsys: pytest.CaptureFixture[str]) -> None:
    """What CI runs on every change: the committed tests/golden still matches."""
    files, size = golden_size(STORED)
    assert (STORED / RECORD_FILE).is_file() and size < MAX_GOLDEN_BYTES, (files, size)
    code, out, _ = run(capsys, "regress", "check", "--golden", str(STORED))
    assert code == 0, out
    assert "PASS" in out


# --- the checker can fail -----------------------------------------------------------------
def test_a_perturbed_generator_fails_naming_generate(
    capsys: pytest.CaptureFixture[str], recorded: Path
) -> None:
    code, out, _ = run(
        capsys,
        "regress",
        "check",
        "--golden",
        str(recorded),
        "--scenario",
        "seeded-batch",
        "--scenario",
        "still",
        "--perturb",
        "generate:0.01",
        "--json",
    )
    data = json.loads(out)
    assert code == 1
    assert _first_drift(data) == "generate"
    assert data["first_drift"]["difference"] >= 0.009
    assert {r["step"] for r in data["regressions"]} <= {"generate", "composite"}


def test_a_perturbed_mel_fails_naming_audio_features(recorded: Path) -> None:
    report = check(recorded, ["still"], perturb=Perturbation("audio_features", 0.01))
    assert not report.ok
    first = report.first_drift
    assert first is not None and first.step == "audio_features" and first.scenario == "still"
    text = render_text(check_report(report))
    assert "first drift in step 'audio_features'" in text
    assert "rehearsal: audio_features perturbed by 0.01" in text


def test_an_edited_golden_value_fails_naming_its_stage(golden: dict[str, Any]) -> None:
    edited = copy.deepcopy(golden)
    edited["scenarios"]["video"]["face_track"]["regions"][10][0] += 2
    comparisons = compare_records(edited, golden)
    bad = [f for f in comparisons if not f.ok]
    assert [(f.scenario, f.step, f.metric) for f in bad] == [("video", "face_track", "regions")]
    assert bad[0].difference == 2 and "element 40" in bad[0].note


def test_a_changed_composite_frame_fails_by_psnr(golden: dict[str, Any]) -> None:
    edited = copy.deepcopy(golden)
    frame = edited["scenarios"]["video"]["composite"]["frames"][1]
    mouth = decode_png(frame["mouth"]["png"])
    frame["mouth"]["png"] = encode_png(np.clip(mouth.astype(int) + 12, 0, 255).astype(np.uint8))
    bad = {f.metric: f for f in compare_records(edited, golden) if not f.ok}
    # Only the edited mouth crop fails (a +12 offset on its dark mouth interior moves SSIM's
    # luminance term too).
    assert "frames.mouth_psnr" in bad and set(bad) <= {"frames.mouth_psnr", "frames.mouth_ssim"}
    assert bad["frames.mouth_psnr"].difference is not None
    assert bad["frames.mouth_psnr"].difference < 40.0


def test_update_rerecords_the_golden_on_purpose(
    capsys: pytest.CaptureFixture[str], recorded: Path, tmp_path: Path
) -> None:
    target = shutil.copytree(recorded, tmp_path / "golden")
    record = json.loads((target / RECORD_FILE).read_text())
    record["scenarios"]["still"]["mux"]["frames"] += 1  # a stale value
    (target / RECORD_FILE).write_text(json.dumps(record))
    code, out, _ = run(
        capsys, "regress", "check", "--golden", str(target), "--scenario", "still", "--update"
    )
    assert code == 0 and "REGRESSION" in out and "golden updated" in out
    updated = load_golden(target)
    assert updated["scenarios"]["still"]["mux"]["frames"] == 50
    assert set(updated["scenarios"]) == set(SCENARIO_NAMES)  # the others were kept
    assert not [f for f in compare_records(updated, load_golden(recorded)) if not f.ok]


def test_golden_round_trips_through_its_directory(golden: dict[str, Any], tmp_path: Path) -> None:
    write_golden(tmp_path, golden)
    pngs = sorted(p.name for p in (tmp_path / "frames").glob("*.png"))
    assert "video-0018-mouth.png" in pngs
    assert cv2.imread(str(tmp_path / "frames" / "video-0018-mouth.png"), 0) is not None
    assert load_golden(tmp_path) == golden


# --- the matrix view --------------------------------------------------------------------
def test_drift_table_names_the_largest_difference_per_stage(golden: dict[str, Any]) -> None:
    other = copy.deepcopy(golden)
    other["label"] = "ort 1.16.3"
    blocks = other["scenarios"]["seeded-batch"]["generate"]["blocks"]
    blocks[7] += 0.01
    base = {**golden, "label": "ort 1.18.0"}
    rows = {row["step"]: row for row in drift_table([base, copy.deepcopy(base), other])}
    assert list(rows) == list(STEPS)
    assert rows["audio_features"]["identical"] and not rows["audio_features"]["exceeds"]
    gen = rows["generate"]
    assert gen["exceeds"] and gen["metric"] == "blocks" and gen["scenario"] == "seeded-batch"
    assert gen["between"] == ["ort 1.18.0", "ort 1.16.3"]
    assert abs(gen["difference"] - 0.01) < 1e-6
    table = format_drift_table(list(rows.values()))
    assert (
        "| generate | seeded-batch blocks: 0.01 out | 0.002 | ort 1.18.0 vs ort 1.16.3 |" in table
    )


def test_fingerprint_environment_run_for_a_matrix_cell(golden: dict[str, Any]) -> None:
    record = fingerprint_environment_run(["seeded-batch"], label="cell", frames=False)
    assert record["label"] == "cell" and list(record["scenarios"]) == ["seeded-batch"]
    assert record["environment"]["versions"]["onnxruntime"]
    assert record["environment"]["providers"] == ["CPUExecutionProvider"]
    json.loads(json.dumps(record))  # one results line
    rows = drift_table([golden, record])  # only what both hold is compared
    assert [(r["step"], r["identical"]) for r in rows] == [("generate", True)]


def test_records_without_frames_compare_by_everything_else(golden: dict[str, Any]) -> None:
    compact = copy.deepcopy(golden)
    compact["frames"] = False
    for steps in compact["scenarios"].values():
        steps.get("composite", {}).pop("frames", None)
    comparisons = compare_records(golden, compact)
    assert comparisons and all(f.ok for f in comparisons)
    assert not any(f.metric.startswith("frames.") for f in comparisons)


# --- measurements and errors ------------------------------------------------------------
def test_best_lag_finds_a_known_shift() -> None:
    rng = np.random.default_rng(0)
    envelope = np.convolve(rng.random(2000), np.ones(9) / 9, mode="same")
    delayed = np.concatenate([np.zeros(40), envelope[:-40]])
    assert best_lag(envelope, delayed, 250) == pytest.approx(40, abs=0.5)
    assert best_lag(delayed, envelope, 250) == pytest.approx(-40, abs=0.5)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["check", "--golden", "/nonexistent/golden"], ["no golden record"]),
        (["check", "--perturb", "generate:0.1", "--update"], ["--update with --perturb"]),
        (["check", "--perturb", "mux:1"], ["cannot perturb step"]),
        (["record", "--scenario", "nope"], ["invalid choice"]),
    ],
)
def test_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]
) -> None:
    code, _, err = run(capsys, "regress", *argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for word in words:
        assert word in err


def test_record_into_an_unwritable_place_fails_before_running(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A file where the directory should go: refused at once (no scenario runs first)."""
    blocker = tmp_path / "golden"
    blocker.write_text("a file, not a directory")
    code, _, err = run(capsys, "regress", "record", "--out", str(blocker / "sub"))
    assert code == 2 and "cannot write a golden record" in err and "->" in err
    assert "Traceback" not in err and blocker.read_text() == "a file, not a directory"
