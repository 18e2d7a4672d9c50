"""Verdicts on logs an independent tester wrote from HeyGem's public code and issue threads.

The tester never saw this project's fixtures, tests or analyzer; fixtures/independent/
EXPECTED.md is their ground truth, written before the analyzer ran. Two of their twelve
were wrong at first (L09: the bare cuDNN line before the consumer died was not named; L11:
a task hung in its final mux was called finished): both are kept here.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from diagnostics.logs import analyze_log, task_verdicts
from tests.diagnostics.log_cases import Case, check_case

INDEPENDENT = Path(__file__).parent / "fixtures" / "independent"

CASES: dict[str, Case] = {
    "L01_dh.log": (
        0,
        {
            "e455fe43-e6d9-472a-9efc-decac2709f78": "task-finished",
            "6c96670e-4204-4bc0-bd64-b4c576c09876": "task-finished",
        },
        set(),
    ),
    # 84 minutes at 3.2 s a batch: slow, not a fault
    "L02_dh.log": (0, {"aea1d55e-348c-11f0-9940-02420a3c0b02": "task-finished"}, set()),
    # docker compose prefix, CRLF, onnxruntime's harmless node-assignment warning
    "L03_dh.log": (
        0,
        {
            "50354c15-9978-459e-94fd-6a1806d91748": "task-finished",
            "e3da5be9-6ce8-454c-a41c-737d6c433f57": "task-finished",
            "8fa72dca-8d39-4d82-a55a-0f03b1dff1cd": "task-finished",
        },
        set(),
    ),
    "L04_dh.log": (1, {"5f0c2b84-3487-11f0-9940-02420a3c0b02": "consumer-never-started"}, set()),
    "L05_dh.log": (
        1,
        {
            "a749c83e-fe6b-4f72-9365-6d9ec328e069": "task-finished",
            "03ae551b-28e5-4f78-a704-4193f1d03be3": "consumer-stopped",
        },
        set(),
    ),
    "L06_dh.log": (
        1,
        {
            "38b8974f-63e5-4a90-b4bc-2efab2c6fb2c": "init-wh-timeout",
            "f942cec9-36e5-45ab-8350-132b24386dc1": "task-finished",
        },
        set(),
    ),
    # finished, but on the CPU: onnxruntime could not load cuDNN 9
    "L07_dh.log": (1, {"1e0a1106-eaa9-4790-aa50-a31eb32a1753": "task-finished"}, {"cpu-fallback"}),
    "L08_dh.log": (
        1,
        {
            "c2818247-7203-4dfc-8664-8f818629d9a4": "task-failed",
            "c9329c34-79a4-421d-a346-5422168fabed": "task-failed",
        },
        set(),
    ),
    "L09_dh.log": (1, {"38aa8705-8b8f-4822-98c0-8bcc7b78f21d": "consumer-stopped"}, set()),
    "L10_dh.log": (
        1,
        {
            "eca53615-66b2-4d46-8ea3-79fb2035d89a": "task-interrupted",
            "47c6cdef-6323-42fd-8a63-d6fc68b2a306": "task-finished",
        },
        set(),
    ),
    "L11_dh.log": (
        1,
        {
            "95fc20ff-d78b-45f7-8b72-a7c26863ab62": "task-finished",
            "c61ee003-df71-44ee-b429-a4097026eadb": "task-hung",
        },
        set(),
    ),
    "L12_dh.log": (
        1,
        {
            "d5dc7beb-6748-4410-8b29-63a4e8310173": "task-failed",
            "78fd6363-9ca0-4fec-a164-f1c46d9dff40": "task-finished",
            "e9af5260-3194-4403-8d7d-bcf5d18cc85f": "task-failed",
        },
        set(),
    ),
}


def test_every_independent_log_has_a_case() -> None:
    assert sorted(p.name for p in INDEPENDENT.glob("*.log")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_verdicts_on_independent_logs(name: str) -> None:
    check_case(INDEPENDENT / name, CASES[name])


def test_a_bare_library_error_before_the_consumer_died_is_named_with_its_fix() -> None:
    [stopped] = analyze_log(INDEPENDENT / "L09_dh.log").by_id("consumer-stopped")
    assert "took the batch up to frame 4" in stopped.title and "never finished" in stopped.title
    assert "Could not load library libcudnn_cnn_infer.so.8" in stopped.title
    assert any(line.startswith("L58: Could not load library") for line in stopped.evidence)
    assert stopped.fix is not None and "libnvrtc.so" in stopped.fix and "nvrtc" in stopped.fix


def test_a_task_silent_after_its_frames_for_much_longer_than_a_mux_hung_in_it() -> None:
    report = analyze_log(INDEPENDENT / "L11_dh.log")
    [hung] = report.by_id("task-hung")
    assert "hung in its final mux" in hung.title and "1800 s" in hung.title
    assert hung.fix is not None and "ffmpeg" in hung.fix


def test_a_later_task_means_the_silent_one_ended_and_lost_its_end_line(tmp_path: Path) -> None:
    """HeyGem runs one task at a time: when another task starts after the silence, the
    silent task's end line was lost (an excerpt, a rotated file), it did not hang."""
    lines = (INDEPENDENT / "L11_dh.log").read_text().splitlines()
    stamp = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3})\]")

    def later(line: str) -> str:  # the same line an hour later
        match = stamp.match(line)
        if match is None:
            return line
        when = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S") + timedelta(hours=1)
        return f"[{when:%Y-%m-%d %H:%M:%S},{match[2]}]" + line[match.end() :]

    first_task = [later(line) for line in lines[10:371]]  # lines 11-371: task 95fc20ff
    log = tmp_path / "dh.log"
    log.write_text("\n".join([*lines, *first_task]) + "\n")

    report = analyze_log(log)

    verdicts = task_verdicts(report)
    assert verdicts["c61ee003-df71-44ee-b429-a4097026eadb"] == "task-finished"
    assert not report.by_id("task-hung")
