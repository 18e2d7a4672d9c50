"""The SQLite job store: WAL, atomic admission and claiming, recovery after a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from service.errors import JobConflict, QueueFull
from service.jobs import JobError, JobState, NewJob
from service.store import JobStore


def _new(store: JobStore, n: int, code: str | None = None, max_queued: int = 10) -> str:
    job_id = f"{n:032x}"
    store.create(
        NewJob(job_id, "a.wav", "v.mp4", "out.mp4", {}, code=code),
        max_queued=max_queued,
        retry_after=3,
    )
    return job_id


def test_wal_mode_and_reopen_keeps_jobs(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job_id = _new(store, 1)
    store.close()
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reopened = JobStore(tmp_path / "jobs.sqlite3")
    assert reopened.get(job_id).state is JobState.QUEUED
    reopened.close()


def test_bounded_queue_unique_codes_and_fifo_claims(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    first, second = _new(store, 1, code="c1", max_queued=2), _new(store, 2, max_queued=2)
    with pytest.raises(QueueFull) as full:
        _new(store, 3, max_queued=2)
    assert full.value.retry_after == 3 and "2 jobs waiting" in full.value.message
    with pytest.raises(JobConflict):
        _new(store, 4, code="c1")
    claimed = store.claim_next(worker_pid=42)
    assert claimed is not None and claimed.id == first and claimed.state is JobState.RUNNING
    assert claimed.attempts == 1 and claimed.worker_pid == 42
    store.requeue(first)
    assert store.get(first).state is JobState.QUEUED and store.get(first).attempts == 0
    assert [store.claim_next(1).id, store.claim_next(1).id] == [first, second]  # type: ignore[union-attr]
    assert store.claim_next(1) is None
    store.finish_unsuccessfully(first, JobError("Boom", "it broke"))
    store.succeed(first, {"frames": 1})  # a late success cannot resurrect a failed job
    assert store.get(first).state is JobState.FAILED
    assert store.get(first).error == JobError("Boom", "it broke")
    store.close()


def test_recover_fails_running_jobs_by_default(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    running, queued = _new(store, 1), _new(store, 2)
    store.claim_next(7)
    assert store.recover("fail", max_attempts=3) == {"requeued": 0, "failed": 1}
    job = store.get(running)
    assert job.state is JobState.FAILED and job.error is not None
    assert job.error.type == "ServiceRestarted" and "worker pid 7" in job.error.message
    assert job.error.hint
    assert store.get(queued).state is JobState.QUEUED
    store.close()


def test_recover_can_retry_until_attempts_run_out(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job_id = _new(store, 1)
    store.claim_next(7)
    assert store.recover("retry", max_attempts=2) == {"requeued": 1, "failed": 0}
    assert store.get(job_id).state is JobState.QUEUED
    store.claim_next(8)  # attempt 2 is interrupted as well
    assert store.recover("retry", max_attempts=2) == {"requeued": 0, "failed": 1}
    assert store.get(job_id).state is JobState.FAILED
    store.close()


def test_cancel_transitions(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    queued, running = _new(store, 1), _new(store, 2)
    store.claim_next(1)  # claims job 1
    first = store.request_cancel(queued)
    assert first.state is JobState.RUNNING and first.cancel_requested  # told, not yet stopped
    assert store.request_cancel(running).state is JobState.CANCELLED
    with pytest.raises(JobConflict):
        store.request_cancel(running)
    store.close()
