"""Read dlib's serialized shape predictor (a ``shape_predictor_*.dat``) into numpy arrays.

dlib stores every number as a variable-length integer: a header byte (the payload's
length in its low 4 bits, the sign in its top bit) and that many little-endian bytes; a
float is two of them (a mantissa and a binary exponent). dlib's own reader takes 0.36 s
for the 68-point model (16 M floats) on every process that loads it, holding the GIL;
read once into arrays (``heygem.face.landmark_store``), it maps in milliseconds and runs
in a small compiled kernel (``heygem.face.shape_predictor``).

The varints can only be told apart by reading them in order. That walk runs as ~1000
chains at once in numpy, one from the start of each chunk of the file: a chain started
mid-number reads garbage for a few numbers and then falls onto the true boundaries
(numbers are 2-9 bytes), so each chunk's chain is joined to the true chain where they
first meet, and the result is checked to be one unbroken chain over the whole file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heygem.errors import HeygemError

CHAINS = 1024  # chains walked at once: fewer cost numpy calls, more cost cache misses
BLOCK = 1 << 22  # bytes decoded at a time
PAD = 16
_LENGTH = ((np.arange(256) & 15) + 1).astype(np.int64)  # header byte -> bytes of the number
_INF, _NEG_INF, _NAN = 32000, 32001, 32002  # dlib's exponents of the special floats


class UnreadableLandmarkModel(HeygemError):
    """The landmark model file is not a dlib shape predictor this reader knows."""


@dataclass(frozen=True)
class ShapeModelArrays:
    """A cascade of regression-tree forests (Kazemi & Sullivan 2014), as dlib trains it.

    ``C`` cascades of ``T`` trees with ``S`` splits and ``S + 1`` leaves each, ``P``
    points, ``F`` feature pixels per cascade."""

    initial: np.ndarray  # (P, 2) float32 mean shape in the face box's unit square
    anchors: np.ndarray  # (C, F) int64: the point each feature pixel is placed from
    deltas: np.ndarray  # (C, F, 2) float32: its offset from that point (mean-shape units)
    split_pixels: np.ndarray  # (C, T, S, 2) int64: the two feature pixels a split compares
    thresholds: np.ndarray  # (C, T, S) float32: left when first - second > threshold
    leaves: np.ndarray  # (C, T, S + 1, 2P) float32: shape increments


def read_dlib_shape_predictor(path: Path) -> ShapeModelArrays:
    if path.stat().st_size < 16:
        raise UnreadableLandmarkModel(f"{path} is too short for a dlib shape predictor")
    numbers = _Numbers(read_numbers(path), path)
    try:
        return _shape_predictor(numbers, path)
    except (ValueError, IndexError, OverflowError, MemoryError) as exc:  # garbage sizes
        raise UnreadableLandmarkModel(f"{path} is not a dlib shape predictor ({exc})") from exc


def read_numbers(path: Path) -> np.ndarray:
    """Every number of a dlib-serialised file, in order (int32, or int64 if wide)."""
    size = path.stat().st_size
    padded = np.zeros(size + PAD, dtype=np.uint8)
    with path.open("rb") as fh:
        if fh.readinto(padded.data[:size]) != size:
            raise UnreadableLandmarkModel(f"{path} changed while it was read")
    return _numbers(padded, size, path) if size else np.zeros(0, dtype=np.int32)


def _shape_predictor(numbers: _Numbers, path: Path) -> ShapeModelArrays:
    if numbers.take_int() != 1:
        raise UnreadableLandmarkModel(f"{path}: not a version-1 dlib shape predictor")
    initial = numbers.take_column().reshape(-1, 2)
    points = len(initial)
    cascades = numbers.take_int()
    splits: list[tuple[np.ndarray, np.ndarray]] = []
    leaves = np.empty(0, dtype=np.float32)
    for cascade in range(cascades):  # (the leaves straight into place: 65 MB copied once)
        pixels, thresholds, leaf_values = _forest(numbers, points)
        if cascade == 0:
            leaves = np.empty((cascades, *leaf_values.shape), dtype=np.float32)
        leaves[cascade] = leaf_values
        splits.append((pixels, thresholds))
    numbers.expect(cascades, "anchor lists")
    anchors = np.stack([numbers.take_ints(numbers.take_int()) for _ in range(cascades)])
    numbers.expect(cascades, "offset lists")
    deltas = np.stack(
        [numbers.take_floats(2 * numbers.take_int()).reshape(-1, 2) for _ in range(cascades)]
    )
    if not numbers.exhausted:
        raise UnreadableLandmarkModel(f"{path}: unexpected data after the shape predictor")
    return ShapeModelArrays(
        initial=initial.astype(np.float32),
        anchors=anchors.astype(np.int64),
        deltas=deltas.astype(np.float32),
        split_pixels=np.stack([pixels for pixels, _ in splits]),
        thresholds=np.stack([thresholds for _, thresholds in splits]),
        leaves=leaves,
    )


def _forest(numbers: _Numbers, points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One cascade's trees, read as one block: every tree has the same layout."""
    trees = numbers.take_int()
    splits = int(numbers.peek(0))
    leaves, dims = int(numbers.peek(1 + 4 * splits)), 2 * points
    tree_len = 1 + 4 * splits + 1 + leaves * (2 + 2 * dims)
    block = numbers.take_raw(trees * tree_len).reshape(trees, tree_len)
    split_part = block[:, 1 : 1 + 4 * splits].reshape(trees, splits, 4)
    leaf_part = block[:, 2 + 4 * splits :].reshape(trees, leaves, 2 + 2 * dims)
    layout_ok = (
        (block[:, 0] == splits).all()
        and (block[:, 1 + 4 * splits] == leaves).all()
        and (leaf_part[:, :, 0] == -dims).all()  # dlib writes a matrix's size negated
        and (leaf_part[:, :, 1] == -1).all()
        and leaves == splits + 1
    )
    if not layout_ok:
        raise UnreadableLandmarkModel(f"{numbers.path}: a forest's trees differ in layout")
    thresholds = _floats(split_part[..., 2], split_part[..., 3])
    values = leaf_part[:, :, 2:].reshape(trees, leaves, dims, 2)
    leaf_values = _floats(values[..., 0], values[..., 1])
    return split_part[..., :2].astype(np.int64), thresholds, leaf_values


