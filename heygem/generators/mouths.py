"""Which mouth each output frame shows: Video Rewrite-style retrieval from the template.

At template analysis every frame's mouth was measured (inner-lip opening from its
landmarks, cached). Per job:

1. ``speech_openness``: the voice's loudness per output frame (its RMS in dB, 24 dB
   below the job's loud speech = closed), 0 in silence and in energy dips (m/b/p
   closures), lightly smoothed.
2. ``plan_mouths``: a target opening per frame on the template's own scale (its closed
   mouth .. its wide mouth), and a Viterbi pass over the template's frames that picks the
   mouth matching the target, prefers continuing a run of consecutive template frames
   (real motion, no jitter), the frame's own mouth and similar head poses. What the
   template cannot supply (a still has one mouth) becomes the extra opening that
   ``rewrite.MouthRenderer`` renders.
3. The chosen mouth is aligned to the shown frame by a similarity transform fitted on the
   landmarks that do not move with speech (nose, eye corners), and colour-matched there.

``MouthSamples`` is the DataLoader dataset that serves the aligned crop and the
renderer's control vector per output frame.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from heygem.config import FaultInjection
from heygem.face.geometry import crop_transform
from heygem.face.landmarks import STABLE, interocular, mouth_opening
from heygem.generators.control import PLAN_CONTROL, ROLL_MIN, Control, Upright, upright_matrix
from heygem.runner.faults import inject

DYNAMIC_RANGE_DB = 24.0  # from closed to fully open, below the job's loud speech
# Openness = (position in that range) ** OPENNESS_GAMMA: quiet voiced frames open visibly.
# Linear in dB, a frame 12-20 dB below the loud speech opened the lips 0.02-0.07 eye
# distances, which an independent landmark model (MediaPipe Face Mesh) read as closed:
# its opening stayed flat from silence up to -12 dB. Measured on six stills x four
# espeak-ng sentences, then checked on two sentences and voices not used to choose it:
# 0.6 raised the lowest reading against the loudness in dB from 0.58 to 0.68-0.73, and
# against the RMS it stayed 0.74-0.93; 0.5 closed too few m/b/p dips (a beard read 0.70).
OPENNESS_GAMMA = 0.6
# Opening scale, in interocular distances (inner-lip gap / eye distance).
NOMINAL_SPAN = 0.22  # closed -> wide speech opening, when the template shows less
SLIT = 0.05  # openness (0..1) below which the mouth stays closed
CLOSED_TEETH = 0.04  # a mouth this closed shows no teeth: the renderer draws their edge
MAX_CANDIDATES = 400  # template frames considered per output frame
CHUNK = 2048  # output frames per Viterbi pass (bounded memory for hour-long audio)
# Viterbi costs, in units of "one opening step" (OPEN_STEP interocular distances off).
OPEN_STEP = 0.02
TOO_OPEN = 2.0  # a mouth wider than wanted cannot be fixed: weighs double
POSE_STEP = 0.03
POSE_WEIGHT = 0.5
OWN_FRAME_BONUS = 0.6
HOLD_COST = 0.3
JUMP_COST = 1.5


def speech_openness(loudness_db: np.ndarray, active: np.ndarray) -> np.ndarray:
    """(n_frames,) 0..1: how open the mouth should be for the voice at each output frame,
    from the frame's loudness (RMS in dBFS): ``DYNAMIC_RANGE_DB`` below the job's loud
    speech is closed, and the opening grows as that range's fraction to the power
    ``OPENNESS_GAMMA``. The power of the whole frame, not a mean of log-mel bands: that
    mean weighs hiss-like consonants (s, f, sh: high bands, a nearly closed mouth) like
    vowels and follows the voice's envelope less (on four espeak-ng sentences the target
    correlated 0.74-0.81 with the frames' RMS and 0.80-0.87 with it in dB; now 0.90-0.92
    and 0.95-0.96)."""
    loud = np.asarray(loudness_db, dtype=np.float64)
    voiced = np.asarray(active[: loud.size], dtype=bool)
    if not voiced.any():
        return np.zeros(loud.size, dtype=np.float32)
    peak = float(np.percentile(loud[voiced], 95))
    in_range = np.clip((loud - (peak - DYNAMIC_RANGE_DB)) / DYNAMIC_RANGE_DB, 0.0, 1.0)
    openness = in_range**OPENNESS_GAMMA
    openness[~voiced] = 0.0
    smoothed = np.convolve(np.pad(openness, 1, mode="edge"), [0.2, 0.6, 0.2], mode="valid")
    return smoothed.astype(np.float32)


@dataclass(frozen=True)
class MouthPlan:
    """Per output frame: the template frame whose mouth is shown, the 2x3 warp from its
    crop to the shown frame's crop, and the renderer's control vector."""

    source: np.ndarray  # (n,) int32
    warp: np.ndarray  # (n, 2, 3) float32
    control: np.ndarray  # (n, PLAN_CONTROL) float32: the graph's columns, then Upright

    def save(self, path: Path) -> Path:
        np.savez(path, source=self.source, warp=self.warp, control=self.control)
        return path

    @classmethod
    def load(cls, path: Path) -> MouthPlan:
        with np.load(path) as data:
            return cls(data["source"], data["warp"], data["control"])


def pose_features(points: np.ndarray) -> np.ndarray:
    """(N, 68, 2) -> (N, 2 * len(STABLE)): stable points centred and scaled by the eye
    distance, so head turns and tilts differ and translation/zoom do not."""
    stable = points[:, list(STABLE)].astype(np.float64)
    centred = stable - stable.mean(axis=1, keepdims=True)
    scale = np.maximum(interocular(points), 1e-6)[:, None, None]
    return (centred / scale).reshape(len(points), -1)


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 least-squares similarity (Umeyama) mapping points ``src`` onto ``dst``."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.diag([1.0, float(np.sign(np.linalg.det(u @ vt)) or 1.0)])
    rotation = u @ d @ vt
    var = float((xs**2).sum() / len(src)) or 1.0
    scale = float(np.trace(np.diag(s) @ d)) / var
    out = np.eye(3)
    out[:2, :2] = scale * rotation
    out[:2, 2] = mu_d - scale * rotation @ mu_s
    return out


def _choose(
    wanted: np.ndarray,
    shown: np.ndarray,
    candidates: np.ndarray,
    openings: np.ndarray,
    poses: np.ndarray,
) -> np.ndarray:
    """Viterbi over output frames: candidate template frames per output frame."""
    k = len(candidates)
    follows = np.zeros(k, dtype=bool)  # candidate j continues candidate j-1 in time
    follows[1:] = np.diff(candidates) == 1
    cand_open, cand_pose = openings[candidates], poses[candidates]
    chosen = np.empty(len(wanted), dtype=np.int64)
    previous: int | None = None
    for start in range(0, len(wanted), CHUNK):
        stop = min(start + CHUNK, len(wanted))
        back = np.empty((stop - start, k), dtype=np.int32)
        total = np.zeros(k)
        if previous is not None:  # continue from the last chunk's choice
            total = np.full(k, JUMP_COST)
            total[previous] = 0.0
        for row, i in enumerate(range(start, stop)):
            off = cand_open - wanted[i]
            cost = np.where(off > 0, TOO_OPEN * off, -off) / OPEN_STEP
            pose = np.linalg.norm(cand_pose - poses[shown[i]], axis=1) / POSE_STEP
            cost = cost + POSE_WEIGHT * pose - OWN_FRAME_BONUS * (candidates == shown[i])
            if row == 0 and previous is None:
                back[row] = np.arange(k)
                total = cost
                continue
            hold = total + HOLD_COST
            advance = np.full(k, np.inf)
            advance[follows] = total[:-1][follows[1:]]
            best_any = int(np.argmin(total))
            jump = total[best_any] + JUMP_COST
            options = np.stack([hold, advance, np.full(k, jump)])
            pick = np.argmin(options, axis=0)
            back[row] = np.where(
                pick == 0, np.arange(k), np.where(pick == 1, np.arange(k) - 1, best_any)
            )
            total = options[pick, np.arange(k)] + cost
        state = int(np.argmin(total))
        for row in range(stop - start - 1, -1, -1):
            chosen[start + row] = state
            state = int(back[row, state])
        previous = int(chosen[stop - 1])
    return np.asarray(candidates[chosen])


def plan_mouths(
    points: np.ndarray,
    valid: np.ndarray,
    regions: np.ndarray,
    size: int,
    openness: np.ndarray,
    shown: np.ndarray,
) -> MouthPlan:
    """``points``/``valid``/``regions``: the template analysis; ``openness``: per output
    frame (``speech_openness``); ``shown``: the template frame each output frame shows."""
    n = len(openness)
    usable = np.flatnonzero(valid)
    openings = np.zeros(len(valid))
    openings[usable] = mouth_opening(points[usable])
    poses = np.zeros((len(valid), 2 * len(STABLE)))
    poses[usable] = pose_features(points[usable])
    closed = float(np.percentile(openings[usable], 5))
    widest = float(np.percentile(openings[usable], 95))
    span = max(widest - closed, NOMINAL_SPAN)
    # The quietest voiced frames close the mouth: a slit barely open reads as neither
    # open nor closed (and a talking template made of such frames has no clean closures).
    voiced = np.clip((openness.astype(np.float64) - SLIT) / (1.0 - SLIT), 0.0, 1.0)
    wanted = closed + voiced * span

    step = max(1, int(np.ceil(len(usable) / MAX_CANDIDATES)))
    candidates = usable[::step]
    target_ok = valid[shown]
    shown_safe = np.where(target_ok, shown, usable[0])
    source = _choose(wanted, shown_safe, candidates, openings, poses)

    warp = np.zeros((n, 2, 3), dtype=np.float32)
    control = np.zeros((n, PLAN_CONTROL), dtype=np.float32)
    cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for i in range(n):
        t, k = int(shown_safe[i]), int(source[i])
        if (k, t) not in cache:
            cache[(k, t)] = _align(points, regions, size, k, t)
        matrix, geometry = cache[(k, t)]
        warp[i] = matrix[:2]
        extra = max(0.0, wanted[i] - openings[k])
        # Interocular units -> frame pixels of t -> the crop's normalised units.
        side = float(regions[t, 2] - regions[t, 0])
        control[i] = geometry
        control[i, Control.OPEN] = extra * float(interocular(points[t])) * 2.0 / side
        control[i, Control.TEETH] = 1.0 if openings[k] < CLOSED_TEETH else 0.0
    control[~target_ok] = 0.0
    return MouthPlan(source.astype(np.int32), warp, control)


def _align(
    points: np.ndarray, regions: np.ndarray, size: int, k: int, t: int
) -> tuple[np.ndarray, np.ndarray]:
    """(3x3 warp crop k -> crop t, control geometry of k's mouth in crop t's coordinates).

    On a face tilted by more than ``ROLL_MIN`` (its eye line, in crop t) the geometry is
    that of the crop turned upright about the mouth (``Upright`` columns say how): the
    renderer's jaw moves down the face, not down the frame."""
    to_crop_t = np.vstack([crop_transform(tuple(regions[t]), size), [0, 0, 1]])
    to_crop_k = np.vstack([crop_transform(tuple(regions[k]), size), [0, 0, 1]])
    if k == t:
        head = np.eye(3)
    else:
        stable = list(STABLE)
        head = similarity(
            points[k, stable].astype(np.float64), points[t, stable].astype(np.float64)
        )
    matrix = to_crop_t @ head @ np.linalg.inv(to_crop_k)
    mouth = points[k].astype(np.float64)
    in_t = (to_crop_t @ head @ np.c_[mouth, np.ones(len(mouth))].T).T[:, :2]
    geometry = np.zeros(PLAN_CONTROL, dtype=np.float32)
    roll = face_roll(points[t], to_crop_t)
    if abs(roll) > ROLL_MIN:
        pivot = in_t[48:68].mean(axis=0)
        turn = upright_matrix(roll, float(pivot[0]), float(pivot[1]))
        in_t = in_t @ turn[:, :2].T + turn[:, 2]
        geometry[Upright.ROLL] = roll
        geometry[Upright.PIVOT_X], geometry[Upright.PIVOT_Y] = pivot
    norm = in_t * (2.0 / (size - 1)) - 1.0
    geometry[Control.CENTER_X] = 0.5 * (norm[48, 0] + norm[54, 0])
    geometry[Control.HALF_WIDTH] = 0.5 * abs(norm[54, 0] - norm[48, 0])
    geometry[Control.UPPER] = norm[[61, 62, 63], 1].mean()
    geometry[Control.LOWER] = norm[[65, 66, 67], 1].mean()
    geometry[Control.CORNERS] = 0.5 * (norm[60, 1] + norm[64, 1])
    geometry[Control.CHIN] = norm[8, 1]
    return matrix, geometry


