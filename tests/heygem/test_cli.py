"""The `heygem` command as a user runs it: results, and every bad input as a clean error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heygem.cli import main
from heygem.errors import (
    CheckpointError,
    EmptyAudio,
    HeygemError,
    InputNotFound,
    InputTooLarge,
    InvalidOption,
    MediaUnreadable,
    NoAudioStream,
    NoFaceFound,
    OutputNotWritable,
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_demo_writes_a_real_mp4_and_reports_providers(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As the README runs it: no output path, no cache option (the cache comes from the
    # environment here only to keep the user's home clean).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEYGEM_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "demo.mp4"
    code, stdout, _ = run(capsys, "demo", "--seconds", "3")
    assert code == 0
    assert out.stat().st_size > 10_000
    assert f"wrote {out.resolve()}" in stdout
    assert "providers used: CPUExecutionProvider" in stdout
    assert "stage timings" in stdout


def test_generate_json_result(tmp_path: Path, capsys, speech_wav: Path, template_mp4: Path) -> None:
    out = tmp_path / "o.mp4"
    code, stdout, _ = run(
        capsys,
        "generate",
        "-a",
        str(speech_wav),
        "-i",
        str(template_mp4),
        "-o",
        str(out),
        "--json",
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert code == 0
    result = json.loads(stdout)
    assert result["output"] == str(out) and result["frames"] == 125
    assert result["providers_used"] == ["CPUExecutionProvider"]


@pytest.fixture
def garbage(tmp_path: Path) -> Path:
    path = tmp_path / "garbage.mp4"
    path.write_bytes(b"this is not a video at all" * 100)
    return path


@pytest.fixture
def empty_wav(tmp_path: Path) -> Path:
    import numpy as np

    from heygem.demo import write_wav

    return write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32))


@pytest.fixture
def blip_wav(tmp_path: Path) -> Path:
    import numpy as np

    from heygem.demo import write_wav

    return write_wav(tmp_path / "blip.wav", np.full(160, 0.1, np.float32))  # 10 ms


def _bad(kind: str, paths: dict[str, Path], tmp: Path) -> tuple[list[str], type[HeygemError], str]:
    audio, video = str(paths["audio"]), str(paths["video"])
    out = str(tmp / "out.mp4")
    cases: dict[str, tuple[list[str], type[HeygemError], str]] = {
        "missing audio": (
            ["-a", str(tmp / "nope.wav"), "-i", video, "-o", out],
            InputNotFound,
            "does not exist",
        ),
        "missing video": (
            ["-a", audio, "-i", str(tmp / "nope.mp4"), "-o", out],
            InputNotFound,
            "does not exist",
        ),
        "garbage video": (
            ["-a", audio, "-i", str(paths["garbage"]), "-o", out],
            MediaUnreadable,
            "could not be decoded",
        ),
        "garbage audio": (
            ["-a", str(paths["garbage"]), "-i", video, "-o", out],
            MediaUnreadable,
            "could not be decoded",
        ),
        "video without audio": (
            ["-a", video, "-i", video, "-o", out],
            NoAudioStream,
            "has no audio stream",
        ),
        "zero-length audio": (
            ["-a", str(paths["empty"]), "-i", video, "-o", out],
            EmptyAudio,
            "contains no samples",
        ),
        "audio shorter than a frame": (
            ["-a", str(paths["blip"]), "-i", video, "-o", out],
            EmptyAudio,
            "less than one video frame",
        ),
        "no face": (
            ["-a", audio, "-i", str(paths["noface"]), "-o", out],
            NoFaceFound,
            "no face was found",
        ),
        "bad checkpoint": (
            [
                "-a",
                audio,
                "-i",
                video,
                "-o",
                out,
                "--generator",
                "wav2lip",
                "--checkpoint",
                str(paths["garbage"]),
            ],
            CheckpointError,
            "checkpoint",
        ),
        "wav2lip without checkpoint": (
            ["-a", audio, "-i", video, "-o", out, "--generator", "wav2lip"],
            InvalidOption,
            "needs a checkpoint",
        ),
        "output dir missing": (
            ["-a", audio, "-i", video, "-o", str(tmp / "no/such/o.mp4")],
            OutputNotWritable,
            "does not exist",
        ),
        "output not mp4": (
            ["-a", audio, "-i", video, "-o", str(tmp / "o.avi")],
            OutputNotWritable,
            "must end in .mp4",
        ),
        "absurd batch": (
            ["-a", audio, "-i", video, "-o", out, "--batch-size", "0"],
            InvalidOption,
            "batch size 0 is out of range",
        ),
    }
    return cases[kind]


BAD_INPUTS = [
    "missing audio",
    "missing video",
    "garbage video",
    "garbage audio",
    "video without audio",
    "zero-length audio",
    "audio shorter than a frame",
    "no face",
    "bad checkpoint",
    "wav2lip without checkpoint",
    "output dir missing",
    "output not mp4",
    "absurd batch",
]


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_bad_input_is_one_clear_line_and_a_distinct_exit_code(
    kind: str,
    tmp_path: Path,
    capsys,
    speech_wav: Path,
    template_mp4: Path,
    faceless_mp4: Path,
    garbage: Path,
    empty_wav: Path,
    blip_wav: Path,
) -> None:
    paths = {
        "audio": speech_wav,
        "video": template_mp4,
        "garbage": garbage,
        "noface": faceless_mp4,
        "empty": empty_wav,
        "blip": blip_wav,
    }
    argv, error, text = _bad(kind, paths, tmp_path)
    code, stdout, stderr = run(capsys, "generate", *argv, "--cache-dir", str(tmp_path / "c"))
    assert code == error.exit_code
    assert text in stderr and "what to do:" in stderr
    assert "Traceback" not in stderr + stdout
    assert not list(tmp_path.glob("*.mp4.part*")) and not (tmp_path / "out.mp4").exists()


def test_exit_codes_are_distinct() -> None:
    codes = [
        e.exit_code
        for e in (
            InputNotFound,
            MediaUnreadable,
            NoAudioStream,
            EmptyAudio,
            NoFaceFound,
            CheckpointError,
            OutputNotWritable,
            InvalidOption,
            InputTooLarge,
        )
    ]
    assert len(set(codes)) == len(codes)


def test_oversized_template_is_refused(
    tmp_path: Path, speech_wav: Path, template_mp4: Path
) -> None:
    from heygem.config import GenerateOptions
    from heygem.pipeline import Pipeline

    pipeline = Pipeline(GenerateOptions(cache_dir=tmp_path, max_width=320, max_height=240))
    with pytest.raises(InputTooLarge, match="above the 320x240 limit"):
        pipeline.generate(speech_wav, template_mp4, tmp_path / "o.mp4")


def test_export_onnx_command(tmp_path: Path, capsys) -> None:
    out = tmp_path / "rewrite.onnx"
    code, stdout, _ = run(capsys, "export-onnx", "-o", str(out), "--json")
    assert code == 0
    info = json.loads(stdout)
    assert info["max_abs_diff_vs_torch"] < 2e-4 and out.exists()


def test_json_log_is_readable_by_the_log_analyzer(
    tmp_path: Path, capsys, speech_wav: Path, template_mp4: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from diagnostics.logs import analyze_log

    base = [
        "generate",
        "-a",
        str(speech_wav),
        "-i",
        str(template_mp4),
        "-q",
        "--cache-dir",
        str(tmp_path / "c"),
        "--stall-timeout",
        "1",
    ]
    good_log, bad_log = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    assert run(capsys, *base, "-o", str(tmp_path / "a.mp4"), "--log-json", str(good_log))[0] == 0
    monkeypatch.setenv("HEYGEM_FAULT", "generate:never_start")
    code, _, stderr = run(capsys, *base, "-o", str(tmp_path / "b.mp4"), "--log-json", str(bad_log))
    assert code == 21 and stderr.count("consumer never started or died") == 1
    assert analyze_log(good_log).exit_code() == 0
    bad = analyze_log(bad_log)
    assert bad.exit_code() == 1
    assert "consumer-never-started" in {f.id for f in bad.findings}


def test_an_output_that_is_an_input_is_refused_and_the_input_kept(
    tmp_path: Path, capsys, speech_wav: Path, template_mp4: Path
) -> None:
    template = tmp_path / "avatar.mp4"
    template.write_bytes(template_mp4.read_bytes())
    alias = tmp_path / "same-avatar.mp4"
    alias.hardlink_to(template)  # another name for the same file
    for output in (template, alias):
        code, _, stderr = run(
            capsys, "generate", "-a", str(speech_wav), "-i", str(template), "-o", str(output),
            "--cache-dir", str(tmp_path / "c"),
        )  # fmt: skip
        assert code == OutputNotWritable.exit_code
        assert "would replace the input" in stderr and "what to do:" in stderr
    assert template.read_bytes() == template_mp4.read_bytes()
