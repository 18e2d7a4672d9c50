"""`heygem-diagnose sync-score`: the correlation, its lag and control, text/JSON, exits."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from diagnostics.cli import main
from diagnostics.syncscore import best_correlation, loudness_envelope, mouth_openings
from heygem.config import GenerateOptions
from heygem.demo import iter_template_frames, write_video
from heygem.pipeline import Pipeline
from tests.helpers import SENTENCE_A, espeak_wav


def test_best_correlation_finds_the_lag_and_ignores_missing_frames() -> None:
    rng = np.random.default_rng(0)
    envelope = np.convolve(rng.random(200), np.ones(4) / 4, mode="same")
    opening = np.roll(envelope, 3)  # the mouth trails the voice by 3 frames
    opening[50:60] = np.nan  # no face there
    score, lag = best_correlation(opening, envelope, 5)
    assert lag == 3 and score > 0.99
    assert best_correlation(rng.random(200), envelope, 5)[0] < 0.3


def test_loudness_envelope_is_floored_40_db_under_the_peak() -> None:
    wav = np.concatenate([np.zeros(16000), 0.5 * np.ones(16000)]).astype(np.float32)
    envelope = loudness_envelope(wav, 50, 25.0)
    assert envelope.max() - envelope.min() == pytest.approx(40.0)
    assert envelope[:25].max() < envelope[25:].min()


@pytest.fixture(scope="module")
def spoken(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(speech, a still face video, the generated lip-synced output)."""
    folder = tmp_path_factory.mktemp("sync")
    speech = espeak_wav(folder / "a.wav", SENTENCE_A)
    frame = next(iter_template_frames(0.04, size=(320, 240), sway=0.0))
    still = write_video(folder / "still.mp4", [frame] * 50)
    out = folder / "out.mp4"
    Pipeline(GenerateOptions(cache_dir=folder / "cache")).generate(speech, still, out)
    return speech, still, out


def test_generated_output_passes(
    capsys: pytest.CaptureFixture[str], spoken: tuple[Path, Path, Path]
) -> None:
    speech, _, out = spoken
    code = main(["sync-score", str(out), str(speech), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["tool"] == "sync-score"
    assert report["score"] >= 0.7 and report["control"] < 0.3
    assert [f["id"] for f in report["findings"]] == ["sync-ok"]
    assert report["measured_frames"] == report["frames"]


def test_a_mouth_that_does_not_move_fails(
    capsys: pytest.CaptureFixture[str], spoken: tuple[Path, Path, Path]
) -> None:
    speech, still, _ = spoken
    code = main(["sync-score", str(still), str(speech)])
    text = capsys.readouterr().out
    assert code == 1
    assert text.startswith("lip-sync score: FAIL") and "sync-low" in text


def test_no_face_fails_and_a_missing_file_cannot_run(
    capsys: pytest.CaptureFixture[str], spoken: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    speech = spoken[0]
    blank = write_video(tmp_path / "blank.mp4", [np.full((120, 160, 3), 90, np.uint8)] * 20)
    assert main(["sync-score", str(blank), str(speech), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["findings"][0]["id"] == "sync-no-mouth"
    assert main(["sync-score", str(tmp_path / "nope.mp4"), str(speech)]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: d / "speech.wav", "has no video stream"),  # the arguments swapped
        (lambda d: _garbage(d / "garbage.mp4"), "could not be decoded"),
    ],
)
def test_a_video_argument_that_is_no_video_is_one_clear_line(
    capsys: pytest.CaptureFixture[str],
    spoken: tuple[Path, Path, Path],
    tmp_path: Path,
    make: Callable[[Path], Path],
    says: str,
) -> None:
    speech = spoken[0]
    (tmp_path / "speech.wav").write_bytes(speech.read_bytes())
    assert main(["sync-score", str(make(tmp_path)), str(speech)]) == 2
    err = capsys.readouterr().err
    assert says in err and "->" in err and "Traceback" not in err


def _garbage(path: Path) -> Path:
    path.write_bytes(b"not a video at all" * 200)
    return path


def test_a_video_stored_sideways_is_measured_as_players_show_it(phone_template: Path) -> None:
    openings, fps = mouth_openings(phone_template)
    assert fps == 25.0 and len(openings) == 50
    assert not np.isnan(openings).any()  # the face is found upright in every frame
