"""Lip-sync score: does the mouth in a video open and close with the voice in an audio?

Measured on the video's pixels only, never on a generator's internal state: every frame
is searched for a face afresh (dlib HOG, tracked), 68 landmarks are fitted (dlib's shape
predictor), and the inner-lip gap over the eye distance is the mouth's opening. The
audio's loudness envelope is its RMS per video frame in dB, floored 40 dB under its
peak. The score is the best Pearson correlation of the two within +-``max_lag`` frames
(a mouth may lead or trail its sound by a few frames). The control repeats the
measurement with the audio rotated by half its length: a mouth that follows the voice
scores high and its control near zero; a mouth that moves regardless of the voice (or a
metric fooled by rhythm) scores alike on both.

Verdict (``sync_report``): FAIL when the score is below ``threshold`` (default 0.5: the
issue's target for talking templates; stills reach >= 0.7); WARN when the control
reaches ``CONTROL_LIMIT`` (0.2), since then the score may be chance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

from diagnostics.findings import Finding, Report, Severity
from heygem.errors import MediaUnreadable
from heygem.face.detect import Box, FaceDetector
from heygem.face.landmarks import landmarks, mouth_opening
from heygem.media.audio import decode_audio_mono
from heygem.media.frames import quarter_turns, turned_upright
from heygem.media.probe import open_video

SAMPLE_RATE = 16000
MAX_LAG = 5  # frames
THRESHOLD = 0.5
CONTROL_LIMIT = 0.2
FLOOR_DB = 40.0  # the envelope's range below its peak
MIN_FACE_FRAMES = 10


@dataclass(frozen=True)
class SyncScore:
    score: float  # best correlation with the audio within +-max_lag frames
    lag: int  # frames the mouth trails the audio at the best correlation (<0: leads)
    control: float  # the same with the audio rotated by half its length
    control_lag: int
    frames: int
    measured: int  # frames where a mouth was measured
    fps: float
    opening: np.ndarray = field(repr=False)  # (frames,) NaN where no face
    envelope: np.ndarray = field(repr=False)  # (frames,) dB

    def to_dict(self) -> dict[str, object]:
        return {
            "score": _round(self.score),
            "lag_frames": self.lag,
            "control": _round(self.control),
            "control_lag_frames": self.control_lag,
            "frames": self.frames,
            "measured_frames": self.measured,
            "fps": _round(self.fps),
        }


def _round(value: float) -> float | None:
    return None if not math.isfinite(value) else round(float(value), 4)


def mouth_openings(video: Path) -> tuple[np.ndarray, float]:
    """(per-frame inner-lip opening, NaN where no face was found; frames per second)."""
    detector = FaceDetector()
    values: list[float] = []
    previous: Box | None = None
    hint = "pass the video to score first, then the audio it should follow"
    with open_video(video, "video", hint=hint) as (container, stream):
        stream.thread_type = "AUTO"
        fps = float(stream.average_rate or stream.guessed_rate or 25)
        try:
            for frame in container.decode(stream):
                if turns := quarter_turns(frame):  # a phone's recording: score it as shown
                    frame = turned_upright(frame, turns)
                gray = frame.to_ndarray(format="gray")
                box = detector.detect(gray, previous)
                previous = box or previous
                if box is None:
                    values.append(math.nan)
                    continue
                values.append(float(mouth_opening(landmarks(gray, box))))
        except av.error.FFmpegError as exc:
            raise MediaUnreadable(
                f"video {str(video)!r} is damaged and stopped decoding after {len(values)} "
                f"frames: {exc}",
                hint="re-encode it (e.g. ffmpeg -i IN -c:v libx264 OUT.mp4) and score again",
            ) from exc
    return np.array(values, dtype=np.float64), fps


def loudness_envelope(wav: np.ndarray, frames: int, fps: float) -> np.ndarray:
    """RMS per video frame in dB, floored ``FLOOR_DB`` under the loudest frame."""
    edges = np.clip(
        np.round(np.arange(frames + 1) * SAMPLE_RATE / fps).astype(np.int64), 0, wav.size
    )
    squared = np.concatenate([[0.0], np.cumsum(wav.astype(np.float64) ** 2)])
    counts = np.maximum(edges[1:] - edges[:-1], 1)
    rms = np.sqrt(np.maximum(squared[edges[1:]] - squared[edges[:-1]], 0.0) / counts)
    db = 20.0 * np.log10(np.maximum(rms, 1e-7))
    return np.maximum(db, db.max() - FLOOR_DB)


def best_correlation(opening: np.ndarray, envelope: np.ndarray, max_lag: int) -> tuple[float, int]:
    """Highest Pearson correlation over lags -max_lag..max_lag (opening[i] vs
    envelope[i - lag]), on frames where both are known."""
    best, best_lag = -math.inf, 0
    n = min(opening.size, envelope.size)
    for lag in range(-max_lag, max_lag + 1):
        a = opening[max(0, lag) : n + min(0, lag)]
        b = envelope[max(0, -lag) : n - max(0, lag)]
        keep = np.isfinite(a) & np.isfinite(b)
        if keep.sum() < MIN_FACE_FRAMES:
            continue
        x, y = a[keep] - a[keep].mean(), b[keep] - b[keep].mean()
        denom = math.sqrt(float((x * x).sum() * (y * y).sum()))
        r = float((x * y).sum()) / denom if denom > 0 else 0.0
        if r > best:
            best, best_lag = r, lag
    return (best if math.isfinite(best) else math.nan), best_lag


def sync_score(video: Path, audio: Path, max_lag: int = MAX_LAG) -> SyncScore:
    opening, fps = mouth_openings(video)
    wav = decode_audio_mono(audio, SAMPLE_RATE)
    frames = opening.size
    envelope = loudness_envelope(wav, frames, fps)
    score, lag = best_correlation(opening, envelope, max_lag)
    rotated = loudness_envelope(np.roll(wav, wav.size // 2), frames, fps)
    control, control_lag = best_correlation(opening, rotated, max_lag)
    measured = int(np.isfinite(opening).sum())
    return SyncScore(score, lag, control, control_lag, frames, measured, fps, opening, envelope)


def sync_report(
    result: SyncScore,
    *,
    video: str,
    audio: str,
    threshold: float = THRESHOLD,
    control_limit: float = CONTROL_LIMIT,
) -> Report:
    evidence = (
        f"correlation {result.score:.3f} at lag {result.lag:+d} frames "
        f"(mouth opening vs loudness, best within +-{MAX_LAG})",
        f"control (audio rotated by half its length): {result.control:.3f}",
        f"mouth measured in {result.measured} of {result.frames} frames at {result.fps:g} fps",
    )
    findings: list[Finding] = []
    if result.measured < MIN_FACE_FRAMES or not math.isfinite(result.score):
        findings.append(
            Finding(
                "sync-no-mouth",
                Severity.FAIL,
                f"a mouth was measured in only {result.measured} of {result.frames} frames "
                f"(at least {MIN_FACE_FRAMES} are needed): no score",
                evidence,
                "check that the video shows a frontal face (>= ~24 px wide)",
                video,
            )
        )
    elif result.score < threshold:
        findings.append(
            Finding(
                "sync-low",
                Severity.FAIL,
                f"the mouth does not follow the audio: {result.score:.2f} < {threshold:g}",
                evidence,
                "check that the video was generated from this audio; compare with the "
                "template alone (its own mouth motion) and with --generator wav2lip",
                video,
            )
        )
    else:
        findings.append(
            Finding(
                "sync-ok",
                Severity.OK,
                f"the mouth follows the audio: {result.score:.2f} >= {threshold:g}",
                evidence,
                None,
                video,
            )
        )
    if math.isfinite(result.control) and result.control >= control_limit:
        findings.append(
            Finding(
                "sync-control-high",
                Severity.WARN,
                f"the control scores {result.control:.2f} (>= {control_limit:g}): the mouth "
                "moves with any speech-like rhythm, the score may be chance",
                evidence[1:2],
                "use a longer audio, or one whose loudness varies more",
                video,
            )
        )
    return Report(
        "sync-score",
        "lip-sync score",
        tuple(findings),
        details={"video": video, "audio": audio, "threshold": threshold, **result.to_dict()},
    )
