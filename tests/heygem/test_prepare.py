"""Fast start: what a job imports, the steps it reports, the steps it overlaps.

A job on ONNX Runtime whose model is exported and whose template is cached must not pay
for torch, librosa, scipy or numba at all; every step that can take a second reports
progress; a cancel or a failure during the template analysis ends it early; Wav2Lip's
concurrent batches leave the output exactly as one batch at a time does.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from heygem.audio.synth import synth_speech
from heygem.config import GenerateOptions
from heygem.demo import write_wav
from heygem.errors import Cancelled
from heygem.generators.wav2lip import Wav2Lip, save_wav2lip_checkpoint
from heygem.pipeline import Pipeline
from heygem.progress import StepProgress
from heygem.progress_bars import StepBars
from heygem.resources import ThreadBudget
from tests.helpers import read_gray_frames

HEAVY = ("torch", "librosa", "scipy", "numba")


def test_a_job_imports_no_heavy_library_even_the_first(
    speech_wav: Path, template_mp4: Path, tmp_path: Path
) -> None:
    code = f"""
import json, sys
from heygem.cli import main
code = main(["generate", "-a", {str(speech_wav)!r}, "-i", {str(template_mp4)!r},
             "-o", {str(tmp_path / "out.mp4")!r}, "--cache-dir", {str(tmp_path / "c")!r}, "-q"])
print(json.dumps({{"code": code, "loaded": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""

    def run() -> dict[str, object]:
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
        )
        result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    # The renderer's export ships with the package: not even a first run needs torch.
    assert run() == {"code": 0, "loaded": []}  # empty cache: the template is analysed
    assert run() == {"code": 0, "loaded": []}


def test_every_long_step_reports_progress(
    speech_wav: Path, template_mp4: Path, tmp_path: Path
) -> None:
    pipeline = Pipeline(GenerateOptions(cache_dir=tmp_path / "c", batch_size=8))
    events: list[StepProgress] = []
    lock = threading.Lock()

    def record(progress: StepProgress) -> None:
        with lock:
            events.append(progress)

    result = pipeline.generate(speech_wav, template_mp4, tmp_path / "a.mp4", on_step=record)
    steps = {e.step for e in events}
    assert steps == {"load_model", "audio_features", "template", "generate"}  # export shipped
    for step in steps:
        mine = [e for e in events if e.step == step]
        assert [e.finished for e in mine].count(True) == 1 and mine[-1].finished, step
    template = [e for e in events if e.step == "template"]
    assert template[-1].done == template[-1].total == 50  # every template frame analysed
    assert [e.done for e in template] == sorted(e.done for e in template)
    frames = [e for e in events if e.step == "generate"]
    assert [e.done for e in frames] == list(range(1, result.frames + 1))

    events.clear()  # warm pipeline, cached template: no export, no load, start and end only
    pipeline.generate(speech_wav, template_mp4, tmp_path / "b.mp4", on_step=record)
    assert {e.step for e in events} == {"audio_features", "template", "generate"}
    assert [(e.done, e.finished) for e in events if e.step == "template"] == [
        (0, False),
        (50, True),
    ]


def test_cancel_during_the_template_analysis_ends_it_early(
    speech_wav: Path, template_mp4: Path, tmp_path: Path
) -> None:
    cancel = threading.Event()
    analysed: list[int] = []

    def on_step(progress: StepProgress) -> None:
        if progress.step == "template":
            analysed.append(progress.done)
            if progress.done:  # cancelled once the first frame is analysed
                cancel.set()

    pipeline = Pipeline(GenerateOptions(cache_dir=tmp_path / "c"))
    with pytest.raises(Cancelled, match="template analysis"):
        pipeline.generate(
            speech_wav, template_mp4, tmp_path / "x.mp4", cancel=cancel, on_step=on_step
        )
    assert analysed == [0, 1]  # the start, then one frame: the analysis stopped there
    assert not (tmp_path / "x.mp4").exists()


def test_step_bars_show_long_steps_and_close_them(capsys: pytest.CaptureFixture[str]) -> None:
    with StepBars(show_after=0.0) as bars:
        bars(StepProgress("export_onnx", 0, None))
        bars(StepProgress("template", 3, 10))
        bars(StepProgress("template", 10, 10, finished=True))
        bars(StepProgress("export_onnx", 1, None, finished=True))
    shown = capsys.readouterr().err
    assert "exporting the generator to ONNX" in shown and "analysing the template" in shown
    with StepBars(show_after=60.0) as bars:  # quick steps stay silent
        bars(StepProgress("audio_features", 0, None))
        bars(StepProgress("audio_features", 1, None, finished=True))
    assert capsys.readouterr().err == ""


def test_a_bar_shown_late_starts_at_the_count_already_done(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with StepBars(show_after=0.05) as bars:
        bars(StepProgress("generate", 0, 200))
        time.sleep(0.1)
        bars(StepProgress("generate", 120, 200))  # the bar appears now, 120 frames in
        bars(StepProgress("generate", 200, 200, finished=True))
    shown = capsys.readouterr().err
    assert "120/200" in shown
    assert "0/200" not in shown.replace("120/200", "").replace("200/200", "")


def test_concurrent_wav2lip_batches_keep_the_output_identical(
    template_mp4: Path, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    checkpoint = save_wav2lip_checkpoint(Wav2Lip(), tmp_path / "w2l.pth")
    audio = write_wav(tmp_path / "speech.wav", synth_speech(1.6, seed=3))
    # Lossless (crf 0), so the decoded frames are the composited pixels themselves: lossy
    # x264 output of two identical jobs is not always bit-identical.
    options = GenerateOptions(
        generator="wav2lip",
        checkpoint=checkpoint,
        cache_dir=tmp_path / "c",
        batch_size=4,
        crf=0,
    )
    outputs = []
    for streams in (1, 2):
        budget = ThreadBudget.for_machine(2, generator="wav2lip").with_threads(
            model_streams=streams, model_threads=1, x264_threads=1
        )
        out = tmp_path / f"streams{streams}.mp4"
        Pipeline(options, budget=budget).generate(audio, template_mp4, out)
        outputs.append(read_gray_frames(out))
    assert outputs[0].shape[0] == 40
    np.testing.assert_array_equal(outputs[0], outputs[1])
