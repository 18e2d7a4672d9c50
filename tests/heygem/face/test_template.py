from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from heygem.demo import iter_template_frames as demo_frames
from heygem.demo import write_video
from heygem.errors import NoFaceFound
from heygem.face.geometry import CropSpec
from heygem.face.template import FrameWindows, plan_template
from heygem.media.frames import crop_bgr, iter_template_frames

SPEC = CropSpec("lowerface", 192)


def test_plan_finds_the_face_in_every_frame(template_mp4: Path, tmp_path: Path) -> None:
    plan = plan_template(template_mp4, 480, 360, SPEC, cache_dir=tmp_path, max_frames=1000)
    assert plan.n_frames == 50 and plan.valid.all()
    crops = np.load(plan.crops_path, mmap_mode="r")
    assert crops.shape == (50, 192, 192, 3)
    x0, y0, x1, y1 = plan.regions[0]
    assert x0 % 2 == y0 % 2 == 0 and 170 < (x0 + x1) / 2 < 250 and 120 < (y0 + y1) / 2 < 180


def test_second_plan_is_a_cache_hit_and_concurrent_plans_agree(
    template_mp4: Path, tmp_path: Path
) -> None:
    def plan() -> np.ndarray:
        return plan_template(
            template_mp4, 480, 360, SPEC, cache_dir=tmp_path, max_frames=1000
        ).regions

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: plan(), range(3)))
    assert all(np.array_equal(results[0], r) for r in results)
    again = plan_template(template_mp4, 480, 360, SPEC, cache_dir=tmp_path, max_frames=1000)
    assert again.from_cache and np.array_equal(again.regions, results[0])
    assert not list(tmp_path.rglob("*.part"))


def test_damaged_cache_entry_is_rebuilt(template_mp4: Path, tmp_path: Path) -> None:
    plan_template(template_mp4, 480, 360, SPEC, cache_dir=tmp_path, max_frames=1000)
    for npy in tmp_path.rglob("crops-*.npy"):
        npy.write_bytes(b"damaged")
    plan = plan_template(template_mp4, 480, 360, SPEC, cache_dir=tmp_path, max_frames=1000)
    assert not plan.from_cache and plan.valid.all()


def test_no_face_anywhere_is_a_clear_error(faceless_mp4: Path, tmp_path: Path) -> None:
    with pytest.raises(NoFaceFound, match="no face was found in any of the 10 frames"):
        plan_template(faceless_mp4, 320, 240, SPEC, cache_dir=tmp_path, max_frames=1000)


@pytest.mark.parametrize(
    ("turns", "lying", "fix"),
    [
        (3, "turned 90 degrees clockwise", "transpose=2"),  # np.rot90 by 3 = clockwise
        (1, "turned 90 degrees counterclockwise", "transpose=1"),
        (2, "turned upside down", "transpose=2,transpose=2"),
    ],
)
def test_a_face_lying_on_its_side_is_named_with_the_turn_that_fixes_it(
    tmp_path: Path, turns: int, lying: str, fix: str
) -> None:
    """The pixels turned, with no rotation flag for a player to undo (a phone video that
    lost it): no upright face, and the error says which way the face lies and how to
    turn the template upright."""
    frames = [np.ascontiguousarray(np.rot90(f, turns)) for f in demo_frames(0.4, size=(320, 240))]
    video = write_video(tmp_path / "sideways.mp4", frames)
    height, width = frames[0].shape[:2]
    with pytest.raises(NoFaceFound, match=lying) as caught:
        plan_template(video, width, height, SPEC, cache_dir=tmp_path, max_frames=1000)
    assert caught.value.hint is not None and f"-vf {fix} " in caught.value.hint


def test_crops_are_those_of_a_separate_decode(template_with_gap: Path, tmp_path: Path) -> None:
    """The crops cut from the analysis' own decode are the ones a second decode of the
    template gives for the same regions (frames without a face stay black)."""
    plan = plan_template(template_with_gap, 480, 360, SPEC, cache_dir=tmp_path, max_frames=1000)
    crops = np.load(plan.crops_path, mmap_mode="r")
    assert plan.faceless_frames >= 10
    for index, frame in enumerate(iter_template_frames(template_with_gap, 480, 360)):
        if not plan.valid[index]:
            assert not crops[index].any(), index
            continue
        x0, y0, x1, y1 = (int(v) for v in plan.regions[index])
        bgr = crop_bgr(frame, (x0, y0, x1, y1))
        expected = cv2.resize(bgr, (192, 192), interpolation=cv2.INTER_AREA)
        assert np.array_equal(crops[index], expected), index


_even = st.integers(0, 200).map(lambda v: 2 * v)


@settings(max_examples=40, deadline=None)
@given(
    size=st.tuples(st.integers(8, 200), st.integers(8, 160)).map(lambda s: (2 * s[0], 2 * s[1])),
    kept=st.tuples(_even, _even, st.integers(4, 60), st.integers(4, 60)),
    shift=st.tuples(st.integers(-12, 12), st.integers(-12, 12), st.integers(-12, 12)),
    seed=st.integers(0, 2**16),
)
def test_frame_windows_give_the_pixels_of_the_frame(
    tmp_path_factory: pytest.TempPathFactory,
    size: tuple[int, int],
    kept: tuple[int, int, int, int],
    shift: tuple[int, int, int],
    seed: int,
) -> None:
    """A region near the kept one is the frame's own pixels when the window holds it, and
    None (decode instead) when it does not; never pixels from elsewhere."""
    width, height = size
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
    x0, y0 = min(kept[0], width - 8), min(kept[1], height - 8)
    region = (x0, y0, min(width, x0 + 2 * kept[2]), min(height, y0 + 2 * kept[3]))
    dx, dy, grow = (2 * v for v in shift)
    near = (region[0] + dx, region[1] + dy, region[2] + dx + grow, region[3] + dy + grow)
    assume(near[2] - near[0] >= 2 and near[3] - near[1] >= 2)  # regions are never empty
    with FrameWindows(tmp_path_factory.mktemp("windows")) as windows:
        windows.keep(3, frame, region)
        same = windows.crop(3, region)
        assert same is not None and np.array_equal(same, crop_bgr(frame, region))
        assert windows.crop(4, region) is None
        got = windows.crop(3, near)
    inside = 0 <= near[0] < near[2] <= width and 0 <= near[1] < near[3] <= height
    if got is not None:
        assert inside and np.array_equal(got, crop_bgr(frame, near))
    # The margin is a quarter of the region's side: a small move is always held.
    side = max(region[2] - region[0], region[3] - region[1])
    small = max(abs(dx), abs(dy), abs(dx + grow), abs(dy + grow)) <= side // 4 - 2
    if inside and small:
        assert got is not None
