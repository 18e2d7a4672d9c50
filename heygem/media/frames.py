"""Template frames as yuv420p: decode, plane views, crops, and the ping-pong frame source.

The pipeline never converts a whole frame to RGB: decode and encode both speak yuv420p,
and only the small face/mouth region is converted for the model and pasted back. That
is what keeps the pipeline close to a plain transcode.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import av
import cv2
import numpy as np
from av.video.reformatter import ColorRange

from heygem.errors import MediaUnreadable
from heygem.media.probe import open_container

if TYPE_CHECKING:
    from typing_extensions import Buffer  # collections.abc.Buffer from Python 3.12

log = logging.getLogger(__name__)

Region = tuple[int, int, int, int]


def output_size(width: int, height: int) -> tuple[int, int]:
    """yuv420p/libx264 need even sides: drop the odd last row/column."""
    return width - width % 2, height - height % 2


class FramePool:
    """Writable yuv420p frames of one size to decode into, given back once encoded.

    x264 copies every picture it is given, so a frame is free again as soon as it is
    written: reusing it spares a fresh allocation per frame (1.4 MB at 720p, and the page
    faults of touching it), about half the cost of the copy that makes a frame writable.
    """

    def __init__(self, width: int, height: int) -> None:
        self._size = (width, height)
        self._free: deque[av.VideoFrame] = deque()  # append/pop are atomic across threads

    def take(self) -> av.VideoFrame:
        try:
            frame = self._free.pop()
        except IndexError:
            return av.VideoFrame(*self._size, "yuv420p")
        frame.make_writable()  # a no-op unless something still holds a reference
        return frame

    def give(self, frame: av.VideoFrame) -> None:
        if (frame.width, frame.height) == self._size and frame.format.name == "yuv420p":
            self._free.append(frame)


def iter_template_frames(
    path: Path,
    width: int,
    height: int,
    *,
    pool: FramePool | None = None,
    writable: bool = True,
) -> Iterator[av.VideoFrame]:
    """Every frame of the template as a yuv420p frame of ``width`` x ``height``, upright
    as a player shows it (``quarter_turns``): writable (copied into a frame of ``pool``
    when one is given), or, with ``writable=False`` for readers, possibly still the
    decoder's own picture."""
    with open_container(path, "template video") as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame threads: decode overlaps with our compute
        try:
            for frame in container.decode(stream):
                if turns := quarter_turns(frame):
                    frame = turned_upright(frame, turns)
                if (
                    frame.format.name != "yuv420p"
                    or frame.width != width
                    or (frame.height != height)
                ):
                    # Limited ("MPEG") range, as the encoder tags it: without this, PyAV 18
                    # converts RGB stills to full-range luma and the output looks too harsh.
                    frame = frame.reformat(
                        width=width,
                        height=height,
                        format="yuv420p",
                        dst_color_range=ColorRange.MPEG,
                    )
                elif pool is not None:
                    # Decoded buffers may still be the decoder's reference pictures.
                    frame = copy_into(pool.take(), frame)
                elif writable:
                    frame.make_writable()
                yield frame
        except av.error.FFmpegError as exc:
            raise MediaUnreadable(
                f"template video {str(path)!r} stopped decoding: {exc}",
                hint="re-encode the template (e.g. to MP4/H.264) and try again",
            ) from exc


def quarter_turns(frame: av.VideoFrame) -> int:
    """How many quarter turns counterclockwise a player gives ``frame`` (0-3): phones
    store a portrait recording sideways, with a display rotation in the file."""
    degrees = getattr(frame, "rotation", None)  # newer PyAV; the matrix pins PyAV 12
    if degrees is None:
        degrees = display_matrix_degrees(frame)
    return round(float(degrees) / 90.0) % 4