class _Numbers:
    """The file's integers in order, read by the serialised layout."""

    def __init__(self, values: np.ndarray, path: Path) -> None:
        self.values, self.path, self.at = values, path, 0

    @property
    def exhausted(self) -> bool:
        return self.at == len(self.values)

    def peek(self, offset: int) -> int:
        if offset < 0 or self.at + offset >= len(self.values):
            raise UnreadableLandmarkModel(f"{self.path} ends early")
        return int(self.values[self.at + offset])

    def expect(self, count: int, what: str) -> None:
        if self.take_int() != count:
            raise UnreadableLandmarkModel(f"{self.path}: {what} do not match the cascades")

    def take_raw(self, count: int) -> np.ndarray:
        if count < 0 or self.at + count > len(self.values):
            raise UnreadableLandmarkModel(f"{self.path} ends early")
        out = self.values[self.at : self.at + count]
        self.at += count
        return out

    def take_int(self) -> int:
        return int(self.take_raw(1)[0])

    def take_ints(self, count: int) -> np.ndarray:
        return self.take_raw(count)

    def take_floats(self, count: int) -> np.ndarray:
        pairs = self.take_raw(2 * count).reshape(count, 2)
        return _floats(pairs[:, 0], pairs[:, 1])

    def take_column(self) -> np.ndarray:
        """A ``matrix<float,0,1>``: its size (rows and columns, negated), then the values."""
        rows, cols = -self.take_int(), -self.take_int()
        if rows < 0 or cols != 1:
            raise UnreadableLandmarkModel(f"{self.path}: expected a column of floats")
        return self.take_floats(rows)


