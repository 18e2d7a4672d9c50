"""Run the golden scenarios through the real pipeline and fingerprint every step.

The pipeline runs unmodified; a subclass only keeps what its named steps returned (the
mel and activity of ``audio_features``, the face plan of ``plan_template``, the runner of
``load``) and, for rehearsals, perturbs one of them. Everything is computed on CPU with
one thread per consumer and a lossless H.264 output, so two runs of the same libraries
are bit-identical and the composite metrics see pixels, not encoder noise.
"""

from __future__ import annotations

import hashlib
import logging
import math
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from diagnostics.regress_metrics import encode_png
from diagnostics.regress_scenarios import (
    GOLDEN_OPTIONS,
    SCENARIOS,
    SEEDED_BATCH,
    Perturbation,
    Scenario,
)
from heygem.audio import features
from heygem.batches import FrameTiming
from heygem.config import BackendName, DeviceName, GenerateOptions
from heygem.face.template import TemplatePlan
from heygem.generators.graphs import GeneratorSpec
from heygem.generators.runtime import BackendInfo, GraphRunner, graph_faces
from heygem.media.audio import decode_audio_mono
from heygem.media.frames import iter_template_frames, planes
from heygem.pipeline import AudioFeatures, Inputs, Pipeline
from heygem.resources import ThreadBudget

__all__ = ["RunSettings", "run_fingerprints"]

log = logging.getLogger(__name__)

# One thread everywhere: reduction order (ORT, torch) and x264 slicing then do not depend
# on the machine's core count.
BUDGET = ThreadBudget(cpus=1, generator=GOLDEN_OPTIONS.generator, model_threads=1, x264_threads=1)
SEEDED_BATCH_SIZE, SEEDED_BATCH_SEED = 2, 0
MEL_HASH_QUANTUM = 0.05
OUT_HASH_QUANTUM = 1e-3
ENVELOPE_HOP = 16  # samples at 16 kHz: 1 ms resolution for the A/V offset
MAX_AV_LAG_MS = 250
MAX_LIP_LAG = 4  # frames


@dataclass(frozen=True)
class RunSettings:
    backend: BackendName = "onnxruntime"
    device: DeviceName = "cpu"

    def options(self, cache_dir: Path) -> GenerateOptions:
        return GOLDEN_OPTIONS.with_changes(
            backend=self.backend, device=self.device, cache_dir=cache_dir
        )


def _r(value: float) -> float:
    """Six significant digits: far below every tolerance, and stable JSON."""
    return float(f"{float(value):.6g}")


def _rs(values: Iterable[float]) -> list[float]:
    return [_r(v) for v in values]


def _quantised_hash(array: np.ndarray, quantum: float) -> str:
    steps = np.round(np.asarray(array, dtype=np.float64) / quantum).astype(np.int64)
    digest = hashlib.blake2b(steps.tobytes(), digest_size=8).hexdigest()
    return f"q{quantum:g}:{digest}"


# --- the capturing pipeline -----------------------------------------------------------
class _PerturbedRunner:
    """A GraphRunner whose outputs are shifted by ``amount`` (the generate rehearsal)."""

    def __init__(self, runner: GraphRunner, amount: float) -> None:
        self._runner, self._amount = runner, amount
        self.info: BackendInfo = runner.info

    def run(self, face: np.ndarray, mel: np.ndarray) -> np.ndarray:
        out = self._runner.run(face, mel)
        return np.clip(out + self._amount, 0.0, 1.0).astype(out.dtype)