def display_matrix_degrees(frame: av.VideoFrame) -> float:
    """The counterclockwise rotation in ``frame``'s display matrix side data (0 without
    one), computed as FFmpeg's ``av_display_rotation_get`` does: PyAV 12 exposes only
    the matrix's bytes (nine int32, 16.16 fixed point, row-major)."""
    # The stubs list only motion vectors; at run time any side data type is a key.
    side_data: Mapping[str, Buffer] = frame.side_data  # type: ignore[assignment]
    matrix_bytes = side_data.get("DISPLAYMATRIX")
    if matrix_bytes is None:
        return 0.0
    matrix = np.frombuffer(memoryview(matrix_bytes), dtype="<i4", count=9) / 65536.0
    scale_x = np.hypot(matrix[0], matrix[3])
    scale_y = np.hypot(matrix[1], matrix[4])
    if scale_x == 0 or scale_y == 0:
        return 0.0  # a degenerate matrix: FFmpeg reports no rotation either
    return -float(np.degrees(np.arctan2(matrix[1] / scale_y, matrix[0] / scale_x)))


def first_frame_turns(path: Path) -> int:
    """``quarter_turns`` of the template's first frame (a 90 or 270 degree turn swaps the
    output's width and height)."""
    with open_container(path, "template video") as container:
        try:
            frame = next(container.decode(container.streams.video[0]), None)
        except av.error.FFmpegError as exc:
            raise MediaUnreadable(
                f"template video {str(path)!r} does not decode: {exc}",
                hint="re-encode the template (e.g. to MP4/H.264) and try again",
            ) from exc
    return 0 if frame is None else quarter_turns(frame)


def turned_upright(frame: av.VideoFrame, turns: int) -> av.VideoFrame:
    """A new yuv420p frame: ``frame`` turned ``turns`` quarter turns counterclockwise."""
    width, height = output_size(frame.width, frame.height)
    if frame.format.name != "yuv420p" or (frame.width, frame.height) != (width, height):
        frame = frame.reformat(
            width=width, height=height, format="yuv420p", dst_color_range=ColorRange.MPEG
        )
    turned = [np.rot90(plane, turns) for plane in planes(frame)]
    height, width = turned[0].shape
    return _fill(av.VideoFrame(width, height, "yuv420p"), turned)


def copy_into(target: av.VideoFrame, source: av.VideoFrame) -> av.VideoFrame:
    return _fill(target, planes(source))


def _fill(target: av.VideoFrame, sources: Iterable[np.ndarray]) -> av.VideoFrame:
    """``target``'s Y, U, V planes overwritten with ``sources`` (same shapes)."""
    for into, plane in zip(planes(target), sources, strict=True):
        np.copyto(into, plane)
    return target


