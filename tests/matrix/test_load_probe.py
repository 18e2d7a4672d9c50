"""The HeyGem-sized load step's own stall deadline (a lost batch must not hang the cell)."""

from __future__ import annotations

from matrix.load_probe import LoadConfig, run_load
from matrix.results import Outcome


def test_a_load_without_progress_is_reported_stalled():
    # In-process loading and a consumer slower than the deadline: no batch "arrives" in time.
    config = LoadConfig(
        workers=0, batch_size=2, face_size=32, batches=3, consumer_seconds=1.0, stall_seconds=0.2
    )
    step = run_load(config)
    assert step.outcome is Outcome.STALLED, (step.cause, step.evidence)
    assert step.cause and step.cause.startswith("no batch for 0.2 s")
    assert step.detail["batches"] == 1 and step.seconds < 5


def test_a_healthy_load_is_not_cut_short():
    config = LoadConfig(
        workers=0, batch_size=2, face_size=32, batches=3, consumer_seconds=0.0, stall_seconds=5.0
    )
    step = run_load(config)
    assert step.outcome is Outcome.OK and step.detail["batches"] == 3
