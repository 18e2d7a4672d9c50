"""The default generator really lip-syncs: judged on the output's pixels, not its internals.

Two independent measures: the landmark-based sync score (``diagnostics.syncscore``:
landmarks detected afresh on the output frames) and a model-free one (the dark mouth
interior's area in a box placed by where the test put the face, not by any model). Speech
is real (espeak-ng); stills are variations of the bundled public-domain portrait whose
geometry the test knows; talking templates are made without downloads: a clip generated
for sentence A is the template for sentence B, and the result must follow B, not A.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from diagnostics.syncscore import best_correlation, loudness_envelope, sync_score
from heygem.config import GenerateOptions
from heygem.demo import load_portrait, write_video
from heygem.media.audio import decode_audio_mono
from heygem.pipeline import Pipeline
from tests.helpers import SENTENCE_A, SENTENCE_B, espeak_wav, read_gray_frames

# Where the bundled 512x512 portrait's mouth is (measured once, by eye and landmarks):
# lips between the corners, chin below. The tests move these with the face.
MOUTH_BOX = (196.0, 136.0, 251.0, 160.0)  # x0, y0, x1, y1: the lips
CHIN_BOX = (196.0, 160.0, 251.0, 182.0)  # below the lower lip: where a beard grows


@dataclass(frozen=True)
class Still:
    name: str
    image: np.ndarray
    mouth: tuple[float, float, float, float]  # the lips' box in this image
    chin: tuple[float, float, float, float]


def _place(
    name: str,
    face_width: float,
    size: tuple[int, int],
    *,
    at: tuple[float, float] = (0.5, 0.45),
    mirror: bool = False,
    look: str = "plain",
) -> Still:
    """The portrait scaled so its face is ``face_width`` px wide (it is 88 px), placed on
    a blurred backdrop of ``size`` with the face centre at fraction ``at``."""
    portrait = load_portrait()
    if look == "beard":
        portrait = _with_beard(portrait)
    elif look == "full-beard":
        portrait = _with_full_beard(portrait)
    if mirror:
        portrait = cv2.flip(portrait, 1)
    scale = face_width / 88.0
    face_cx = 512 - 223.0 if mirror else 223.0
    width, height = size
    ox, oy = at[0] * width - face_cx * scale, at[1] * height - 127.0 * scale
    matrix = np.array([[scale, 0, ox], [0, scale, oy]], dtype=np.float64)
    backdrop = cv2.GaussianBlur(cv2.resize(portrait, size), (0, 0), 15)
    image = cv2.warpAffine(
        portrait, matrix, size, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_TRANSPARENT,
        dst=backdrop,
    )  # fmt: skip
    if look == "dim":
        lut = (np.linspace(0, 1, 256) ** 1.6 * 200).astype(np.uint8)  # darker, low contrast
        image = cv2.LUT(image, lut)
        image[..., 0] = np.clip(image[..., 0].astype(np.int16) + 18, 0, 255)  # bluish cast

    def move(box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = box
        if mirror:
            x0, x1 = 512 - x1, 512 - x0
        return (x0 * scale + ox, y0 * scale + oy, x1 * scale + ox, y1 * scale + oy)

    return Still(name, image, move(MOUTH_BOX), move(CHIN_BOX))


def _with_beard(portrait: np.ndarray) -> np.ndarray:
    """A dark, hair-textured beard on the chin and jaw, below the lower lip."""
    out = portrait.copy()
    rng = np.random.default_rng(7)
    outline = np.zeros(out.shape[:2], np.uint8)
    jaw = np.array([[186, 152], [201, 160], [246, 162], [262, 154], [255, 172], [236, 186],
                    [212, 186], [192, 172]], np.int32)  # fmt: skip
    cv2.fillPoly(outline, [jaw], 255)
    mask = cv2.GaussianBlur(outline, (0, 0), 2).astype(np.float32)[..., None] / 255
    hair = rng.integers(15, 60, out.shape[:2]).astype(np.float32)
    hair = cv2.blur(hair, (1, 4))[..., None] * np.array([0.7, 0.8, 1.0])
    return (out * (1 - mask) + hair * mask).astype(np.uint8)


def _with_full_beard(portrait: np.ndarray) -> np.ndarray:
    """A dense, dark grey-brown beard of hair strokes from the mouth corners along the jaw
    to the chin, right up to the lower lip (the kind an independent tester made, on which
    dlib's inner lower lip jumps between closed and open from frame to frame)."""
    h, w = portrait.shape[:2]
    jaw = [(183, 146), (189, 160), (199, 171), (209, 179), (221, 182), (233, 180), (244, 173),
           (255, 165), (263, 152), (264, 144)]  # fmt: skip
    under_lip = [(248, 148), (223, 160), (199, 146)]  # corners and lower lip, a little below
    mask = np.zeros((h, w), np.float32)
    cv2.fillPoly(mask, [np.array(jaw + under_lip, np.int32)], 1.0)
    mask = cv2.GaussianBlur(mask, (7, 7), 2) * 0.9
    rng = np.random.default_rng(1)
    hair = np.zeros((h, w, 3), np.float32)
    hair[:] = (30, 38, 52)
    hair += rng.normal(0, 14, (h, w, 1))
    for _ in range(900):
        x, y = rng.uniform(175, 270), rng.uniform(140, 185)
        angle, length = rng.uniform(0.35 * np.pi, 0.65 * np.pi), rng.uniform(3, 7)
        c = float(rng.uniform(10, 80))
        end = (int(x + length * np.cos(angle)), int(y + length * np.sin(angle)))
        cv2.line(hair, (int(x), int(y)), end, (c, c * 1.1, c * 1.3), 1)
    out = portrait.astype(np.float32) * (1 - mask[..., None]) + hair * mask[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


STILLS = {
    "portrait-640x360": lambda: _place("portrait-640x360", 110, (640, 360)),
    "small-37px-548x342": lambda: _place("small-37px-548x342", 37, (548, 342), at=(0.3, 0.4)),
    "tiny-26px-320x240": lambda: _place("tiny-26px-320x240", 26, (320, 240), at=(0.6, 0.5)),
    "mirrored": lambda: _place("mirrored", 90, (480, 360), mirror=True),
    "dim-light": lambda: _place("dim-light", 90, (480, 360), look="dim"),
    "beard": lambda: _place("beard", 100, (480, 360), look="beard"),
}


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("speech")
    a = espeak_wav(folder / "a.wav", SENTENCE_A)
    b = espeak_wav(folder / "b.wav", SENTENCE_B, speed=140, pitch=60)
    return a, b


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline(GenerateOptions(cache_dir=tmp_path_factory.mktemp("cache")))


def _dark_area(frames: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Model-free: per frame, the share of the lips' box darker than half its own
    brightest quarter: an open mouth's interior (a beard below the lips stays outside)."""
    x0, y0, x1, y1 = box
    region = frames[:, int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
    region = region.reshape(len(frames), -1).astype(np.float32)
    bright = np.percentile(region, 75, axis=1, keepdims=True)
    return np.asarray((region < 0.5 * bright).mean(axis=1))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STILLS))
def test_still_lip_syncs_on_the_mouth(
    name: str, speech: tuple[Path, Path], pipeline: Pipeline, tmp_path: Path
) -> None:
    still = STILLS[name]()
    image_path = tmp_path / f"{name}.png"
    cv2.imwrite(str(image_path), still.image)
    _assert_lip_syncs_on_the_mouth(still, image_path, speech[0], pipeline, tmp_path)


# Bearded stills encoded as videos (what a user uploads as an avatar): the landmark model
# is unstable on such a face, and each coded frame differs a little from the last.
STILL_VIDEOS = {
    "beard-1920x1080": lambda: _place(
        "beard-1920x1080", 330, (1920, 1080), mirror=True, look="full-beard"
    ),
    "beard-small-640x360": lambda: _place(
        "beard-small-640x360", 65, (640, 360), at=(0.62, 0.5), look="full-beard"
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize(("name", "crf"), [("beard-1920x1080", 18), ("beard-small-640x360", 23)])
def test_still_video_lip_syncs_on_the_mouth(
    name: str, crf: int, speech: tuple[Path, Path], pipeline: Pipeline, tmp_path: Path
) -> None:
    still = STILL_VIDEOS[name]()
    video = write_video(tmp_path / f"{name}.mp4", [still.image] * 50, crf=crf)
    # A beard touching the lips is as dark as the mouth's interior: the model-free dark-area
    # measure cannot tell them apart; where the change sits (below) still can.
    _assert_lip_syncs_on_the_mouth(
        still, video, speech[0], pipeline, tmp_path, min_score=0.6, dark_area_measurable=False
    )


def _assert_lip_syncs_on_the_mouth(
    still: Still,
    template: Path,
    audio: Path,
    pipeline: Pipeline,
    tmp_path: Path,
    *,
    min_score: float = 0.7,
    dark_area_measurable: bool = True,
) -> None:
    name = still.name
    out = tmp_path / "out.mp4"
    result = pipeline.generate(audio, template, out)
    assert result.faceless_frames == 0

    score = sync_score(out, audio)
    assert score.measured == score.frames
    assert score.score >= min_score, score
    assert score.control < score.score - 0.4, score

    # Model-free: the mouth interior's dark area follows the voice too.
    frames = read_gray_frames(out).astype(np.float32)
    envelope = loudness_envelope(decode_audio_mono(audio), len(frames), result.fps)
    if dark_area_measurable:
        dark, _ = best_correlation(_dark_area(frames, still.mouth), envelope, 5)
        assert dark >= 0.5, dark

    # Placement: what moves over time (a still's other pixels do not) concentrates on the
    # lips, not below them (the beard, the chin).
    change = frames.std(axis=0)

    def energy(box: tuple[float, float, float, float]) -> float:
        x0, y0, x1, y1 = (round(v) for v in box)
        return float(change[y0:y1, x0:x1].sum())

    mouth_height = still.mouth[3] - still.mouth[1]
    lips_and_opening = (*still.mouth[:3], still.mouth[3] + 0.5 * mouth_height)
    assert energy(lips_and_opening) > 1.5 * energy(still.chin), (name, energy(still.chin))
    assert energy(lips_and_opening) > 0.3 * float(change.sum()), name


@pytest.fixture(scope="module")
def talking(
    speech: tuple[Path, Path], pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A talking template: the portrait speaking sentence A (generated, then re-encoded as
    a plain video, as a recording would be)."""
    folder = tmp_path_factory.mktemp("talking")
    still = _place("talking", 110, (480, 360))
    image = folder / "still.png"
    cv2.imwrite(str(image), still.image)
    spoken = folder / "spoken.mp4"
    pipeline.generate(speech[0], image, spoken)
    return spoken


@pytest.mark.slow
def test_talking_template_follows_the_new_audio(
    talking: Path, speech: tuple[Path, Path], pipeline: Pipeline, tmp_path: Path
) -> None:
    a, b = speech
    assert sync_score(talking, a).score >= 0.7  # the template really talks (sentence A)
    untouched = sync_score(talking, b)
    out = tmp_path / "b.mp4"
    pipeline.generate(b, talking, out)
    with_b, with_a = sync_score(out, b), sync_score(out, a)
    assert with_b.score >= 0.5, with_b
    assert with_b.control < 0.2, with_b
    assert with_a.score < with_b.score - 0.3, (with_a, with_b)
    assert with_b.score > untouched.score + 0.3, (untouched, with_b)


@pytest.mark.slow
def test_silence_shows_a_closed_mouth_on_a_talking_template(
    talking: Path, speech: tuple[Path, Path], pipeline: Pipeline, tmp_path: Path
) -> None:
    """Speech, 2 s of silence, speech: during the silence the mouth is closed although the
    template's own mouth keeps talking there."""
    from heygem.demo import write_wav

    wav = decode_audio_mono(speech[1])[: 16000 * 3]
    gap = np.zeros(32000, np.float32)
    audio = write_wav(tmp_path / "gap.wav", np.concatenate([wav, gap, wav]))
    out = tmp_path / "gap.mp4"
    pipeline.generate(audio, talking, out)
    score = sync_score(out, audio)
    template = sync_score(talking, speech[0])
    silent = score.opening[80:120]  # frames 80-120: the middle of the silence (75-125)
    # The template's most closed mouths (its own silences and closures), not its talking.
    assert np.nanmax(silent) <= np.nanpercentile(template.opening, 10) + 0.015, silent
    assert np.nanmax(silent) < np.nanpercentile(template.opening, 60), silent


def test_video_template_with_a_small_face(speech: tuple[Path, Path], tmp_path: Path) -> None:
    """A thumbnail-sized talking head (26 px face, 320x240 video) is found and handled."""
    still = _place("thumb", 26, (320, 240))
    video = write_video(tmp_path / "thumb.mp4", [still.image] * 25)
    out = tmp_path / "out.mp4"
    options = GenerateOptions(cache_dir=tmp_path / "cache")
    result = Pipeline(options).generate(speech[0], video, out)
    assert result.faceless_frames == 0
    assert sync_score(out, speech[0]).score >= 0.6


@pytest.mark.slow
def test_tilted_still_opens_along_the_face(
    speech: tuple[Path, Path], pipeline: Pipeline, tmp_path: Path
) -> None:
    """A portrait leaning 15 degrees (12 turned, plus its own 2.9) lip-syncs, the edit is
    centred on the tilted lips, and the opening's upper edge (the lip seam) follows the
    tilt; a level band (the renderer's jaw moving down the frame) measured 5.5 degrees."""
    still = _place("tilted", 120, (640, 480))
    turn = cv2.getRotationMatrix2D((320.0, 246.0), -12.0, 1.0)  # clockwise
    image = cv2.warpAffine(
        still.image, turn, (640, 480), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT
    )
    video = write_video(tmp_path / "tilted.mp4", [image] * 50)
    out = tmp_path / "out.mp4"
    pipeline.generate(speech[0], video, out)
    score = sync_score(out, speech[0])
    assert score.score >= 0.7, score
    assert score.control < score.score - 0.4, score

    change = read_gray_frames(out).astype(np.float32).std(axis=0)
    x0, y0, x1, y1 = still.mouth
    width = x1 - x0
    ys, xs = np.nonzero(change > 0.5 * change.max())
    # The change centres on the opened band and the lowered lip: the lips' lower edge.
    lower = turn @ np.array([0.5 * (x0 + x1), y1, 1.0])
    assert np.hypot(xs.mean() - lower[0], ys.mean() - lower[1]) < 0.15 * width
    # Across the middle 60 % of the mouth, the first changed row of each column: the seam.
    cx, cy = turn @ np.array([0.5 * (x0 + x1), 0.5 * (y0 + y1), 1.0])
    columns = np.arange(round(cx - 0.3 * width), round(cx + 0.3 * width) + 1)
    window = change[round(cy - 0.5 * width) : round(cy + 0.5 * width)]
    seam = [np.flatnonzero(window[:, c] > 0.3 * change.max()) for c in columns]
    found = np.array([len(rows) > 0 for rows in seam])
    assert found.mean() > 0.9
    top = np.array([rows[0] for rows in seam if len(rows)], np.float64)
    slope = np.polyfit(columns[found].astype(np.float64), top, 1)[0]
    assert 10.0 < np.degrees(np.arctan(slope)) < 22.0, np.degrees(np.arctan(slope))
