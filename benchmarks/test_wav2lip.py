"""The Wav2Lip network alone: ms a frame per thread split, runtime and precision.

The baseline is a reference-style forward, measured first in the same run: the whole
published model in plain PyTorch at batch 128 with torch's default threads (all usable
CPUs), on the 6-channel input the reference builds (lower half zeroed + the crop, /255),
the way the reference ``inference.py`` runs it. Every split is reported as ms/frame and
as a speedup over that forward. Inputs are real template crops and mel windows.

Precision: bf16 (the ``--precision bf16`` option, torch) and static int8 QDQ (ONNX
Runtime, calibrated on the template's crops; measured, not offered) against fp32 on
held-out crops: PSNR/SSIM of the 8-bit outputs, with the regression tolerance
(``composite`` frames: 40 dB / SSIM 0.98) as the bar a default would have to clear.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

from benchmarks.precision import calibrated_checkpoint, model_inputs, quantize_int8
from benchmarks.support import SMOKE, Baselines, Media, Models, Pipelines, best_of, pedantic
from heygem.cgroups import usable_cpus
from heygem.resources import ThreadBudget

if TYPE_CHECKING:
    from heygem.generators.runtime import FaceFeatureOrtRunner

# Whole processes and whole models take minutes on 2 shared cores (pytest's default: 300 s).
pytestmark = pytest.mark.timeout(1800)
REF_BATCH = 4 if SMOKE else 128
BATCH = 2 if SMOKE else 16  # the pipeline's default batch size
FRAMES = 4 if SMOKE else 64  # frames per timed round of a split
TEMPLATE = ((256, 256) if SMOKE else (720, 528), 1.0 if SMOKE else 10.0)
REGRESSION_BAR = (40.0, 0.98)  # dB, SSIM: diagnostics.regress_metrics "composite" frames

Run = Callable[[np.ndarray, np.ndarray], np.ndarray]


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def crops(media: Media, pipelines: Pipelines) -> np.ndarray:
    """The template's model crops (96x96 BGR), as the pipeline cuts them."""
    size, seconds = TEMPLATE
    template = media.template_sized(*size, seconds)
    pipeline = pipelines.get(generator="wav2lip")
    _, spec = pipeline.load()
    inputs = pipeline.check_inputs(media.speech(2.0), template, media.output("w2l-crops"))
    plan = pipeline.plan_template(inputs, spec)
    return np.asarray(np.load(plan.crops_path))[plan.valid]


@pytest.fixture(scope="module")
def batch_inputs(crops: np.ndarray, media: Media) -> dict[str, np.ndarray]:
    return model_inputs(crops, media.speech(4.0, seed=5), FRAMES)


def _throughput(run: Run, inputs: dict[str, np.ndarray], batch: int, streams: int) -> int:
    face, mel = inputs["face"], inputs["mel"]
    batches = [(face[i : i + batch], mel[i : i + batch]) for i in range(0, len(face), batch)]
    if streams == 1:
        outs = [run(f, m) for f, m in batches]
    else:  # as the pipeline's generate stage: batches at once on helper threads
        with ThreadPoolExecutor(streams) as pool:
            outs = list(pool.map(lambda b: run(*b), batches))
    return sum(len(o) for o in outs)