class CapturingPipeline(Pipeline):
    """The pipeline, keeping the results of its named steps for fingerprinting."""

    def __init__(self, options: GenerateOptions, perturb: Perturbation | None = None) -> None:
        super().__init__(options, BUDGET)
        self.perturb = perturb
        self.inputs: Inputs | None = None
        self.features: AudioFeatures | None = None
        self.plan: TemplatePlan | None = None

    def _amount(self, step: str) -> float | None:
        return self.perturb.amount if self.perturb and self.perturb.step == step else None

    def load(self) -> tuple[GraphRunner, GeneratorSpec]:
        runner, spec = super().load()
        amount = self._amount("generate")
        return (runner if amount is None else _PerturbedRunner(runner, amount)), spec

    def check_inputs(self, audio: Path, video: Path, output: Path) -> Inputs:
        self.inputs = super().check_inputs(audio, video, output)
        return self.inputs

    def audio_features(self, inputs: Inputs) -> AudioFeatures:
        feats = super().audio_features(inputs)
        if (amount := self._amount("audio_features")) is not None:
            mel = np.clip(feats.mel + amount, -features.MAX_ABS, features.MAX_ABS)
            feats = replace(feats, mel=mel.astype(feats.mel.dtype))
        self.features = feats
        return feats

    def plan_template(
        self, inputs: Inputs, spec: GeneratorSpec, on_progress: Callable[[int], None] | None = None
    ) -> TemplatePlan:
        plan = super().plan_template(inputs, spec, on_progress)
        if (amount := self._amount("face_track")) is not None:
            shift = 2 * round(amount / 2)
            regions = plan.regions.copy()
            regions[plan.valid, 0::2] = np.clip(regions[plan.valid, 0::2] + shift, 0, plan.width)
            plan = replace(plan, regions=regions)
        self.plan = plan
        return plan


# --- inputs ---------------------------------------------------------------------------
def build_inputs(scenario: Scenario, directory: Path) -> tuple[Path, Path]:
    """Write the scenario's speech WAV and template (lossless video or PNG)."""
    from heygem.audio.synth import synth_speech
    from heygem.demo import iter_template_frames as portrait_frames
    from heygem.demo import write_wav

    directory.mkdir(parents=True, exist_ok=True)
    audio = write_wav(
        directory / "speech.wav", synth_speech(scenario.audio_seconds, seed=scenario.seed)
    )
    frames = list(portrait_frames(scenario.template_seconds, size=scenario.size))
    if scenario.template == "still":
        video = directory / "still.png"
        cv2.imwrite(str(video), frames[0])
        return audio, video
    if scenario.gap is not None:
        start, stop = scenario.gap
        for i in range(start, min(stop, len(frames))):
            frames[i] = np.full_like(frames[i], 128)
    return audio, write_lossless_video(directory / "template.mp4", frames)


def bgr_to_i420(frame: np.ndarray) -> np.ndarray:
    """BT.601 limited-range I420 in integer arithmetic (the classic 8-bit formulas).

    Done here rather than by the encoder because swscale's rounding differs between
    PyAV/FFmpeg releases (1 level in ~0.4 % of pixels between PyAV 12 and 18), and Haar
    boxes move with it: the test inputs must not depend on the encoder's version.
    """
    b, g, r = (frame[..., i].astype(np.int32) for i in range(3))
    y = ((66 * r + 129 * g + 25 * b + 128) >> 8) + 16
    u = ((-38 * r - 74 * g + 112 * b + 128) >> 8) + 128
    v = ((112 * r - 94 * g - 18 * b + 128) >> 8) + 128
    h, w = y.shape

    def half(plane: np.ndarray) -> np.ndarray:
        blocks = plane.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
        return np.asarray((blocks + 2) >> 2)

    packed = np.concatenate([y.reshape(-1), half(u).reshape(-1), half(v).reshape(-1)])
    return np.clip(packed, 0, 255).astype(np.uint8).reshape(h * 3 // 2, w)


def write_lossless_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    """H.264 at crf 0 (lossless): decoding gives back exactly the I420 planes written."""
    h, w = frames[0].shape[:2]
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "0", "threads": "1"}
        for frame in frames:
            packets = stream.encode(
                av.VideoFrame.from_ndarray(bgr_to_i420(frame), format="yuv420p")
            )
            out.mux(packets)
        out.mux(stream.encode(None))
    return path


def _lumas(frames: Iterable[av.VideoFrame]) -> list[np.ndarray]:
    return [planes(frame)[0].copy() for frame in frames]


