"""The SQLite job store: WAL, atomic admission and claiming, client scoping, migration."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest

from service.errors import JobConflict, JobNotFound, QueueFull
from service.jobs import JobError, JobState, NewJob, Phase
from service.store import SCHEMA_VERSION, JobStore


def _new(
    store: JobStore,
    n: int,
    code: str | None = None,
    max_queued: int = 10,
    client: str = "anonymous",
    per_client: int = 10,
) -> str:
    job_id = f"{n:032x}"
    store.create(
        NewJob(job_id, "a.wav", "v.mp4", "out.mp4", {}, code=code, client=client),
        max_queued=max_queued,
        max_queued_per_client=per_client,
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
    claimed = store.claim_next("pid 42")
    assert claimed is not None and claimed.id == first and claimed.state is JobState.RUNNING
    assert claimed.attempts == 1 and claimed.worker == "pid 42"
    assert claimed.phase == Phase.STARTING
    store.requeue(first)
    assert store.get(first).state is JobState.QUEUED and store.get(first).attempts == 0
    assert [store.claim_next("w").id, store.claim_next("w").id] == [first, second]  # type: ignore[union-attr]
    assert store.claim_next("w") is None
    store.finish_unsuccessfully(first, JobError("Boom", "it broke"))
    assert not store.succeed(first, {"frames": 1}, None)  # a late success cannot resurrect it
    assert store.get(first).state is JobState.FAILED
    store.close()


def test_a_failure_records_the_phase_the_job_is_in_at_that_moment(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job_id = _new(store, 1)
    claimed = store.claim_next("w")  # the snapshot a supervisor keeps says 'starting'
    assert claimed is not None and claimed.phase == Phase.STARTING
    store.set_progress(job_id, Phase.GENERATING, 40, frames_done=20, frames_total=50)
    ended = store.finish_unsuccessfully(
        job_id, JobError("WorkerCrashed", "died", cause="killed", stage=None)
    )
    assert ended is not None and ended.error is not None
    assert ended.error.phase == "generating" and ended.error.cause == "killed"
    assert (ended.frames_done, ended.frames_total) == (20, 50)
    assert store.finish_unsuccessfully(job_id, JobError("X", "again")) is None  # already over
    store.close()


def test_the_step_comes_with_its_counts_stays_at_the_end_and_is_cleared_on_requeue(
    tmp_path: Path,
) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job_id, other = _new(store, 1), _new(store, 2)
    store.claim_next("w")
    store.set_progress(job_id, Phase.PREPARING, 5, step="template", step_done=120, step_total=250)
    job = store.get(job_id)
    assert (job.step, job.step_done, job.step_total) == ("template", 120, 250)
    store.set_progress(job_id, Phase.PREPARING, 5)  # no step said: the step is kept
    assert store.get(job_id).step_done == 120
    store.set_progress(job_id, Phase.PREPARING, 5, step="export_onnx", step_done=0)
    job = store.get(job_id)  # a step without units has no total, not the last step's
    assert (job.step, job.step_done, job.step_total) == ("export_onnx", 0, None)
    frames = {"frames_done": 25, "frames_total": 50}
    store.set_progress(
        job_id, Phase.GENERATING, 50, step="generate", step_done=25, step_total=50, **frames
    )
    assert store.succeed(job_id, {"frames": 50}, None)
    job = store.get(job_id)  # as frames_done: the end keeps where the job was
    assert (job.step, job.step_done, job.step_total, job.frames_done) == ("generate", 25, 50, 25)
    store.set_progress(job_id, Phase.GENERATING, 60, step="generate", step_done=30)
    assert store.get(job_id).step_done == 25  # a late report changes no finished job

    claimed = store.claim_next("w")
    assert claimed is not None and claimed.id == other and claimed.step is None
    store.set_progress(other, Phase.PREPARING, 5, step="template", step_done=3, step_total=9)
    assert store.requeue_lost(other, "lost")  # a new attempt starts from nothing
    assert store.get(other).step is None and store.get(other).step_done is None
    store.claim_next("w")
    store.set_progress(other, Phase.PREPARING, 5, step="template", step_done=3, step_total=9)
    store.requeue_after_restart(other)
    assert store.get(other).step is None
    store.claim_next("w")
    store.set_progress(other, Phase.PREPARING, 5, step="load_model", step_done=0)
    store.finish_unsuccessfully(other, JobError("Boom", "it broke"))
    assert store.get(other).step == "load_model"  # the step it failed in
    store.close()


def test_clients_see_only_their_own_jobs_and_have_their_own_queue_cap(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    alice = [_new(store, n, client="alice", per_client=2) for n in (1, 2)]
    with pytest.raises(QueueFull, match="you have 2 jobs waiting"):
        _new(store, 3, client="alice", per_client=2)
    bob = _new(store, 4, client="bob", per_client=2)  # the queue still has room for bob
    assert store.queued_by_client() == {"alice": 2, "bob": 1}
    with pytest.raises(JobNotFound):
        store.get(bob, client="alice")
    assert store.get(bob, client="bob").client == "bob"
    assert store.get(bob).client == "bob"  # an admin (no scope) sees it
    page, total = store.page(limit=10, offset=0, client="alice")
    assert total == 2 and {j.id for j in page} == set(alice)
    assert store.page(limit=10, offset=0)[1] == 3
    store.close()


def test_cancel_transitions(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    running, queued = _new(store, 1), _new(store, 2)
    store.claim_next("w")  # claims job 1
    why = JobError("Cancelled", "cancelled by request", cause="cancelled")
    first = store.request_cancel(running, why)
    assert first.state is JobState.RUNNING and first.cancel_requested  # told, not yet stopped
    assert first.cancel_reason == "cancelled by request"
    second = store.request_cancel(queued, why)
    assert second.state is JobState.CANCELLED and second.error is not None
    assert second.error.phase == "queued"
    with pytest.raises(JobConflict):
        store.request_cancel(queued, why)
    store.close()


def test_delete_and_retention_queries(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    done, active = _new(store, 1), _new(store, 2)
    store.claim_next("w")
    assert store.succeed(done, {"frames": 3}, None)
    with pytest.raises(JobConflict, match="cancel it first"):
        store.delete_finished(active)
    assert store.finished_before(time.time() + 1) == [store.get(done)]
    assert store.finished_before(time.time() - 3600) == []
    with pytest.raises(JobNotFound):
        store.delete_finished(done, client="someone-else")
    assert store.delete_finished(done).id == done
    with pytest.raises(JobNotFound):
        store.get(done)
    # Uploads: an unused one expires; one a queued job reads does not.
    store.add_upload("a" * 32, "/u/a/media.wav", "a.wav", 1, {}, "alice")
    store.add_upload("b" * 32, "a.wav", "b.wav", 1, {}, "alice")  # job 2's audio_path
    later = time.time() + 10
    assert [u["id"] for u in store.uploads_unused_since(later)] == ["a" * 32]
    assert store.get_upload("a" * 32, client="bob") is None
    assert store.get_upload("a" * 32, client="alice") is not None
    store.close()


def test_a_store_of_the_previous_layout_is_migrated(tmp_path: Path) -> None:
    """Version 1 kept the phase in a `stage` column and the worker as a pid."""
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, stage TEXT NOT NULL,
              progress INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, started_at REAL,
              finished_at REAL, audio_path TEXT NOT NULL, video_path TEXT NOT NULL,
              output_path TEXT NOT NULL, options TEXT NOT NULL, source TEXT NOT NULL,
              code TEXT UNIQUE, attempts INTEGER NOT NULL DEFAULT 0,
              cancel_requested INTEGER NOT NULL DEFAULT 0, worker_pid INTEGER,
              result TEXT NOT NULL DEFAULT '{}', warnings TEXT NOT NULL DEFAULT '[]',
              error TEXT, published_path TEXT);
            CREATE INDEX jobs_state_created ON jobs (state, created_at);
            CREATE TABLE uploads (id TEXT PRIMARY KEY, path TEXT NOT NULL,
              filename TEXT NOT NULL, size INTEGER NOT NULL, created_at REAL NOT NULL,
              info TEXT NOT NULL);
            """
        )
        db.execute(
            "INSERT INTO jobs (id, state, stage, created_at, audio_path, video_path, "
            "output_path, options, source, worker_pid, error) "
            "VALUES (?, 'failed', 'generating', 1.0, 'a', 'v', 'o', '{}', 'v1', 77, ?)",
            ("c" * 32, json.dumps({"type": "WorkerCrashed", "message": "gone"})),
        )
    store = JobStore(path)
    job = store.get("c" * 32)
    assert job.phase == "generating" and job.stage is None and job.worker == "pid 77"
    assert job.client == "anonymous" and job.error is not None and job.error.message == "gone"
    store.close()
    assert JobStore(path).get("c" * 32).phase == "generating"  # migrating twice is a no-op