def _reference_ms(baselines: Baselines, models: Models, inputs: dict[str, np.ndarray]) -> float:
    def measure() -> float:
        import time

        import torch

        from heygem.generators.wav2lip import load_wav2lip_checkpoint

        checkpoint = models.checkpoint("wav2lip")
        assert checkpoint is not None
        torch.set_num_threads(usable_cpus())  # torch's default: every CPU
        model = load_wav2lip_checkpoint(checkpoint)
        reps = -(-REF_BATCH // len(inputs["face"]))
        face = np.concatenate([inputs["face"]] * reps)[:REF_BATCH]
        masked = face.copy()
        masked[:, :, face.shape[2] // 2 :] = 0.0
        face6 = torch.from_numpy(np.concatenate([masked, face], axis=1))
        mel = torch.from_numpy(np.concatenate([inputs["mel"]] * reps)[:REF_BATCH])
        times = []
        for _ in range(1 if SMOKE else 2):
            start = time.perf_counter()
            with torch.no_grad():
                model(mel, face6)
            times.append(time.perf_counter() - start)
        return min(times) / REF_BATCH * 1000.0

    value: float = baselines.get("w2l:reference_ms", measure)
    return value


@pytest.mark.benchmark(group="wav2lip")
def test_reference_style_forward(
    benchmark: Any, baselines: Baselines, models: Models, batch_inputs: dict[str, np.ndarray]
) -> None:
    samples = pedantic(
        benchmark, lambda: _reference_ms(baselines, models, batch_inputs), n_rounds=1
    )
    benchmark.extra_info.update(
        kind="w2l_split",
        runtime="torch (reference-style)",
        precision="fp32",
        split=f"1 batch x {usable_cpus()} threads",
        batch=REF_BATCH,
        per_frame_ms=round(samples.last, 2),
        speedup=1.0,
        budget=False,
    )


# (runtime, precision, streams, intra-op threads); "onnxruntime-cached": the face
# encoder's features read from the template cache (a repeat template), the rest run.
SPLITS = [
    ("onnxruntime", "fp32", 1, 1),
    ("onnxruntime", "fp32", 1, 2),
    ("onnxruntime", "fp32", 2, 1),
    ("onnxruntime-cached", "fp32", 2, 1),
    ("torch", "fp32", 1, 2),
    ("torch", "fp32", 2, 1),
    ("torch", "bf16", 2, 1),
    ("onnxruntime", "int8", 2, 1),
]


def _runner(models: Models, runtime: str, precision: str, threads: int, int8: Path) -> Run:
    from heygem.generators.graphs import build_graph
    from heygem.generators.runtime import OrtRunner, TorchRunner

    if runtime == "torch":
        graph, _ = build_graph("wav2lip", models.checkpoint("wav2lip"))
        return TorchRunner(graph, "cpu", threads, False, precision=precision).run
    path = int8 if precision == "int8" else models.onnx_path("wav2lip")
    return OrtRunner(path, "cpu", threads, False).run


def _face_feature_runner(models: Models, threads: int) -> FaceFeatureOrtRunner:
    """The two halves the pipeline runs on ONNX Runtime (heygem.generators.face_features)."""
    from heygem.generators.loader import prepare_generator
    from heygem.generators.runtime import FaceFeatureOrtRunner

    models.runner("wav2lip", "onnxruntime")  # exported on first use
    prepared = prepare_generator(
        "wav2lip",
        models.checkpoint("wav2lip"),
        backend="onnxruntime",
        cache_dir=models.onnx_dir.parent,
    )
    assert prepared.onnx is not None and prepared.onnx.face_split is not None
    return FaceFeatureOrtRunner(*prepared.onnx.face_split, "cpu", threads, False)


@pytest.fixture(scope="module")
def int8_model(models: Models, media: Media, crops: np.ndarray) -> Path:
    """Static int8 of the benchmark checkpoint, calibrated on 32 of the template's crops."""
    calibration = model_inputs(crops, media.speech(4.0, seed=5), 8 if SMOKE else 32, offset=3)
    return quantize_int8(models.onnx_path("wav2lip"), calibration, media.root / "w2l-int8.onnx")


@pytest.mark.benchmark(group="wav2lip")
@pytest.mark.parametrize(
    ("runtime", "precision", "streams", "threads"),
    SPLITS,
    ids=[f"{r}-{p}-{s}x{t}" for r, p, s, t in SPLITS],
)
def test_split(
    benchmark: Any,
    baselines: Baselines,
    models: Models,
    batch_inputs: dict[str, np.ndarray],
    int8_model: Path,
    runtime: str,
    precision: str,
    streams: int,
    threads: int,
) -> None:
    reference = _reference_ms(baselines, models, batch_inputs)
    inputs = batch_inputs
    if runtime == "onnxruntime-cached":
        split = _face_feature_runner(models, threads)
        inputs = {**batch_inputs, "face": split.encode(batch_inputs["face"])}  # untimed
        run: Run = split.decode
    else:
        run = _runner(models, runtime, precision, threads, int8_model)
    run(inputs["face"][:BATCH], inputs["mel"][:BATCH])  # first run allocates
    samples = pedantic(benchmark, lambda: _throughput(run, inputs, BATCH, streams), n_rounds=3)
    per_frame = samples.best / samples.last * 1000.0
    budget = ThreadBudget.for_machine(generator="wav2lip")
    benchmark.extra_info.update(
        kind="w2l_split",
        runtime=runtime,
        precision=precision,
        split=f"{streams} batch(es) x {threads} thread(s)",
        batch=BATCH,
        per_frame_ms=round(per_frame, 2),
        per_frame_ms_median=round(statistics.median(samples.wall) / samples.last * 1000.0, 2),
        speedup=round(reference / per_frame, 2),
        # The split (and runtime/precision) the pipeline uses for Wav2Lip by default.
        budget=bool(
            (streams, threads) == (budget.model_streams, budget.model_threads)
            and runtime == "onnxruntime-cached"
            and precision == "fp32"
        ),
    )


def _psnr_ssim(reference: np.ndarray, other: np.ndarray) -> tuple[list[float], list[float]]:
    from diagnostics.regress_metrics import psnr, ssim

    def u8(x: np.ndarray) -> np.ndarray:
        return np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)

    a, b = u8(reference), u8(other)
    return [psnr(x, y) for x, y in zip(a, b, strict=True)], [
        ssim(x, y) for x, y in zip(a, b, strict=True)
    ]


@pytest.mark.benchmark(group="wav2lip")
@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_precision_quality(
    benchmark: Any, models: Models, media: Media, crops: np.ndarray, precision: str
) -> None:
    """Outputs vs fp32 on held-out crops, with a checkpoint of realistic activation scale
    (benchmarks/precision.py); speed as ms/frame vs fp32 ORT at the pipeline's split."""
    from heygem.generators.graphs import build_graph
    from heygem.generators.loader import load_generator
    from heygem.generators.runtime import TorchRunner

    audio = media.speech(4.0, seed=5)
    calibrate = model_inputs(crops, audio, 8 if SMOKE else 48, offset=1)
    held_out = model_inputs(crops, audio, FRAMES, offset=4)
    source = models.checkpoint("wav2lip")
    assert source is not None
    checkpoint = calibrated_checkpoint(source, calibrate, media.root / "w2l-bn.pth")
    budget = ThreadBudget.for_machine(generator="wav2lip")
    cache = media.root / "precision-cache"
    fp32, _ = load_generator(
        "wav2lip", checkpoint, backend="onnxruntime", device="cpu",
        threads=budget.model_threads, require_gpu=False, cache_dir=cache,
    )  # fmt: skip
    if precision == "bf16":
        graph, _ = build_graph("wav2lip", checkpoint)
        low: Run = TorchRunner(graph, "cpu", budget.model_threads, False, precision="bf16").run
    else:
        from heygem.generators.loader import export_paths
        from heygem.generators.runtime import OrtRunner

        onnx = export_paths("wav2lip", checkpoint, cache).onnx
        int8 = quantize_int8(onnx, calibrate, media.root / "w2l-bn-int8.onnx")
        low = OrtRunner(int8, "cpu", budget.model_threads, False).run
    reference = fp32.run(held_out["face"], held_out["mel"])
    psnrs, ssims = _psnr_ssim(reference, low(held_out["face"], held_out["mel"]))
    streams = budget.model_streams
    low(held_out["face"][:BATCH], held_out["mel"][:BATCH])
    samples = pedantic(benchmark, lambda: _throughput(low, held_out, BATCH, streams), n_rounds=3)
    base = best_of(3, lambda: _throughput(fp32.run, held_out, BATCH, streams))
    out_std = float(reference.std())
    benchmark.extra_info.update(
        kind="w2l_precision",
        precision=precision,
        runtime="torch" if precision == "bf16" else "onnxruntime",
        checkpoint="real" if checkpoint != media.root / "w2l-bn.pth" else "bn-calibrated",
        output_std=round(out_std, 3),
        psnr_min=round(min(psnrs), 1),
        psnr_median=round(statistics.median(psnrs), 1),
        ssim_min=round(min(ssims), 4),
        ssim_median=round(statistics.median(ssims), 4),
        within_regression_tolerance=bool(
            min(psnrs) >= REGRESSION_BAR[0] and min(ssims) >= REGRESSION_BAR[1]
        ),
        speedup_vs_fp32=round(base / samples.best, 2),
        offered=precision == "bf16",
    )


@pytest.mark.benchmark(group="wav2lip")
def test_face_encoder_share(
    benchmark: Any, models: Models, batch_inputs: dict[str, np.ndarray]
) -> None:
    """How much a per-template cache of the face encoder's features could save: its
    share of the network's time (one thread, torch, the pipeline's batch)."""
    import torch

    from heygem.generators.wav2lip import load_wav2lip_checkpoint

    torch.set_num_threads(1)
    model = load_wav2lip_checkpoint(models.checkpoint("wav2lip"))  # type: ignore[arg-type]
    face = torch.from_numpy(batch_inputs["face"][:BATCH])
    face6 = torch.cat([face * 0.0, face], dim=1)
    mel = torch.from_numpy(batch_inputs["mel"][:BATCH])

    def encoder() -> None:
        with torch.inference_mode():
            x = face6
            for block in model.face_encoder_blocks:
                x = block(x)

    def whole() -> None:
        with torch.inference_mode():
            model(mel, face6)

    whole()
    samples = pedantic(benchmark, encoder, n_rounds=3)
    whole_s = best_of(3, whole)
    benchmark.extra_info.update(
        kind="w2l_face_encoder",
        batch=BATCH,
        encoder_ms=round(samples.best / BATCH * 1000.0, 2),
        whole_ms=round(whole_s / BATCH * 1000.0, 2),
        share=round(samples.best / whole_s, 3),
    )