def _floats(mantissa: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """float32 values (dlib's float mantissas have 24 bits: exact in float32)."""
    out = np.ldexp(mantissa.astype(np.float32), np.clip(exponent, -300, 300).astype(np.int32))
    out[exponent == _INF] = np.inf
    out[exponent == _NEG_INF] = -np.inf
    out[exponent == _NAN] = np.nan
    return out


def _numbers(padded: np.ndarray, size: int, path: Path) -> np.ndarray:
    """Every number of the file (``padded[:size]``), in order."""
    marks = _number_marks(padded, size)
    out = np.empty(int(np.count_nonzero(marks)), dtype=np.int32)
    # Block by block: temporaries of a few MB are reused, not faulted in afresh.
    expected, filled = 0, 0
    for start in range(0, size, BLOCK):
        heads = np.flatnonzero(marks[start : start + BLOCK])
        if not len(heads):
            continue
        heads += start
        headers = padded[heads]
        following = heads + _LENGTH[headers]
        if heads[0] != expected or not np.array_equal(following[:-1], heads[1:]):
            raise UnreadableLandmarkModel(f"{path} is not a dlib serialised file (damaged?)")
        expected = int(following[-1])
        values = _decode(padded, heads, headers)
        if values.dtype == np.int64 and out.dtype == np.int32:  # wide numbers (not in models)
            out = out.astype(np.int64)
        out[filled : filled + len(heads)] = values
        filled += len(heads)
    if expected != size:
        raise UnreadableLandmarkModel(f"{path} ends inside a number (truncated?)")
    return out


def _number_marks(padded: np.ndarray, size: int) -> np.ndarray:
    """True at the offset of every number's header byte in ``padded[:size]``."""
    chunk = max(64, -(-size // CHAINS))
    starts = np.arange(0, size, chunk, dtype=np.int64)
    ends = np.minimum(starts + chunk, size)
    marks = np.zeros(size + PAD, dtype=bool)
    at = starts.copy()
    # Each chain walks its chunk and parks on the next chunk's first byte (which that
    # chunk's own chain marks anyway), so a chunk's marks are its own chain's only.
    while True:
        for _ in range(64):  # (parked chains only re-mark their next chunk's first byte)
            marks[at] = True
            at += _LENGTH[padded[at]]
            np.minimum(at, ends, out=at)
        if np.array_equal(at, ends):
            break
    data = padded.data
    true = 0  # the next number's offset on the true chain
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        if true >= end:  # (a cut file's last chunk, inside the number before it)
            marks[start:end] = False
            continue
        walked = []
        while true < end and not marks[true]:  # until the true chain meets this chunk's
            walked.append(true)
            true += (data[true] & 15) + 1
        marks[start:true] = False  # the chunk chain's numbers before the meeting are false
        marks[walked] = True
        if true < end:  # met: the rest of the chunk's chain is true; go to its end
            last = end - 1 - int(marks[start:end][::-1].argmax())
            true = last + (data[last] & 15) + 1
    return marks[:size]


def _decode(padded: np.ndarray, heads: np.ndarray, headers: np.ndarray) -> np.ndarray:
    """The signed value of the number at each header offset: int32 when every payload
    has at most 3 bytes (all of dlib's models), else int64."""
    narrow = int((headers & 15).max()) <= 3
    word = np.dtype("<u4") if narrow else np.dtype("<u8")
    # The bytes after every offset as one little-endian word (an overlapping view: no copy)
    words = np.ndarray((len(padded) - 8,), dtype=word, buffer=padded, offset=1, strides=(1,))
    values = words[heads]
    values &= _masks(word)[headers]
    signed = values.view(np.int32 if narrow else np.int64)  # < 2**24, or dlib's int64
    np.negative(signed, out=signed, where=headers >= 0x80)
    return signed


def _masks(word: np.dtype) -> np.ndarray:
    """Header byte -> the mask of its payload bytes within ``word``."""
    bits = np.minimum((np.arange(256) & 15) * 8, word.itemsize * 8)
    return np.array([(1 << int(b)) - 1 for b in bits], dtype=object).astype(word)