# The jobs table of schema version 2 (before the pipeline step), as that release made it.
_JOBS_V2 = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, phase TEXT NOT NULL, stage TEXT,
    progress INTEGER NOT NULL DEFAULT 0, frames_done INTEGER, frames_total INTEGER,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, audio_path TEXT NOT NULL,
    video_path TEXT NOT NULL, output_path TEXT NOT NULL, options TEXT NOT NULL,
    source TEXT NOT NULL, code TEXT UNIQUE, client TEXT NOT NULL DEFAULT 'anonymous',
    input_names TEXT NOT NULL DEFAULT '{}', timeout REAL, attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0, cancel_reason TEXT, worker TEXT,
    result TEXT NOT NULL DEFAULT '{}', warnings TEXT NOT NULL DEFAULT '[]', error TEXT,
    published_path TEXT
);
CREATE INDEX jobs_state_created ON jobs (state, created_at);
CREATE INDEX jobs_client_state ON jobs (client, state);
CREATE TABLE uploads (
    id TEXT PRIMARY KEY, path TEXT NOT NULL, filename TEXT NOT NULL, size INTEGER NOT NULL,
    created_at REAL NOT NULL, info TEXT NOT NULL, client TEXT NOT NULL DEFAULT 'anonymous',
    last_used_at REAL
);
PRAGMA user_version = 2;
"""


def test_a_store_of_schema_version_2_gains_the_step_and_keeps_its_jobs(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(_JOBS_V2)
        db.execute(
            "INSERT INTO jobs (id, state, phase, progress, frames_done, frames_total, "
            "created_at, audio_path, video_path, output_path, options, source, code, client, "
            "attempts, worker, result) VALUES (?, 'succeeded', 'done', 100, 50, 50, 1.0, 'a', "
            "'v', 'o', '{}', 'easy', 'task-1', 'alice', 1, 'pid 7', ?)",
            ("d" * 32, json.dumps({"frames": 50})),
        )
        db.execute(
            "INSERT INTO jobs (id, state, phase, created_at, audio_path, video_path, "
            "output_path, options, source) VALUES (?, 'queued', 'queued', 2.0, 'a', 'v', 'o', "
            "'{\"preset\": \"fast\"}', 'v1')",
            ("e" * 32,),
        )
        db.execute(
            "INSERT INTO uploads (id, path, filename, size, created_at, info, client) "
            "VALUES (?, 'p', 'f.wav', 3, 1.0, '{}', 'alice')",
            ("f" * 32,),
        )
    store = JobStore(path)
    done = store.get_by_code("task-1", client="alice")
    assert done.id == "d" * 32 and done.state is JobState.SUCCEEDED and done.worker == "pid 7"
    assert done.frames_done == 50 and done.result == {"frames": 50}
    assert done.step is None and done.step_done is None and done.step_total is None
    queued = store.get("e" * 32)
    assert queued.state is JobState.QUEUED and queued.options == {"preset": "fast"}
    assert store.get_upload("f" * 32, client="alice") is not None
    claimed = store.claim_next("w")  # the new columns work on a migrated store
    assert claimed is not None and claimed.id == "e" * 32
    store.set_progress(claimed.id, Phase.PREPARING, 5, step="template", step_done=1, step_total=2)
    assert store.get(claimed.id).step == "template"
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert JobStore(path).get("e" * 32).step_total == 2  # opening it again changes nothing