def face_roll(points: np.ndarray, to_crop: np.ndarray) -> float:
    """The face's roll in a crop (radians, positive when its image-right eye is lower):
    the eye line of (68, 2) frame ``points`` mapped by the 3x3 ``to_crop``."""
    eyes = np.array([points[36:42].mean(axis=0), points[42:48].mean(axis=0)], np.float64)
    in_crop = eyes @ to_crop[:2, :2].T
    dx, dy = in_crop[1] - in_crop[0]
    return float(np.arctan2(dy, dx))


class MouthSamples:
    """Item i: (i, the chosen mouth's crop aligned to frame i's crop [S,S,3] uint8 BGR,
    the renderer's control [PLAN_CONTROL] float32). Workers open the memory maps themselves;
    without workers ``batch`` stacks the items in the load thread (heygem.batches)."""

    def __init__(
        self,
        crops_path: Path,
        plan_path: Path,
        shown: np.ndarray,
        fault: FaultInjection | None = None,
    ) -> None:
        self.crops_path, self.plan_path, self.shown = crops_path, plan_path, shown
        self.fault = fault if fault is not None and fault.stage == "load" else None
        self._crops: np.ndarray | None = None
        self._plan: MouthPlan | None = None

    def __len__(self) -> int:
        return len(self.shown)

    def __getstate__(self) -> dict[str, object]:
        return {**self.__dict__, "_crops": None, "_plan": None}

    def __getitem__(self, index: int) -> tuple[int, np.ndarray, np.ndarray]:
        """One item, in a DataLoader worker process."""
        return self._item(index, in_worker=True)

    def batch(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Items ``start..stop-1`` stacked, in the calling thread."""
        items = [self._item(index, in_worker=False) for index in range(start, stop)]
        return (
            np.arange(start, stop, dtype=np.int64),
            np.stack([crop for _, crop, _ in items]),
            np.stack([control for _, _, control in items]),
        )

    def _item(self, index: int, *, in_worker: bool) -> tuple[int, np.ndarray, np.ndarray]:
        if self._crops is None or self._plan is None:
            self._crops = np.load(self.crops_path, mmap_mode="r")
            self._plan = MouthPlan.load(self.plan_path)
        inject(self.fault, "load", index, in_worker=in_worker)
        crops, plan = self._crops, self._plan
        t, k = int(self.shown[index]), int(plan.source[index])
        target = np.asarray(crops[t])
        if k == t:
            crop = target.copy()
        else:
            crop = aligned_mouth(np.asarray(crops[k]), target, plan.warp[index])
        return index, crop, plan.control[index].copy()


def aligned_mouth(source: np.ndarray, target: np.ndarray, warp: np.ndarray) -> np.ndarray:
    """``source`` crop warped onto ``target``'s, its colour matched on the blend ring."""
    size = target.shape[0]
    moved = cv2.warpAffine(
        source, warp, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    ring = _ring(size)
    offset = np.subtract(cv2.mean(target, ring), cv2.mean(moved, ring))[:3]
    shifted = moved.astype(np.int16) + np.round(offset).astype(np.int16)
    return np.clip(shifted, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _ring(size: int) -> np.ndarray:
    """Where the pasted mouth blends into the frame (see composite.feather_mask)."""
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    radius = np.hypot(axis[None, :], axis[:, None])
    ring = (((radius > 0.55) & (radius < 0.9)) * 255).astype(np.uint8)
    ring.setflags(write=False)
    return ring