def _decode_lumas(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [
            frame.to_ndarray(format="yuv420p")[: frame.height].copy()
            for frame in container.decode(video=0)
        ]


# --- fingerprints per step -----------------------------------------------------------
def inputs_fingerprint(wav: np.ndarray, template: list[np.ndarray]) -> dict[str, Any]:
    h, w = template[0].shape
    return {
        "audio.samples": int(wav.size),
        "audio.rms": _r(np.sqrt(np.mean(wav.astype(np.float64) ** 2))),
        "audio.peak": _r(np.max(np.abs(wav))),
        "template.frames": len(template),
        "template.size": [w, h],
        "template.luma_mean": _rs(float(y.mean()) for y in template),
        "template.luma_std": _rs(float(y.std()) for y in template),
        "template.hash": hashlib.blake2b(np.stack(template).tobytes(), digest_size=8).hexdigest(),
    }


def audio_fingerprint(feats: AudioFeatures) -> dict[str, Any]:
    mel = feats.mel
    energy = [features.mel_window(mel, i, feats.fps).mean() for i in range(feats.n_frames)]
    return {
        "frames": feats.n_frames,
        "fps": _r(feats.fps),
        "mel.shape": list(mel.shape),
        "mel.mean": _r(mel.mean()),
        "mel.std": _r(mel.std()),
        "mel.min": _r(mel.min()),
        "mel.max": _r(mel.max()),
        "mel.band_profile": _rs(mel.mean(axis=1)),
        "mel.frame_energy": _rs(energy),
        "mel.hash": _quantised_hash(mel, MEL_HASH_QUANTUM),
        "activity": "".join("1" if a else "0" for a in feats.active),
    }


def face_fingerprint(plan: TemplatePlan, crops: np.ndarray) -> dict[str, Any]:
    """Regions per template frame, and the model-sized crops at the sampled frames (the
    generator's input: their changes belong to this step, not to the generator)."""
    regions = np.where(plan.valid[:, None], plan.regions, 0)
    fingerprint: dict[str, Any] = {
        "template_frames": plan.n_frames,
        "valid": "".join("1" if v else "0" for v in plan.valid),
        "regions": regions.astype(int).tolist(),
    }
    if crops.size:
        fingerprint["crops.blocks"] = _rs(_block_means(crops.transpose(0, 3, 1, 2), 8).reshape(-1))
        fingerprint["crops.hash"] = hashlib.blake2b(crops.tobytes(), digest_size=8).hexdigest()
    return fingerprint


def _block_means(images: np.ndarray, grid: int) -> np.ndarray:
    """[B,C,S,S] -> [B,C,grid,grid] means of equal square blocks."""
    b, c, s, _ = images.shape
    k = s // grid
    cut = images[:, :, : k * grid, : k * grid].astype(np.float64)
    return cut.reshape(b, c, grid, k, grid, k).mean(axis=(3, 5))


def generator_fingerprint(face: np.ndarray, out: np.ndarray, grid: int) -> dict[str, Any]:
    """``face``/``out`` [B,3,S,S] 0..1; block means on a ``grid`` x ``grid`` raster."""
    blocks = _block_means(out, grid)
    edit = np.abs(out.astype(np.float64) - face).mean(axis=(1, 2, 3))
    return {
        "shape": list(out.shape),
        "mean": _r(out.mean()),
        "std": _r(out.std()),
        "min": _r(out.min()),
        "max": _r(out.max()),
        "edit": _rs(edit),
        "blocks": _rs(blocks.reshape(-1)),
        "hash": _quantised_hash(out, OUT_HASH_QUANTUM),
    }


def seeded_batch_fingerprint(runner: GraphRunner, spec: GeneratorSpec) -> dict[str, Any]:
    from heygem.generators.export import example_inputs
    from heygem.generators.graphs import build_graph

    graph, _ = build_graph(spec.name, None)  # for its example condition (no weights read)
    face, condition = example_inputs(
        spec.crop.size, batch=SEEDED_BATCH_SIZE, seed=SEEDED_BATCH_SEED, graph=graph
    )
    out = runner.run(face.numpy(), condition.numpy())
    return generator_fingerprint(face.numpy(), out, grid=16)


def sampled_inputs(
    plan: TemplatePlan,
    feats: AudioFeatures,
    timing: FrameTiming,
    spec: GeneratorSpec,
    samples: tuple[int, ...],
    workdir: Path,
) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
    """The sampled output frames that have a face: the template crops they show
    [B,S,S,3] uint8, and what the pipeline's dataset fed the generator for them (its
    crops [B,S,S,3] uint8: for ``rewrite`` the chosen, aligned mouths; and the
    conditions: mel windows or mouth controls)."""
    from heygem.generators.samples import generator_samples

    indices = [i for i in samples if i < feats.n_frames and plan.valid[timing.template_frame(i)]]
    crops = np.load(plan.crops_path, mmap_mode="r")
    shown = np.zeros((0, *crops.shape[1:]), np.uint8)
    if not indices:
        return indices, shown, shown, np.zeros((0,), np.float32)
    shown = np.stack([np.asarray(crops[timing.template_frame(i)]) for i in indices])
    dataset = generator_samples(
        spec, plan, feats.mel, feats.active, feats.loudness_db, timing, workdir
    )
    items = [dataset[i] for i in indices]
    faces = np.stack([np.asarray(item[1]) for item in items])
    condition = np.stack([np.asarray(item[2]) for item in items])
    return indices, shown, faces, np.ascontiguousarray(condition, dtype=np.float32)


def samples_fingerprint(
    runner: GraphRunner, indices: list[int], crops: np.ndarray, condition: np.ndarray
) -> dict[str, Any]:
    """The generator on the scenario's own inputs at the sampled frames."""
    if not indices:
        return {"indices": []}
    face = graph_faces(crops)
    out = runner.run(face, condition)
    return {"indices": indices, **generator_fingerprint(face, out, grid=8)}


def _change(out: np.ndarray, template: np.ndarray, region: tuple[int, ...] | None) -> float:
    if region is not None:
        x0, y0, x1, y1 = region
        out, template = out[y0:y1, x0:x1], template[y0:y1, x0:x1]
    return float(np.abs(out.astype(np.int16) - template.astype(np.int16)).mean())


def composite_fingerprint(
    output: list[np.ndarray],
    template: list[np.ndarray],
    plan: TemplatePlan,
    timing: FrameTiming,
    samples: tuple[int, ...],
) -> dict[str, Any]:
    def region(i: int) -> tuple[int, ...] | None:
        t = timing.template_frame(i)
        return tuple(int(v) for v in plan.regions[t]) if plan.valid[t] else None

    change = [
        _change(y, template[timing.template_frame(i)], region(i)) for i, y in enumerate(output)
    ]
    frames = []
    for i in (s for s in samples if s < len(output)):
        y, box = output[i], region(i)
        mouth = None if box is None else y[box[1] : box[3], box[0] : box[2]]
        full = cv2.resize(y, (y.shape[1] // 4, y.shape[0] // 4), interpolation=cv2.INTER_AREA)
        frames.append(
            {
                "index": i,
                "template_frame": timing.template_frame(i),
                "region": None if box is None else list(box),
                "mouth": None if mouth is None else {"png": encode_png(mouth)},
                "full": {"png": encode_png(full)},
            }
        )
    digest = hashlib.blake2b(digest_size=8)
    for y in output:
        digest.update(y.tobytes())
    return {"change": _rs(change), "frames": frames, "luma_hash": digest.hexdigest()}


def _envelope(wav: np.ndarray, hop: int = ENVELOPE_HOP) -> np.ndarray:
    """RMS per ``hop`` samples, smoothed over 5 hops: robust to AAC's phase changes."""
    n = wav.size // hop
    rms = np.sqrt((wav[: n * hop].astype(np.float64) ** 2).reshape(n, hop).mean(axis=1))
    return np.convolve(rms, np.ones(5) / 5, mode="same")


def best_lag(reference: np.ndarray, delayed: np.ndarray, max_lag: int) -> float:
    """Lag (in samples of the inputs) by which ``delayed`` follows ``reference``: the peak
    of their normalised cross-correlation, refined by a parabola to a fraction."""
    n = min(reference.size, delayed.size)
    a, b = reference[:n] - reference[:n].mean(), delayed[:n] - delayed[:n].mean()
    scores = []
    for lag in range(-max_lag, max_lag + 1):
        x, y = (a[: n - lag], b[lag:]) if lag >= 0 else (a[-lag:], b[: n + lag])
        denom = math.sqrt(float((x * x).sum() * (y * y).sum())) or 1.0
        scores.append(float((x * y).sum()) / denom)
    k = int(np.argmax(scores))
    offset = 0.0
    if 0 < k < len(scores) - 1:
        left, mid, right = scores[k - 1], scores[k], scores[k + 1]
        curvature = left - 2 * mid + right
        offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    return k - max_lag + offset


def mux_fingerprint(
    output: Path, wav: np.ndarray, feats: AudioFeatures, change: list[float], valid_out: np.ndarray
) -> dict[str, Any]:
    with av.open(str(output)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        fps = float(video.average_rate or 0)
        frames = sum(1 for _ in container.decode(video=0))
        # Stream durations and starts honour the MP4 edit list (AAC priming), as players do.
        audio_seconds = _seconds(audio.duration, audio.time_base)
        start_gap = _seconds(audio.start_time, audio.time_base) - _seconds(
            video.start_time, video.time_base
        )
    decoded = decode_audio_mono(output)
    lag = best_lag(_envelope(wav), _envelope(decoded), MAX_AV_LAG_MS)  # 1 ms per step
    loudness = np.where(valid_out, _frame_rms(wav, feats), 0.0)
    motion = np.where(valid_out, np.asarray(change), 0.0)
    return {
        "frames": frames,
        "fps": _r(fps),
        "video_seconds": _r(frames / fps) if fps else 0.0,
        "audio_seconds": _r(audio_seconds),
        "av_offset_ms": _r(round(lag + 1000.0 * start_gap, 2)),
        "lip_lag_frames": _r(round(best_lag(loudness, motion, MAX_LIP_LAG), 2)),
    }


def _frame_rms(wav: np.ndarray, feats: AudioFeatures) -> np.ndarray:
    """Linear RMS of the input speech per output frame (the pipeline's own framing)."""
    track = features.voice_activity(wav, feats.n_frames, feats.fps)
    return np.asarray(10.0 ** (track.loudness_db.astype(np.float64) / 20.0))


def _seconds(value: int | None, time_base: Any) -> float:
    return float(value * time_base) if value is not None and time_base is not None else 0.0


# --- running --------------------------------------------------------------------------
def run_scenario(
    pipeline: CapturingPipeline, scenario: Scenario, workdir: Path
) -> dict[str, dict[str, Any]]:
    audio, video = build_inputs(scenario, workdir / scenario.name)
    output = workdir / scenario.name / "out.mp4"
    pipeline.generate(audio, video, output, job_id=f"regress-{scenario.name}")
    inputs, feats, plan = pipeline.inputs, pipeline.features, pipeline.plan
    # Set by the steps generate just ran.
    assert inputs is not None and feats is not None and plan is not None
    runner, spec = pipeline.load()
    wav = decode_audio_mono(audio)
    template = _lumas(iter_template_frames(video, plan.width, plan.height))
    timing = FrameTiming(feats.n_frames, feats.fps, inputs.video.fps, plan.n_frames)
    indices, crops, faces, condition = sampled_inputs(
        plan, feats, timing, spec, scenario.samples, workdir / scenario.name
    )
    out_lumas = _decode_lumas(output)
    composite = composite_fingerprint(out_lumas, template, plan, timing, scenario.samples)
    valid_out = np.array([plan.valid[timing.template_frame(i)] for i in range(feats.n_frames)])
    return {
        "inputs": inputs_fingerprint(wav, template),
        "audio_features": audio_fingerprint(feats),
        "face_track": face_fingerprint(plan, crops),
        "generate": samples_fingerprint(runner, indices, faces, condition),
        "composite": composite,
        "mux": mux_fingerprint(output, wav, feats, composite["change"], valid_out),
        "lip_sync": lip_sync_fingerprint(output, audio),
    }


def lip_sync_fingerprint(output: Path, audio: Path) -> dict[str, Any]:
    """The landmark-based sync score of the output against its audio (diagnostics.
    syncscore): whether the mouth follows the voice, beyond pixel fingerprints."""
    from diagnostics.syncscore import sync_score

    score = sync_score(output, audio)
    return {
        "score": _r(score.score),
        "control": _r(score.control),
        "measured_frames": score.measured,
    }


def run_fingerprints(
    names: tuple[str, ...],
    settings: RunSettings,
    *,
    perturb: Perturbation | None = None,
    workdir: Path | None = None,
    on_scenario: Callable[[str], None] | None = None,
) -> tuple[dict[str, dict[str, dict[str, Any]]], BackendInfo]:
    """Fingerprints of the named scenarios: {scenario: {step: {metric: value}}}."""
    with tempfile.TemporaryDirectory(prefix="heygem-regress-", dir=workdir) as tmp:
        pipeline = CapturingPipeline(settings.options(Path(tmp) / "cache"), perturb)
        runner, spec = pipeline.load()
        results: dict[str, dict[str, dict[str, Any]]] = {}
        for name in names:
            if on_scenario is not None:
                on_scenario(name)
            if name == SEEDED_BATCH:
                results[name] = {"generate": seeded_batch_fingerprint(runner, spec)}
                continue
            scenario = next(s for s in SCENARIOS if s.name == name)
            log.info("regression scenario %s: %s", name, scenario.description)
            results[name] = run_scenario(pipeline, scenario, Path(tmp))
        return results, runner.info
