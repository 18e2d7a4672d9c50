"""Verdicts on hand-written HeyGem logs in layouts the generator never produces.

Each log in fixtures/unseen/ was written for this check only, as an unseen evaluation set
would be: another logging layout or prefix, a variant of HeyGem's producer, an excerpt.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from diagnostics.findings import Severity
from diagnostics.logs import analyze_log
from tests.diagnostics.log_cases import Case, check_case

UNSEEN = Path(__file__).parent / "fixtures" / "unseen"

CASES: dict[str, Case] = {
    # loguru's "ts | LEVEL | module:function:line - msg"
    "loguru_healthy.log": (0, {"task-0601-a": "task-finished"}, set()),
    # Python's "%(asctime)s - %(name)s - %(levelname)s - %(message)s", batches of 8
    "python_default_never_took.log": (1, {"88213": "consumer-never-started"}, set()),
    # HeyGem's newer "ts-[service.self_logger]-file.py[line:N]-LEVEL: code -> msg"
    "self_logger_healthy.log": (
        0,
        {"9c1de2a0-4b8f-4d32-a5b0-7e21c0f5d3a9": "task-finished"},
        set(),
    ),
    # journalctl: "Nov 09 17:20:00 host heygem[pid]: " before each record
    "journald_consumer_stopped.log": (1, {"20251109172000": "consumer-stopped"}, set()),
    # kubectl logs --prefix --timestamps: "[pod/...] <UTC> " before records and tracebacks
    "kubectl_init_wh_timeout.log": (1, {"1004": "init-wh-timeout"}, set()),
    # ISO 8601 "T" and a zone inside the brackets, no source field, restart mid-task
    "iso_zone_restart.log": (1, {"20251109172900": "task-interrupted"}, {"service-restarts"}),
    # lower-case levels, "[file.py:N]", onnxruntime without CUDA's cuDNN 8
    "lowercase_levels_cudnn8.log": (1, {"c7d1": "task-finished"}, {"cpu-fallback"}),
    # tab-separated "ts<TAB>LEVEL<TAB>msg"; the task hangs while clients keep polling
    "tsv_hung.log": (1, {"T-0820-1": "task-hung"}, set()),
    # UTF-8 BOM, CRLF, two tasks in a row, a deprecation notice and a UserWarning
    "bom_crlf_two_tasks.log": (0, {"1001": "task-finished", "1002": "task-finished"}, {"warnings"}),
    # docker-compose v1 names ("deploy_heygem-gen-video_1 | "), two containers interleaved
    "compose_v1_two_containers.log": (
        1,
        {"a-healthy": "task-finished", "b-stuck": "consumer-never-started"},
        set(),
    ),
    # the frame writer fails with CUDA out of memory, HeyGem nests the message three deep
    "cuda_oom_failed.log": (1, {"oom-77": "task-failed"}, set()),
    # the ping-pong producer ("current_idx:k/total") and its own end lines
    "pingpong_healthy.log": (0, {"pp-1": "task-finished"}, set()),
    # the console copy (seconds only), batches of 1 at 0.4 s a frame: slow, not a fault
    "console_batch1_slow.log": (
        0,
        {"76e64cce-64ba-4de6-95b9-c11c1aee65ba": "task-finished"},
        set(),
    ),
    # an excerpt that starts mid-task: untagged sends, then the queue-full error names it
    "excerpt_mid_task.log": (
        1,
        {"ccebcbe1-27ab-4b10-89e6-b92faa86d507": "consumer-never-started"},
        set(),
    ),
}


def test_every_unseen_log_has_a_case() -> None:
    assert sorted(p.name for p in UNSEEN.glob("*.log")) == sorted(CASES)
    assert len(CASES) >= 10


@pytest.mark.parametrize("name", sorted(CASES))
def test_verdicts_on_unseen_logs(name: str) -> None:
    check_case(UNSEEN / name, CASES[name])


def test_unseen_details() -> None:
    kubectl = analyze_log(UNSEEN / "kubectl_init_wh_timeout.log")
    [finding] = kubectl.by_id("init-wh-timeout")
    assert "(it took 13.7 s)" in finding.title
    assert any("_queue.Empty" in line for line in finding.evidence)

    cudnn8 = analyze_log(UNSEEN / "lowercase_levels_cudnn8.log")
    [fallback] = cudnn8.by_id("cpu-fallback")
    assert fallback.fix is not None and "cuDNN 8.x" in fallback.fix
    assert "cuDNN 9" not in fallback.fix and "libcudnn.so.8" in fallback.fix

    slow = analyze_log(UNSEEN / "console_batch1_slow.log")
    [throughput] = slow.by_id("throughput")
    assert throughput.severity is Severity.INFO and "slower than real time" in throughput.title

    oom = analyze_log(UNSEEN / "cuda_oom_failed.log")
    [failed] = oom.by_id("task-failed")
    assert "the GPU ran out of memory" in failed.title

    two = analyze_log(UNSEEN / "compose_v1_two_containers.log")
    streams = {t["label"]: t["stream"] for t in two.details["tasks"]}
    assert streams == {
        "a-healthy": "deploy_heygem-gen-video_1",
        "b-stuck": "deploy_heygem-gen-video_2",
    }
