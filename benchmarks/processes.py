"""Whole processes timed side by side: ``heygem generate``, the ffmpeg CLI floor, the
reference-style Wav2Lip script.

A user runs a process, so the start-up (imports, caches, model load) counts. Each round
runs the baseline and the candidate back to back, alternating which goes first, and a
ratio is taken per round: the machine is shared, and only runs that saw the same load
compare fairly. Reported: the median ratio over rounds and its spread (min..max).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.support import REPO_ROOT, rounds

Command = Sequence[str]


@dataclass(frozen=True)
class ProcessRun:
    wall: float
    cpu: float  # user + system seconds of the process and its children
    stdout: str

    def json(self) -> dict[str, Any]:
        """The last stdout line as JSON (``heygem generate --json`` prints more lines)."""
        text = self.stdout.strip()
        start = text.find("{")
        data: dict[str, Any] = json.loads(text[start:]) if start >= 0 else {}
        return data


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_process(
    cmd: Command, *, env: dict[str, str] | None = None, timeout: float = 1200
) -> ProcessRun:
    cpu0, start = _children_cpu(), time.perf_counter()
    proc = subprocess.run(
        list(cmd),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, cmd[:4]))} ... exited {proc.returncode}: {proc.stderr[-3000:]}"
        )
    return ProcessRun(wall, _children_cpu() - cpu0, proc.stdout)


@dataclass
class Rounds:
    """Back-to-back runs per round: ``runs[name][i]`` is round i of that process."""

    runs: dict[str, list[ProcessRun]] = field(default_factory=dict)

    def ratios(self, numerator: str, denominator: str, *, cpu: bool = False) -> list[float]:
        num, den = self.runs[numerator], self.runs[denominator]
        if cpu:
            return [a.cpu / b.cpu for a, b in zip(num, den, strict=True)]
        return [a.wall / b.wall for a, b in zip(num, den, strict=True)]

    def summary(self, numerator: str, denominator: str, key: str) -> dict[str, Any]:
        """``key`` = median of the per-round ratios, with their spread."""
        ratios = self.ratios(numerator, denominator)
        cpu = self.ratios(numerator, denominator, cpu=True)
        return {
            key: round(statistics.median(ratios), 3),
            f"{key}_min": round(min(ratios), 3),
            f"{key}_max": round(max(ratios), 3),
            f"{key}_cpu": round(statistics.median(cpu), 3),
            "rounds": len(ratios),
        }

    def seconds(self, name: str) -> dict[str, Any]:
        walls = [run.wall for run in self.runs[name]]
        return {
            f"{name}_s": round(statistics.median(walls), 3),
            f"{name}_s_min": round(min(walls), 3),
            f"{name}_s_max": round(max(walls), 3),
            f"{name}_cpu_s": round(statistics.median(run.cpu for run in self.runs[name]), 3),
        }


def measure_rounds(n_rounds: int, processes: dict[str, Callable[[int], ProcessRun]]) -> Rounds:
    """Every process once per round, the order rotating from round to round."""
    result = Rounds({name: [] for name in processes})
    names = list(processes)
    for i in range(rounds(n_rounds)):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            result.runs[name].append(processes[name](i))
    return result


# -- the commands --------------------------------------------------------------------------
def heygem_command(
    audio: Path, video: Path, output: Path, cache_dir: Path | None, *extra: str
) -> list[str]:
    """``heygem generate`` as a user types it (the installed console script)."""
    script = Path(sys.executable).parent / "heygem"
    head = [str(script)] if script.exists() else [sys.executable, "-m", "heygem.cli"]
    cache = ["--cache-dir", str(cache_dir)] if cache_dir is not None else []
    return [*head, "generate", "-a", str(audio), "-i", str(video), "-o", str(output), *cache,
            "--json", *extra]  # fmt: skip


def ffmpeg_path() -> str | None:
    return shutil.which("ffmpeg")


def ffmpeg_floor_command(
    template: Path, audio: Path, seconds: float, output: Path, *, preset: str, crf: int
) -> list[str]:
    """The least a tool must do for the same output: decode the template (looped to the
    audio's length), libx264 re-encode with the same preset/CRF, AAC, MP4 mux."""
    ffmpeg = ffmpeg_path() or "ffmpeg"
    return [ffmpeg, "-nostdin", "-loglevel", "error", "-y", "-stream_loop", "-1",
            "-i", str(template), "-i", str(audio), "-map", "0:v:0", "-map", "1:a:0",
            "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
            "-c:a", "aac", "-t", f"{seconds:.3f}", str(output)]  # fmt: skip


def reference_command(
    checkpoint: Path, template: Path, audio: Path, output: Path, box: Sequence[int]
) -> list[str]:
    """The reference-style Wav2Lip script (benchmarks/reference_wav2lip.py)."""
    return [sys.executable, "-m", "benchmarks.reference_wav2lip", "--checkpoint",
            str(checkpoint), "--face", str(template), "--audio", str(audio), "--outfile",
            str(output), "--box", *map(str, box)]  # fmt: skip


def fresh_machine_env(root: Path) -> dict[str, str]:
    """The environment of a user on a machine that never ran heygem: empty home, caches
    (heygem's template/ONNX cache, numba's, torch's, ORT's) all under a new ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("HEYGEM_CACHE_DIR",)}
    env.update(
        HOME=str(root),
        XDG_CACHE_HOME=str(root / ".cache"),
        NUMBA_CACHE_DIR=str(root / ".cache" / "numba"),
    )
    return env


def new_dir(parent: Path, prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
