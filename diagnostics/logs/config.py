"""HeyGem's own numbers, which the findings judge by, and what normal looks like."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AnalyzerConfig"]


@dataclass(frozen=True)
class AnalyzerConfig:
    # trans_dh_service.py: drivered_queue = multiprocessing.Queue(10), and every batch is put
    # with put(..., block=True, timeout=60); a put that times out logs "任务视频驱动队列满".
    queue_size: int = 10
    put_timeout_s: float = 60.0
    # TransDhTask.work waits init_wh_queue_output.get(timeout=10) for the init_wh process.
    init_wh_wait_s: float = 10.0
    # The template's frame rate when the log does not state it (HeyGem templates: 25-30).
    video_fps: float = 25.0
    # Steady per-frame cost above which the consumer looks like it runs on the CPU. Seen on
    # GPUs: 0.11 s (V100, batches of 4 with face enhancement), 0.40 s (batches of 1).
    cpu_frame_cost_s: float = 1.5
    # init_wh (face detection on 100 frames): 8.4 s on a V100; 110 s was logged on an
    # RTX 4090 D whose onnxruntime had fallen back to the CPU.
    cpu_init_wh_s: float = 60.0
    # A put that waited this fraction of its timeout came close to failing the task.
    close_call: float = 0.5
    max_evidence: int = 8
