from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from heygem.media.frames import (
    FramePool,
    FrameSource,
    crop_bgr,
    display_matrix_degrees,
    first_frame_turns,
    from_i420,
    iter_template_frames,
    planes,
    read_i420,
    template_index,
    to_i420,
    write_i420,
)
from tests.helpers import ffmpeg_gray_frames, read_gray_frames


def test_ping_pong_order() -> None:
    order = [template_index(i, 25, 25, 4) for i in range(10)]
    assert order == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert [template_index(i, 25, 25, 1) for i in range(3)] == [0, 0, 0]
    # 50 fps output of a 25 fps template shows each frame twice.
    assert [template_index(i, 50, 25, 3) for i in range(6)] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("out_fps", [25.0, 50.0, 30.0, 15.0])
@pytest.mark.parametrize("length", [3.0, 1.14, 0.5])
@pytest.mark.parametrize("pooled", [False, True])
def test_frame_source_ping_pongs_from_the_spool(
    template_mp4: Path, out_fps: float, length: float, pooled: bool
) -> None:
    """Every output frame shows the right template frame, whether decoded or read back
    (repeats at 30/50 fps, skips at 15 fps, reversals after the end), also when each
    frame goes back to the pool once used, as the compose stage gives it back."""
    template = read_gray_frames(template_mp4)
    n = len(template)
    n_frames = round(length * n * out_fps / 25.0)
    pool = FramePool(480, 360) if pooled else None
    source = FrameSource(
        template_mp4, 480, 360, n_template=n, template_fps=25.0, out_fps=out_fps,
        n_frames=n_frames, pool=pool,
    )  # fmt: skip
    shown = [template_index(i, out_fps, 25.0, n) for i in range(n_frames)]
    seen = 0
    buffers = set()
    for index, frame in source:
        luma = planes(frame)[0]
        assert np.array_equal(luma, template[shown[index]]), index
        luma[:] = 0  # what compose writes must not reach a later frame
        buffers.add(luma.__array_interface__["data"][0])
        if pool is not None:
            pool.give(frame)
        seen += 1
    if pooled:
        assert len(buffers) <= 2  # frames were reused, not allocated per frame
    assert seen == n_frames
    # The decoder only moves forward: a frame at or before one already decoded (shown
    # again, or skipped on the way and shown backwards) is read back; only those are
    # spooled, none when the output walks the template once.
    read_back = {t for i, t in enumerate(shown) if i and t <= max(shown[:i])}
    assert source.spooled_frames == len(read_back)


def test_an_output_a_little_longer_than_the_template_spools_only_its_tail(
    template_mp4: Path,
) -> None:
    source = FrameSource(
        template_mp4, 480, 360, n_template=50, template_fps=25.0, out_fps=25.0, n_frames=57
    )
    assert source.spooled_frames == 7  # frames 48..42, played backwards after the end


def test_crops_convert_only_the_region(template_mp4: Path) -> None:
    source = FrameSource(
        template_mp4, 480, 360, n_template=50, template_fps=25.0, out_fps=25.0, n_frames=1
    )
    _, frame = next(iter(source))
    crop = crop_bgr(frame, (100, 60, 180, 140))
    assert crop.shape == (80, 80, 3)
    import cv2

    full = cv2.cvtColor(to_i420(frame), cv2.COLOR_YUV2BGR_I420)
    assert np.abs(full[60:140, 100:180].astype(int) - crop.astype(int)).max() <= 2


def test_still_images_become_limited_range_like_the_encoder_expects(still_png: Path) -> None:
    from heygem.media.frames import iter_template_frames

    frame = next(iter_template_frames(still_png, 480, 360))
    luma = planes(frame)[0]
    # Full-range luma (0..255) in a stream tagged limited range looks harsh in players.
    assert luma.min() >= 16 and luma.max() <= 235


@pytest.mark.parametrize(("width", "height"), [(1280, 720), (482, 362), (96, 64)])
def test_spooled_frames_read_back_exactly_with_or_without_row_padding(
    tmp_path: Path, width: int, height: int
) -> None:
    """Planes without row padding go straight between file and frame; padded ones are
    packed first. Either way the file holds packed I420 and reads back bit for bit."""
    rng = np.random.default_rng(width)
    packed = [rng.integers(0, 256, (height * 3 // 2, width), dtype=np.uint8) for _ in range(3)]
    size = width * height * 3 // 2
    with (tmp_path / "spool").open("w+b") as spool:
        for index, pixels in enumerate(packed):
            write_i420(spool.fileno(), from_i420(pixels), index * size)
        assert (tmp_path / "spool").stat().st_size == 3 * size
        assert (tmp_path / "spool").read_bytes()[size : 2 * size] == packed[1].tobytes()
        for index in (2, 0, 1):
            frame = read_i420(spool.fileno(), width, height, index * size)
            assert np.array_equal(to_i420(frame), packed[index]), index
        with pytest.raises(OSError, match="ended early"):
            read_i420(spool.fileno(), width, height, 2 * size + 1)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI")
def test_frames_stored_sideways_are_turned_as_players_show_them(phone_template: Path) -> None:
    assert first_frame_turns(phone_template) == 1
    ours = np.stack([planes(f)[0].copy() for f in iter_template_frames(phone_template, 480, 360)])
    shown = ffmpeg_gray_frames(phone_template, 480, 360)
    assert ours.shape == shown.shape
    assert np.abs(ours.astype(np.int16) - shown).mean() < 1.0


def _rotated_clip(path: Path, degrees: float, hflip: bool) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.set_display_rotation(degrees, hflip=hflip)
        for _ in range(2):
            for packet in stream.encode(av.VideoFrame(64, 48, "yuv420p")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


@pytest.mark.skipif(shutil.which("ffprobe") is None, reason="needs the ffprobe CLI")
@pytest.mark.parametrize("degrees", [0, 90, 180, -90, 270, 45])
@pytest.mark.parametrize("hflip", [False, True])
def test_display_matrix_is_read_as_ffmpeg_reads_it(
    tmp_path: Path, degrees: float, hflip: bool
) -> None:
    """PyAV 12 (pinned by the matrix) has no ``VideoFrame.rotation``: the matrix bytes are
    read as FFmpeg reads them. Judged by ffprobe's rotation and newer PyAV's own."""
    clip = _rotated_clip(tmp_path / "clip.mp4", degrees, hflip)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_streams", "-of", "json", clip],
        capture_output=True,
        check=True,
        text=True,
    )
    side_data = json.loads(probe.stdout)["streams"][0].get("side_data_list", [])
    probed = next((float(d["rotation"]) for d in side_data if "rotation" in d), 0.0)
    with av.open(str(clip)) as container:
        frame = next(container.decode(video=0))
    ours = display_matrix_degrees(frame)
    assert _angle_between(ours, probed) < 0.01, (ours, probed)
    assert _angle_between(ours, float(frame.rotation)) <= 0.5, (ours, frame.rotation)


def _angle_between(a: float, b: float) -> float:
    return abs((a - b + 180.0) % 360.0 - 180.0)
