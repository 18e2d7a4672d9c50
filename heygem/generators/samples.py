"""The DataLoader dataset a generator reads: what each output frame feeds the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from heygem.batches import FrameSamples, FrameTiming, SampleSource
from heygem.config import FaultInjection
from heygem.face.template import TemplatePlan
from heygem.generators.spec import GeneratorSpec


def generator_samples(
    spec: GeneratorSpec,
    plan: TemplatePlan,
    mel: np.ndarray,
    active: np.ndarray,
    loudness_db: np.ndarray,
    timing: FrameTiming,
    workdir: Path,
    fault: FaultInjection | None = None,
) -> SampleSource:
    """``mel`` generators (Wav2Lip): the shown frame's crop and its mel window.
    ``mouth`` generators (rewrite): the retrieved mouth aligned to the shown frame and the
    renderer's control (the per-job mouth plan is written to ``workdir`` for workers)."""
    if spec.condition == "mel":
        mel_path = workdir / "mel.npy"
        np.save(mel_path, mel)
        return FrameSamples(plan.crops_path, mel_path, timing, fault)
    from heygem.generators.mouths import MouthSamples, plan_mouths, speech_openness

    shown = np.array([timing.template_frame(i) for i in range(timing.n_frames)], dtype=np.int64)
    openness = speech_openness(loudness_db[: timing.n_frames], active)
    mouths = plan_mouths(plan.landmarks, plan.valid, plan.regions, spec.crop.size, openness, shown)
    plan_path = mouths.save(workdir / "mouths.npz")
    return MouthSamples(plan.crops_path, plan_path, shown, fault)
