"""The benchmark suites stay runnable, and the summary/compare tool reads their JSON.

The real suites are not part of the default run (minutes of work); this runs one of them
on tiny inputs (HEYGEM_BENCH_SMOKE=1: 256x256, 1 s) with timing disabled, in a fresh
interpreter so its session fixtures and thread settings cannot leak into this one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import summary

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_stage_benchmarks_run_on_tiny_inputs(tmp_path: Path) -> None:
    env = {**os.environ, "HEYGEM_BENCH_SMOKE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks/test_stages.py",
        "-q",
        "-p",
        "no:cacheprovider",
        "--benchmark-disable",
        "--basetemp",
        str(tmp_path / "bt"),
        # wav2lip's 36M-parameter export alone takes ~10 s; the code path is the same
        # as rewrite's and the export has tests of its own.
        "-k",
        "not wav2lip",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def _bench(name: str, minimum: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "fullname": f"benchmarks/x.py::{name}",
        "group": None,
        "stats": {
            "min": minimum,
            "median": minimum * 1.1,
            "mean": minimum * 1.1,
            "max": minimum * 1.2,
            "rounds": 2,
        },
        "extra_info": extra,
    }


def _results(path: Path, scale: float, e2e_720: float) -> Path:
    """A hand-made results file; ``scale`` multiplies every time (a slower machine)."""
    benches = [
        _bench(
            "test_transcode_floor[720p]",
            2.0 * scale,
            kind="floor",
            resolution="720p",
            frames=250,
            seconds=2.0 * scale,
            fps=125.0 / scale,
            rtf=0.2 * scale,
        ),
        _bench(
            "test_end_to_end_warm[720p]",
            e2e_720 * scale,
            kind="e2e",
            resolution="720p",
            cache="warm",
            frames=250,
            seconds=e2e_720 * scale,
            fps=61.5,
            rtf=0.41,
            ratio_to_floor=e2e_720 / 2.0,
            ttff_s=0.31,
            peak_rss_mb=512.0,
            job_rss_mb=80.0,
            cpu_util=1.7,
        ),
        _bench(
            "test_decode",
            0.5 * scale,
            kind="stage",
            stage="decode",
            frames=250,
            per_frame_ms=2.0,
            share_of_floor=0.25,
        ),
        _bench(
            "test_generator_batch[rewrite-torch-b8]",
            0.02 * scale,
            kind="generator",
            generator="rewrite",
            backend="torch",
            batch=8,
            fps=400.0,
            ratio_to_ort=1.4,
        ),
        _bench(
            "test_template_cache_second_job",
            4.0 * scale,
            kind="cache",
            resolution="720p",
            ttff_first_s=9.5,
            ttff_second_s=0.4,
            speedup=23.75,
            target=2.0,
            meets_target=True,
        ),
        _bench(
            "test_memory_growth",
            30.0 * scale,
            kind="memory",
            resolution="720p",
            short_audio_s=10.0,
            long_audio_s=60.0,
            rss_short_mb=500.0,
            rss_long_mb=540.0,
            ratio=1.08,
            job_ratio=1.3,
            target=1.2,
            meets_target=True,
        ),
        _bench(
            "test_dataloader_workers[workers2]",
            6.0 * scale,
            kind="workers",
            workers=2,
            start_method="spawn",
            seconds=6.0,
            fps=41.7,
            ratio_to_workers0=1.46,
        ),
        _bench("test_something_unknown", 0.1 * scale),
    ]
    path.write_text(json.dumps({"benchmarks": benches, "machine_info": {}}))
    return path


def test_summary_renders_every_section(tmp_path: Path) -> None:
    results = _results(tmp_path / "r.json", 1.0, 4.1)
    out = tmp_path / "summary.md"
    assert summary.main([str(results), "-o", str(out)]) == 0
    text = out.read_text()
    for heading in (
        "Transcode floor",
        "End to end",
        "Stage timings",
        "Template cache",
        "Memory growth",
        "DataLoader workers",
        "ONNX Runtime vs torch",
        "Other",
    ):
        assert f"## {heading}" in text, heading
    assert "| 720p | warm | 250 |" in text
    assert "23.8x" in text and "PASS" in text  # cache speedup and its verdict
    assert "1.080x" in text  # memory ratio
    assert "test_something_unknown" in text


def test_compare_is_by_ratio_to_the_floor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline = _results(tmp_path / "base.json", 1.0, 4.0)
    # Everything 2x slower (a busier machine): normalised by the floor, nothing regressed.
    slower_machine = _results(tmp_path / "slow.json", 2.0, 4.0)
    assert summary.main([str(slower_machine), "--compare", str(baseline)]) == 0
    # Same machine speed, end to end 1.5x slower: that one benchmark regressed.
    regressed = _results(tmp_path / "bad.json", 1.0, 6.0)
    assert summary.main([str(regressed), "--compare", str(baseline)]) == 1
    printed = capsys.readouterr().out
    assert "| test_end_to_end_warm[720p] | 1.500 | 1.500 | REGRESSED |" in printed
    # Without normalisation the uniformly slower run fails every benchmark.
    assert (
        summary.main([str(slower_machine), "--compare", str(baseline), "--normalize", "none"]) == 1
    )
    assert summary.main([str(regressed), "--compare", str(baseline), "--threshold", "1.6"]) == 0
    # With -o the file holds the summary followed by the comparison (the nox bench session).
    out = tmp_path / "summary.md"
    assert summary.main([str(regressed), "-o", str(out), "--compare", str(baseline)]) == 1
    text = out.read_text()
    assert text.index("## End to end") < text.index("# Benchmark comparison")


def test_summary_rejects_a_file_that_is_not_benchmark_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hello": 1}))
    assert summary.main([str(bad)]) == 2


def test_summary_renders_the_process_and_wav2lip_sections(tmp_path: Path) -> None:
    """Whole processes, Wav2Lip vs the reference, splits, precision, thread budget: the
    medians with their spread and each target's verdict."""
    benches = [
        _bench(
            "test_default_generator_vs_ffmpeg_floor[warm]",
            20.0,
            kind="process",
            generator="rewrite",
            cache="warm",
            heygem_s=3.9,
            ffmpeg_s=3.0,
            ratio_to_floor=1.3,
            ratio_to_floor_min=1.21,
            ratio_to_floor_max=1.42,
            ratio_to_floor_cpu=1.45,
            target=1.5,
            meets_target=True,
        ),
        _bench(
            "test_first_run_on_a_fresh_machine",
            30.0,
            kind="first_run",
            generator="rewrite",
            first_s=8.0,
            second_s=4.0,
            extra_s=4.0,
            extra_s_min=3.5,
            extra_s_max=4.5,
            extra_cpu_s=3.0,
            target=2.0,
            meets_target=False,
        ),
        _bench(
            "test_wav2lip_vs_reference",
            120.0,
            kind="w2l_process",
            template="720x528",
            audio_s=9.5,
            reference_s=28.0,
            repeat={
                "repeat_s": 12.0,
                "speedup": 2.33,
                "speedup_min": 2.1,
                "speedup_max": 2.5,
                "speedup_cpu": 2.0,
                "target": 2.0,
                "meets_target": True,
            },
            unseen={"unseen_s": 14.0, "speedup": 2.0, "target": 1.5, "meets_target": True},
        ),
        _bench(
            "test_split[onnxruntime-fp32-2x1]",
            3.0,
            kind="w2l_split",
            runtime="onnxruntime",
            precision="fp32",
            split="2 batch(es) x 1 thread(s)",
            batch=16,
            per_frame_ms=41.0,
            speedup=1.8,
            budget=True,
        ),
        _bench(
            "test_face_encoder_share",
            1.0,
            kind="w2l_face_encoder",
            batch=16,
            encoder_ms=5.0,
            whole_ms=80.0,
            share=0.0625,
        ),
        _bench(
            "test_precision_quality[bf16]",
            2.0,
            kind="w2l_precision",
            precision="bf16",
            runtime="torch",
            speedup_vs_fp32=1.7,
            psnr_min=35.2,
            psnr_median=36.3,
            ssim_min=0.974,
            ssim_median=0.98,
            within_regression_tolerance=False,
            offered=True,
            checkpoint="bn-calibrated",
        ),
        _bench(
            "test_thread_split[wav2lip-intra-op-threads]",
            9.0,
            kind="threads",
            generator="wav2lip",
            split="intra-op-threads",
            model="1 x 2",
            x264_threads=1,
            seconds=9.0,
            ratio_to_budget=1.12,
            cpu_ratio_to_budget=1.1,
        ),
    ]
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"benchmarks": benches, "machine_info": {}}))
    out = tmp_path / "summary.md"
    assert summary.main([str(results), "-o", str(out)]) == 0
    text = out.read_text()
    for heading in (
        "Whole processes vs the ffmpeg CLI floor",
        "Wav2Lip vs the reference implementation",
        "Wav2Lip network: ms a frame per thread split",
        "Wav2Lip lower precision vs fp32",
        "Thread budget: whole jobs per split",
    ):
        assert f"## {heading}" in text, heading
    assert "1.30x (1.21–1.42)" in text and "<= 1.5x" in text
    assert "+4.00 s (3.50–4.50)" in text and "FAIL" in text
    assert "2.33x (2.10–2.50)" in text and "| unseen template (720x528, 9.5 s) | 14.00 |" in text
    assert "41.0" in text and "share 0.062" in text
    assert "35.2 / 36.3" in text and "1.12x" in text
    assert "## Other" not in text