def planes(frame: av.VideoFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writable numpy views of Y, U, V (rows padded to line_size are cut off)."""
    views = []
    for plane in frame.planes:
        buf = np.frombuffer(memoryview(plane), dtype=np.uint8)
        views.append(buf.reshape(plane.height, plane.line_size)[:, : plane.width])
    return views[0], views[1], views[2]


def to_i420(frame: av.VideoFrame) -> np.ndarray:
    """Packed I420 array of shape (H * 3 // 2, W), as cv2 and from_ndarray expect."""
    y, u, v = planes(frame)
    h, w = y.shape
    out = np.empty((h * 3 // 2, w), dtype=np.uint8)
    out[:h] = y
    out[h:].reshape(-1)[: u.size] = u.reshape(-1)
    out[h:].reshape(-1)[u.size :] = v.reshape(-1)
    return out


def from_i420(packed: np.ndarray) -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(packed, format="yuv420p")


def crop_bgr(frame: av.VideoFrame, region: Region) -> np.ndarray:
    """The region (even coordinates) converted to BGR, nothing else of the frame."""
    return crop_planes_bgr(planes(frame), region)


def i420_region(frame: av.VideoFrame, region: Region) -> np.ndarray:
    """The region (even coordinates) as packed I420: Y rows, then U, then V."""
    x0, y0, x1, y1 = region
    y, u, v = planes(frame)
    w, h = x1 - x0, y1 - y0
    packed = np.empty(w * h * 3 // 2, dtype=np.uint8)
    packed[: w * h].reshape(h, w)[...] = y[y0:y1, x0:x1]
    quarter = (h // 2) * (w // 2)
    packed[w * h : w * h + quarter].reshape(h // 2, w // 2)[...] = u[
        y0 // 2 : y1 // 2, x0 // 2 : x1 // 2
    ]
    packed[w * h + quarter :].reshape(h // 2, w // 2)[...] = v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2]
    return packed


def crop_planes_bgr(yuv: tuple[np.ndarray, np.ndarray, np.ndarray], region: Region) -> np.ndarray:
    """``crop_bgr`` on Y, U, V planes (any arrays holding the region, even coordinates)."""
    x0, y0, x1, y1 = region
    y, u, v = yuv
    w, h = x1 - x0, y1 - y0
    packed = np.empty((h * 3 // 2, w), dtype=np.uint8)
    packed[:h] = y[y0:y1, x0:x1]
    chroma = packed[h:].reshape(-1)
    quarter = (h // 2) * (w // 2)
    chroma[:quarter] = u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2].reshape(-1)
    chroma[quarter:] = v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2].reshape(-1)
    return cv2.cvtColor(packed, cv2.COLOR_YUV2BGR_I420)


def paste_bgr(frame: av.VideoFrame, region: Region, bgr: np.ndarray, mask: np.ndarray) -> None:
    """Blend ``bgr`` (region-sized) into the frame's planes with a 0..1 ``mask``."""
    x0, y0, x1, y1 = region
    w, h = x1 - x0, y1 - y0
    packed = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    new_y = packed[:h]
    chroma = packed[h:].reshape(-1)
    quarter = (h // 2) * (w // 2)
    new_u = chroma[:quarter].reshape(h // 2, w // 2)
    new_v = chroma[quarter:].reshape(h // 2, w // 2)
    y, u, v = planes(frame)
    _blend(y[y0:y1, x0:x1], new_y, mask)
    half_mask = mask[::2, ::2]
    _blend(u[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], new_u, half_mask)
    _blend(v[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2], new_v, half_mask)


def _blend(target: np.ndarray, source: np.ndarray, mask: np.ndarray) -> None:
    mixed = target * (1.0 - mask) + source * mask
    target[...] = np.clip(mixed + 0.5, 0, 255).astype(np.uint8)


def template_index(output_index: int, out_fps: float, template_fps: float, n_template: int) -> int:
    """Which template frame output frame ``output_index`` shows: rate-mapped, ping-pong looped."""
    unfolded = int(output_index * template_fps / out_fps + 1e-9)
    if n_template <= 1:
        return 0
    period = 2 * n_template - 2
    k = unfolded % period
    return k if k < n_template else period - k


def unfolded_index(output_index: int, out_fps: float, template_fps: float) -> int:
    return int(output_index * template_fps / out_fps + 1e-9)


class FrameSource:
    """Yields a fresh writable frame for each output index, in order.

    The first forward pass comes straight from the decoder. If the audio outlasts the
    template (or the output rate repeats frames), the frames that will be shown again
    are also spooled to a raw I420 file on disk as they are decoded, and the later
    (reversed or repeated) frames are read back from it: memory stays flat however long
    the audio, the template is decoded exactly once, and a job that runs only a little
    past the template's end spools only the few frames it plays backwards.
    """

    def __init__(
        self,
        path: Path,
        width: int,
        height: int,
        *,
        n_template: int,
        template_fps: float,
        out_fps: float,
        n_frames: int,
        spool_dir: Path | None = None,
        pool: FramePool | None = None,
    ) -> None:
        self._path, self._w, self._h = path, width, height
        self._n_template, self._tfps, self._ofps = n_template, template_fps, out_fps
        self._n_frames = n_frames
        self._frame_bytes = width * height * 3 // 2
        # Template frame -> its slot in the spool, for every frame shown more than once.
        self._slots = {
            frame: slot for slot, frame in enumerate(sorted(set(self._replayed_frames())))
        }
        self._spool_dir = spool_dir
        self._pool = pool

    def _replayed_frames(self) -> Iterator[int]:
        """The template frames read back from the spool, as ``_frames`` walks them."""
        next_decoded = 0
        for i in range(self._n_frames):
            unfolded = unfolded_index(i, self._ofps, self._tfps)
            wanted = template_index(i, self._ofps, self._tfps, self._n_template)
            if unfolded < self._n_template and wanted >= next_decoded:
                next_decoded = wanted + 1
            else:
                yield wanted

    @property
    def spooled_frames(self) -> int:
        return len(self._slots)

    def __iter__(self) -> Iterator[tuple[int, av.VideoFrame]]:
        spool_fd: int | None = None
        if self._slots:
            spool_fd, name = tempfile.mkstemp(
                prefix="heygem-spool-", suffix=".i420", dir=self._spool_dir
            )
            os.unlink(name)  # anonymous: the file vanishes with the descriptor, even on crash
        try:
            yield from self._frames(spool_fd)
        finally:
            if spool_fd is not None:
                os.close(spool_fd)

    def _frames(self, spool: int | None) -> Iterator[tuple[int, av.VideoFrame]]:
        decoded = iter_template_frames(self._path, self._w, self._h, pool=self._pool)
        next_decoded = 0  # template index the decoder yields next
        for i in range(self._n_frames):
            unfolded = unfolded_index(i, self._ofps, self._tfps)
            wanted = template_index(i, self._ofps, self._tfps, self._n_template)
            if unfolded < self._n_template and wanted >= next_decoded:
                frame = None
                while next_decoded <= wanted:
                    frame = next(decoded, None)
                    if frame is None:
                        raise MediaUnreadable(
                            f"template video ended after {next_decoded} frames, "
                            f"expected {self._n_template}",
                            hint="the file changed since it was analysed; run again",
                        )
                    slot = self._slots.get(next_decoded)
                    if spool is not None and slot is not None:
                        write_i420(spool, frame, slot * self._frame_bytes)
                    if next_decoded < wanted and self._pool is not None:
                        self._pool.give(frame)  # skipped (a lower output rate): free again
                    next_decoded += 1
                assert frame is not None
                yield i, frame
            else:
                assert spool is not None  # repeats and reversals only happen when spooling
                offset = self._slots[wanted] * self._frame_bytes
                yield i, read_i420(spool, self._w, self._h, offset, self._pool)
        decoded.close()  # type: ignore[attr-defined]


# Spooled frames go between the file and the frame's own planes without an intermediate
# packed copy when the planes have no row padding (a 720p frame is 1.4 MB).
def write_i420(fd: int, frame: av.VideoFrame, offset: int) -> None:
    """Write ``frame`` as packed I420 (Y rows, then U, then V) at ``offset`` of ``fd``."""
    views = planes(frame)
    if all(view.flags.c_contiguous for view in views):
        os.pwritev(fd, [view.data for view in views], offset)
    else:
        os.pwrite(fd, to_i420(frame).tobytes(), offset)


def read_i420(
    fd: int, width: int, height: int, offset: int, pool: FramePool | None = None
) -> av.VideoFrame:
    """The packed I420 frame at ``offset`` of ``fd`` as a writable frame (of ``pool``)."""
    size = width * height * 3 // 2
    frame = pool.take() if pool is not None else av.VideoFrame(width, height, "yuv420p")
    views = planes(frame)
    contiguous = all(view.flags.c_contiguous for view in views)
    data = b"" if contiguous else os.pread(fd, size, offset)
    read = os.preadv(fd, [view.data for view in views], offset) if contiguous else len(data)
    if read != size:
        raise OSError(f"the frame spool ended early: {read} of {size} bytes at {offset}")
    if contiguous:
        return frame
    return from_i420(np.frombuffer(data, dtype=np.uint8).reshape(height * 3 // 2, width))
