"""Summarise a pytest-benchmark JSON file as Markdown, or compare it with a baseline.

    python -m benchmarks.summary results.json -o summary.md
    python -m benchmarks.summary results.json --compare baseline.json [--threshold 1.25]
    python -m benchmarks.summary results.json -o summary.md --compare baseline.json

The comparison is by ratio only: each benchmark's time is first divided by the 720p
transcode floor of its own file (``--normalize floor``, the default), so a slower or
busier machine moves both sides alike; then current / baseline per benchmark. Exit code
1 when any ratio is above the threshold, 2 when the files cannot be read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

Bench = dict[str, Any]
FLOOR_RESOLUTION = "720p"


# -- reading -----------------------------------------------------------------------------
def load(path: Path) -> list[Bench]:
    data = json.loads(Path(path).read_text())
    benches = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benches, list):
        raise ValueError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    return benches


def info(bench: Bench) -> dict[str, Any]:
    extra = bench.get("extra_info")
    return extra if isinstance(extra, dict) else {}


def stat(bench: Bench, name: str = "min") -> float | None:
    stats = bench.get("stats")
    if not isinstance(stats, dict):
        return None
    value = stats.get(name)
    return float(value) if isinstance(value, int | float) else None


def of_kind(benches: Iterable[Bench], kind: str) -> list[Bench]:
    return [b for b in benches if info(b).get("kind") == kind]


def _res_order(res: object) -> int:
    text = str(res)
    return int(text[:-1]) if text.endswith("p") and text[:-1].isdigit() else 10**6


# -- formatting --------------------------------------------------------------------------
def fmt(value: object, digits: int = 3, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if isinstance(value, float) and math.isnan(value):
            return "–"
        return f"{value:.{digits}f}{suffix}" if isinstance(value, float) else f"{value}{suffix}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def verdict(meets: object) -> str:
    return "–" if meets is None else ("PASS" if meets else "FAIL")


# -- sections ----------------------------------------------------------------------------
def _stages(benches: list[Bench]) -> list[str]:
    rows = []
    for b in of_kind(benches, "stage") + of_kind(benches, "generator"):
        i = info(b)
        rows.append(
            [
                b["name"],
                fmt(stat(b), 4),
                fmt(i.get("frames")),
                fmt(i.get("per_frame_ms"), 3),
                fmt(i.get("share_of_floor"), 3),
                _versus(i),
            ]
        )
    headers = ["benchmark", "min s", "frames", "ms / frame", "share of 720p floor", "versus"]
    return table(headers, rows)


def _versus(i: dict[str, Any]) -> str:
    """A stage measured against another implementation in the same rounds."""
    if i.get("ratio_to_dlib") is None:
        return "–"
    return f"{i['ratio_to_dlib']:.2f}x dlib's time ({i.get('dlib_per_frame_ms')} ms / frame)"


def _floor(benches: list[Bench]) -> list[str]:
    rows = [
        [
            fmt(info(b).get("resolution")),
            fmt(info(b).get("frames")),
            fmt(info(b).get("seconds"), 3),
            fmt(info(b).get("fps"), 1),
            fmt(info(b).get("rtf"), 3),
            fmt(info(b).get("cpu_util"), 2),
        ]
        for b in sorted(
            of_kind(benches, "floor"), key=lambda b: _res_order(info(b).get("resolution"))
        )
    ]
    return table(["resolution", "frames", "seconds", "fps", "RTF", "CPU (cores)"], rows)


def _e2e(benches: list[Bench]) -> list[str]:
    rows = []
    for b in sorted(
        of_kind(benches, "e2e"),
        key=lambda b: (info(b).get("cache") != "warm", _res_order(info(b).get("resolution"))),
    ):
        i = info(b)
        rows.append(
            [
                fmt(i.get("resolution")),
                fmt(i.get("cache")),
                fmt(i.get("frames")),
                fmt(i.get("seconds"), 3),
                fmt(i.get("fps"), 1),
                fmt(i.get("rtf"), 3),
                fmt(i.get("ratio_to_floor"), 2),
                fmt(i.get("cpu_ratio_to_floor"), 2),
                fmt(i.get("ttff_s"), 3),
                fmt(i.get("peak_rss_mb"), 0),
                fmt(i.get("job_rss_mb"), 0),
                fmt(i.get("cpu_util"), 2),
            ]
        )
    return table(
        [
            "resolution",
            "template cache",
            "frames",
            "seconds",
            "output fps",
            "RTF",
            "ratio to floor",
            "CPU ratio to floor",
            "first frame s",
            "peak RSS MB",
            "job RSS MB",
            "CPU (cores)",
        ],
        rows,
    )


def _cache(benches: list[Bench]) -> list[str]:
    rows = [
        [
            fmt(info(b).get("resolution")),
            fmt(info(b).get("ttff_first_s"), 3),
            fmt(info(b).get("ttff_second_s"), 3),
            fmt(info(b).get("speedup"), 1, "x"),
            ">= " + fmt(info(b).get("target"), 1, "x"),
            verdict(info(b).get("meets_target")),
        ]
        for b in of_kind(benches, "cache")
    ]
    return table(
        [
            "resolution",
            "first job: first frame s",
            "second job: first frame s",
            "speedup",
            "target",
            "verdict",
        ],
        rows,
    )


def _memory(benches: list[Bench]) -> list[str]:
    rows = []
    for b in of_kind(benches, "memory"):
        i = info(b)
        rows.append(
            [
                fmt(i.get("resolution")),
                f"{fmt(i.get('short_audio_s'), 0)} s: {fmt(i.get('rss_short_mb'), 0)}",
                f"{fmt(i.get('long_audio_s'), 0)} s: {fmt(i.get('rss_long_mb'), 0)}",
                fmt(i.get("ratio"), 3, "x"),
                fmt(i.get("job_ratio"), 2, "x"),
                "<= " + fmt(i.get("target"), 1, "x"),
                verdict(i.get("meets_target")),
            ]
        )
    return table(
        [
            "resolution",
            "peak RSS MB (short)",
            "peak RSS MB (long)",
            "ratio",
            "job-only ratio",
            "target",
            "verdict",
        ],
        rows,
    )


def _workers(benches: list[Bench]) -> list[str]:
    rows = [
        [
            fmt(info(b).get("workers")),
            fmt(info(b).get("start_method")),
            fmt(info(b).get("seconds"), 3),
            fmt(info(b).get("fps"), 1),
            fmt(info(b).get("ratio_to_workers0"), 2),
            fmt(info(b).get("ttff_s"), 3),
            fmt(info(b).get("cpu_util"), 2),
        ]
        for b in sorted(of_kind(benches, "workers"), key=lambda b: info(b).get("workers", 0))
    ]
    return table(
        [
            "num_workers",
            "start",
            "seconds",
            "fps",
            "ratio to 0 workers",
            "first frame s",
            "CPU (cores)",
        ],
        rows,
    )


def _backends(benches: list[Bench]) -> list[str]:
    rows = [
        [
            "end to end ("
            + fmt(info(b).get("generator"))
            + ", "
            + fmt(info(b).get("resolution"))
            + ")",
            fmt(info(b).get("backend")),
            fmt(info(b).get("seconds"), 3),
            fmt(info(b).get("fps"), 1),
            fmt(info(b).get("ratio_to_ort"), 2),
        ]
        for b in of_kind(benches, "backend")
    ]
    for b in of_kind(benches, "generator"):
        i = info(b)
        rows.append(
            [
                f"{i.get('generator')} batch {i.get('batch')}",
                fmt(i.get("backend")),
                fmt(stat(b), 4),
                fmt(i.get("fps"), 1),
                fmt(i.get("ratio_to_ort", 1.0 if i.get("backend") == "onnxruntime" else None), 2),
            ]
        )
    return table(["what", "backend", "seconds", "frames / s", "ratio to ORT"], rows)


def _ort_options(benches: list[Bench]) -> list[str]:
    rows = [
        [
            fmt(info(b).get("model")),
            fmt(info(b).get("batch")),
            fmt(info(b).get("threads")),
            fmt(info(b).get("level")),
            fmt(info(b).get("per_frame_ms"), 3),
            fmt(info(b).get("ratio_to_default"), 2),
            fmt(info(b).get("session_create_s"), 2),
        ]
        for b in of_kind(benches, "ort_options")
    ]
    return table(
        [
            "model",
            "batch",
            "intra-op threads",
            "graph optimisation",
            "ms / frame",
            "ratio to default",
            "session create s",
        ],
        rows,
    )


def _spread(i: dict[str, Any], key: str, digits: int = 2, suffix: str = "x") -> str:
    """``median (min–max)`` of a per-round ratio."""
    median = fmt(i.get(key), digits, suffix)
    low, high = i.get(f"{key}_min"), i.get(f"{key}_max")
    return (
        median if low is None or high is None else f"{median} ({low:.{digits}f}–{high:.{digits}f})"
    )


def _processes(benches: list[Bench]) -> list[str]:
    rows = []
    for b in of_kind(benches, "process"):
        i = info(b)
        rows.append(
            [
                f"{fmt(i.get('generator'))}, {fmt(i.get('cache'))} template",
                fmt(i.get("heygem_s"), 2),
                fmt(i.get("ffmpeg_s"), 2),
                _spread(i, "ratio_to_floor"),
                fmt(i.get("ratio_to_floor_cpu"), 2, "x"),
                "<= " + fmt(i.get("target"), 1, "x"),
                verdict(i.get("meets_target")),
            ]
        )
    for b in of_kind(benches, "first_run"):
        i = info(b)
        rows.append(
            [
                f"{fmt(i.get('generator'))}, first run on a fresh machine",
                fmt(i.get("first_s"), 2),
                f"second run {fmt(i.get('second_s'), 2)}",
                f"+{_spread(i, 'extra_s', 2, ' s')}",
                f"+{fmt(i.get('extra_cpu_s'), 2)} CPU s",
                "<= +" + fmt(i.get("target"), 1, " s"),
                verdict(i.get("meets_target")),
            ]
        )
    for b in of_kind(benches, "worker"):
        i = info(b)
        rows.append(
            [
                f"{fmt(i.get('generator'))}, warm worker vs CLI",
                fmt(i.get("worker_s"), 2),
                f"CLI {fmt(i.get('cli_s'), 2)}",
                _spread(i, "ratio_to_cli"),
                fmt(i.get("ratio_to_cli_cpu"), 2, "x"),
                "–",
                "–",
            ]
        )
    return table(
        [
            "job (720p)",
            "heygem s",
            "baseline s",
            "ratio (spread)",
            "CPU ratio",
            "target",
            "verdict",
        ],
        rows,
    )


def _w2l_processes(benches: list[Bench]) -> list[str]:
    rows = []
    for b in of_kind(benches, "w2l_process"):
        i = info(b)
        for case in ("repeat", "unseen"):
            c = i.get(case) or {}
            rows.append(
                [
                    f"{case} template ({fmt(i.get('template'))}, {fmt(i.get('audio_s'), 1)} s)",
                    fmt(c.get(f"{case}_s"), 2),
                    fmt(i.get("reference_s"), 2),
                    _spread(c, "speedup"),
                    fmt(c.get("speedup_cpu"), 2, "x"),
                    ">= " + fmt(c.get("target"), 1, "x"),
                    verdict(c.get("meets_target")),
                ]
            )
    return table(
        ["heygem generate --generator wav2lip", "heygem s", "reference s", "speedup (spread)",
         "CPU ratio", "target", "verdict"],
        rows,
    )  # fmt: skip


def _w2l_splits(benches: list[Bench]) -> list[str]:
    rows = [
        [
            fmt(info(b).get("runtime")),
            fmt(info(b).get("precision")),
            fmt(info(b).get("split")),
            fmt(info(b).get("batch")),
            fmt(info(b).get("per_frame_ms"), 1),
            fmt(info(b).get("speedup"), 2, "x"),
            "yes" if info(b).get("budget") else "",
        ]
        for b in of_kind(benches, "w2l_split")
    ]
    for b in of_kind(benches, "w2l_face_encoder"):
        i = info(b)
        rows.append(
            [
                "torch (face encoder alone)",
                "fp32",
                "1 batch x 1 thread",
                fmt(i.get("batch")),
                f"{fmt(i.get('encoder_ms'), 1)} of {fmt(i.get('whole_ms'), 1)}",
                f"share {fmt(i.get('share'), 3)}",
                "",
            ]
        )
    return table(
        ["runtime", "precision", "split", "batch", "ms / frame", "speedup vs reference",
         "pipeline's"],
        rows,
    )  # fmt: skip


def _w2l_precision(benches: list[Bench]) -> list[str]:
    rows = [
        [
            fmt(info(b).get("precision")),
            fmt(info(b).get("runtime")),
            fmt(info(b).get("speedup_vs_fp32"), 2, "x"),
            f"{fmt(info(b).get('psnr_min'), 1)} / {fmt(info(b).get('psnr_median'), 1)}",
            f"{fmt(info(b).get('ssim_min'), 4)} / {fmt(info(b).get('ssim_median'), 4)}",
            fmt(info(b).get("within_regression_tolerance")),
            fmt(info(b).get("offered")),
            fmt(info(b).get("checkpoint")),
        ]
        for b in of_kind(benches, "w2l_precision")
    ]
    return table(
        ["precision", "runtime", "speed vs fp32", "PSNR dB min / median",
         "SSIM min / median", "within regression tolerance", "offered", "checkpoint"],
        rows,
    )  # fmt: skip


def _threads(benches: list[Bench]) -> list[str]:
    rows = [
        [
            fmt(info(b).get("generator")),
            fmt(info(b).get("split")),
            fmt(info(b).get("model")),
            fmt(info(b).get("x264_threads")),
            fmt(info(b).get("seconds"), 2),
            fmt(info(b).get("ratio_to_budget"), 2, "x"),
            fmt(info(b).get("cpu_ratio_to_budget"), 2, "x"),
        ]
        for b in of_kind(benches, "threads")
    ]
    return table(
        ["generator", "split", "model batches x threads", "x264 threads", "job s",
         "ratio to budget", "CPU ratio"],
        rows,
    )  # fmt: skip


def _other(benches: list[Bench], known: set[str]) -> list[str]:
    rows = [
        [b.get("name", "?"), fmt(stat(b), 4), fmt(stat(b, "median"), 4)]
        for b in benches
        if info(b).get("kind") not in known
    ]
    return table(["benchmark", "min s", "median s"], rows) if rows else []


def _lipsync(benches: list[Bench]) -> list[str]:
    rows = [
        [
            fmt(info(b).get("template")),
            fmt(info(b).get("resolution")),
            fmt(info(b).get("sync_score"), 3),
            fmt(info(b).get("sync_control"), 3),
            fmt(info(b).get("ms_per_frame"), 2),
            fmt(info(b).get("floor_ms_per_frame"), 2),
            fmt(info(b).get("ratio_to_floor"), 3, "x"),
            "<= " + fmt(info(b).get("target"), 1, "x"),
            verdict(info(b).get("meets_target")),
        ]
        for b in of_kind(benches, "lipsync")
    ]
    return table(
        [
            "template",
            "resolution",
            "sync score",
            "control",
            "ms/frame",
            "floor ms/frame",
            "ratio to floor",
            "target",
            "verdict",
        ],
        rows,
    )


SECTIONS: list[tuple[str, str, Callable[[list[Bench]], list[str]]]] = [
    ("process", "Whole processes vs the ffmpeg CLI floor", _processes),
    ("w2l_process", "Wav2Lip vs the reference implementation (whole processes)", _w2l_processes),
    ("w2l_split", "Wav2Lip network: ms a frame per thread split", _w2l_splits),
    ("w2l_precision", "Wav2Lip lower precision vs fp32", _w2l_precision),
    ("threads", "Thread budget: whole jobs per split", _threads),
    ("floor", "Transcode floor (PyAV decode + libx264 re-encode)", _floor),
    ("e2e", "End to end", _e2e),
    ("stage", "Stage timings", _stages),
    ("cache", "Template cache: time to first frame", _cache),
    ("memory", "Memory growth (fresh processes)", _memory),
    ("workers", "DataLoader workers", _workers),
    ("backend", "ONNX Runtime vs torch", _backends),
    ("ort_options", "ONNX Runtime session options", _ort_options),
    ("lipsync", "Lip-sync quality and cost (embedded generator, warm template)", _lipsync),
]
KINDS = {
    "process",
    "first_run",
    "worker",
    "w2l_process",
    "w2l_split",
    "w2l_face_encoder",
    "w2l_precision",
    "threads",
    "floor",
    "e2e",
    "stage",
    "generator",
    "cache",
    "memory",
    "workers",
    "backend",
    "ort_options",
    "lipsync",
}


def render(benches: list[Bench], source: str = "") -> str:
    lines = ["# Benchmark summary", ""]
    if source:
        lines += [f"Source: `{source}`.", ""]
    lines += [
        "Times are the minimum over rounds. RTF = processing time / media time (below 1 "
        "is faster than real time). Ratios are the median of per-round ratios, each "
        "round against a baseline run just before it (floor, 0 workers, ORT, default "
        "session); CPU ratio = CPU seconds / the baseline's CPU seconds.",
        "",
    ]
    present = {info(b).get("kind") for b in benches}
    for kind, title, section in SECTIONS:
        wanted = {
            "stage": {kind, "generator"},
            "backend": {kind, "generator"},
            "process": {kind, "first_run", "worker"},
            "w2l_split": {kind, "w2l_face_encoder"},
        }.get(kind, {kind})
        if present & wanted:
            lines += [f"## {title}", "", *section(benches), ""]
    other = _other(benches, KINDS)
    if other:
        lines += ["## Other", "", *other, ""]
    return "\n".join(lines)


# -- comparing ---------------------------------------------------------------------------
def _key(bench: Bench) -> str:
    return str(bench.get("name") or bench.get("fullname"))


def floor_reference(benches: list[Bench], stat_name: str) -> float | None:
    for b in of_kind(benches, "floor"):
        if info(b).get("resolution") == FLOOR_RESOLUTION:
            return stat(b, stat_name)
    return None


def compare(
    current: list[Bench],
    baseline: list[Bench],
    *,
    threshold: float,
    stat_name: str = "min",
    normalize: str = "floor",
) -> tuple[list[str], bool]:
    """Rows of current/baseline ratios; True when any is above ``threshold``."""
    cur_ref = base_ref = None
    if normalize == "floor":
        cur_ref, base_ref = (
            floor_reference(current, stat_name),
            floor_reference(baseline, stat_name),
        )
    normalised = bool(cur_ref and base_ref)
    by_name = {_key(b): b for b in baseline}
    rows: list[list[str]] = []
    regressed = False
    for bench in current:
        old = by_name.get(_key(bench))
        cur, base = stat(bench, stat_name), stat(old, stat_name) if old else None
        if old is None or cur is None or base is None or base <= 0:
            rows.append([_key(bench), "–", "–", "new" if old is None else "no stats"])
            continue
        raw = cur / base
        ratio = (cur / cur_ref) / (base / base_ref) if normalised else raw  # type: ignore[operator]
        bad = ratio > threshold
        regressed |= bad
        rows.append([_key(bench), f"{raw:.3f}", f"{ratio:.3f}", "REGRESSED" if bad else "ok"])
    note = (
        f"normalised by each file's {FLOOR_RESOLUTION} transcode floor"
        if normalised
        else "raw (no floor benchmark in both files)"
    )
    lines = [
        f"# Benchmark comparison ({stat_name}, {note}; threshold {threshold:g})",
        "",
        *table(["benchmark", "raw ratio", "ratio", "status"], rows),
        "",
    ]
    return lines, regressed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.summary",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("results", type=Path, help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        help="write the Markdown summary (and comparison) here, not to stdout",
    )
    parser.add_argument(
        "--compare",
        type=Path,
        metavar="BASELINE",
        help="also compare with this baseline JSON; the comparison is printed "
        "and the exit code is 1 if anything regressed",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=1.25,
        help="fail when current/baseline exceeds this (default 1.25)",
    )
    parser.add_argument("--stat", default="min", choices=["min", "median", "mean"])
    parser.add_argument("--normalize", default="floor", choices=["floor", "none"])
    args = parser.parse_args(argv)
    try:
        current = load(args.results)
        baseline = load(args.compare) if args.compare else None
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = render(current, source=str(args.results))
    comparison, regressed = "", False
    if baseline is not None:
        lines, regressed = compare(
            current,
            baseline,
            threshold=args.threshold,
            stat_name=args.stat,
            normalize=args.normalize,
        )
        comparison = "\n".join(lines)
    try:
        if args.output:
            # The file gets the summary, plus the comparison when there is one.
            args.output.write_text("\n\n".join(filter(None, [summary, comparison])) + "\n")
        if comparison:
            print(comparison)  # always on stdout: CI logs show what regressed
        elif not args.output:
            print(summary)
    except BrokenPipeError:  # `| head`
        sys.stderr.close()
    return 1 if regressed else 0


if __name__ == "__main__":
    raise SystemExit(main())
