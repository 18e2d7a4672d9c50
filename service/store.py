"""Durable job state in SQLite (WAL): a restart loses no job.

One connection shared by the request threads and the supervisor thread, serialised by a
lock; multi-statement changes run inside ``BEGIN IMMEDIATE`` so admission (count + insert)
and claiming (select + update) are atomic.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.errors import JobConflict, JobNotFound, QueueFull, ServiceRestarted
from service.jobs import Job, JobError, JobState, NewJob, Stage

_ID = re.compile(r"^[0-9a-f]{32}$")  # ids are uuid4 hex; anything else cannot exist
CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # compat task codes (file names)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    stage TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    audio_path TEXT NOT NULL,
    video_path TEXT NOT NULL,
    output_path TEXT NOT NULL,
    options TEXT NOT NULL,
    source TEXT NOT NULL,
    code TEXT UNIQUE,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    worker_pid INTEGER,
    result TEXT NOT NULL DEFAULT '{}',
    warnings TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    published_path TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, created_at);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    info TEXT NOT NULL
);
"""


class JobStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path, check_same_thread=False, isolation_level=None, timeout=30.0
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- admission -----------------------------------------------------------------------
    def create(self, job: NewJob, *, max_queued: int, retry_after: int) -> Job:
        with self._tx() as db:
            queued = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = ?", (JobState.QUEUED.value,)
            ).fetchone()[0]
            if queued >= max_queued:
                raise QueueFull(
                    f"the queue is full ({queued} jobs waiting)",
                    retry_after=retry_after,
                    hint=f"retry after {retry_after} s",
                )
            if (
                job.code is not None
                and db.execute("SELECT 1 FROM jobs WHERE code = ?", (job.code,)).fetchone()
            ):
                raise JobConflict(
                    f"a task with code {job.code!r} already exists",
                    hint="query it with /easy/query or submit with a new code",
                )
            db.execute(
                "INSERT INTO jobs (id, state, stage, created_at, audio_path, video_path, "
                "output_path, options, source, code, warnings) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    JobState.QUEUED.value,
                    Stage.QUEUED.value,
                    time.time(),
                    job.audio_path,
                    job.video_path,
                    job.output_path,
                    json.dumps(job.options),
                    job.source,
                    job.code,
                    json.dumps(list(job.warnings)),
                ),
            )
            return self._get(db, job.id)

    # -- reads ---------------------------------------------------------------------------
    def get(self, job_id: str) -> Job:
        with self._lock:
            return self._get(self._db, job_id)

    def get_by_code(self, code: str) -> Job:
        with self._lock:
            row = (
                self._db.execute("SELECT * FROM jobs WHERE code = ?", (code,)).fetchone()
                if (CODE.match(code))
                else None
            )
        if row is None:
            raise JobNotFound(
                f"no task with code {code!r}", hint="submit it first with /easy/submit"
            )
        return _job(row)

    def page(
        self, *, limit: int, offset: int, state: JobState | None = None
    ) -> tuple[list[Job], int]:
        where, args = ("WHERE state = ?", [state.value]) if state else ("", [])
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs {where}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
        return [_job(r) for r in rows], int(total)

    def counts(self) -> dict[JobState, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall()
        counts = dict.fromkeys(JobState, 0)
        counts.update({JobState(r[0]): int(r[1]) for r in rows})
        return counts

    def queue_position(self, job: Job) -> int:
        """1-based place in the queue (1 = next to run)."""
        with self._lock:
            ahead = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = ? AND (created_at < ? OR "
                "(created_at = ? AND id < ?))",
                (JobState.QUEUED.value, job.created_at, job.created_at, job.id),
            ).fetchone()[0]
        return int(ahead) + 1

    # -- the supervisor's transitions ----------------------------------------------------
    def claim_next(self, worker_pid: int) -> Job | None:
        """Move the oldest queued job to running on this worker."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = ? ORDER BY created_at, id LIMIT 1",
                (JobState.QUEUED.value,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = ?, stage = ?, progress = 0, started_at = ?, "
                "attempts = attempts + 1, worker_pid = ? WHERE id = ?",
                (JobState.RUNNING.value, Stage.STARTING.value, time.time(), worker_pid, row[0]),
            )
            return self._get(db, row[0])

    def requeue(self, job_id: str) -> None:
        """Give back a claimed job that never reached its worker."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = ?, stage = ?, progress = 0, "
                "attempts = MAX(attempts - 1, 0), worker_pid = NULL "
                "WHERE id = ? AND state = ?",
                (JobState.QUEUED.value, Stage.QUEUED.value, job_id, JobState.RUNNING.value),
            )

    def set_progress(self, job_id: str, stage: str, progress: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET stage = ?, progress = ? WHERE id = ? AND state = ?",
                (stage, max(0, min(99, progress)), job_id, JobState.RUNNING.value),
            )

    def succeed(
        self, job_id: str, result: dict[str, Any], published_path: str | None = None
    ) -> None:
        with self._lock:
            row = self._db.execute("SELECT warnings FROM jobs WHERE id = ?", (job_id,)).fetchone()
            warnings = json.loads(row[0]) if row else []
            warnings += [w for w in result.get("warnings", []) if w not in warnings]
            self._db.execute(
                "UPDATE jobs SET state = ?, stage = ?, progress = 100, finished_at = ?, "
                "result = ?, warnings = ?, published_path = ? WHERE id = ? AND state = ?",
                (
                    JobState.SUCCEEDED.value,
                    Stage.DONE.value,
                    time.time(),
                    json.dumps(result),
                    json.dumps(warnings),
                    published_path,
                    job_id,
                    JobState.RUNNING.value,
                ),
            )

    def finish_unsuccessfully(
        self, job_id: str, error: JobError, *, cancelled: bool = False
    ) -> None:
        state = JobState.CANCELLED if cancelled else JobState.FAILED
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ? "
                "WHERE id = ? AND state IN (?, ?)",
                (
                    state.value,
                    time.time(),
                    json.dumps(error.__dict__),
                    job_id,
                    JobState.QUEUED.value,
                    JobState.RUNNING.value,
                ),
            )

    def request_cancel(self, job_id: str) -> Job:
        """Cancel a queued job now; flag a running one (its worker is told by the caller)."""
        with self._tx() as db:
            job = self._get(db, job_id)
            if job.state.finished:
                raise JobConflict(
                    f"job {job_id} already {job.state.value}",
                    hint="only queued or running jobs can be cancelled",
                )
            if job.state is JobState.QUEUED:
                error = JobError("Cancelled", "cancelled by request before it started")
                db.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, error = ?, "
                    "cancel_requested = 1 WHERE id = ?",
                    (JobState.CANCELLED.value, time.time(), json.dumps(error.__dict__), job_id),
                )
            else:
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return self._get(db, job_id)

    def running(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state = ?", (JobState.RUNNING.value,)
            ).fetchall()
        return [_job(r) for r in rows]

    def recover(self, policy: str, max_attempts: int) -> dict[str, int]:
        """At start-up: jobs left running by a previous process fail, or go back to the queue."""
        requeued = failed = 0
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE state = ?", (JobState.RUNNING.value,)
            ).fetchall()
            for row in rows:
                job = _job(row)
                if policy == "retry" and job.attempts < max_attempts and not job.cancel_requested:
                    db.execute(
                        "UPDATE jobs SET state = ?, stage = ?, progress = 0, "
                        "worker_pid = NULL WHERE id = ?",
                        (JobState.QUEUED.value, Stage.QUEUED.value, job.id),
                    )
                    requeued += 1
                    continue
                exc = ServiceRestarted(
                    f"the service stopped while this job was running (attempt {job.attempts}, "
                    f"worker pid {job.worker_pid}, stage {job.stage})",
                    stage=job.stage,
                    hint="submit the job again",
                )
                error = JobError(type(exc).__name__, exc.message, exc.hint, exc.stage)
                state = JobState.CANCELLED if job.cancel_requested else JobState.FAILED
                db.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, error = ? WHERE id = ?",
                    (state.value, time.time(), json.dumps(error.__dict__), job.id),
                )
                failed += 1
        return {"requeued": requeued, "failed": failed}

    # -- uploads -------------------------------------------------------------------------
    def add_upload(
        self, upload_id: str, path: str, filename: str, size: int, info: dict[str, Any]
    ) -> float:
        created = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO uploads VALUES (?, ?, ?, ?, ?, ?)",
                (upload_id, path, filename, size, created, json.dumps(info)),
            )
        return created

    def get_upload(self, upload_id: str) -> dict[str, Any] | None:
        if not _ID.match(upload_id):
            return None
        with self._lock:
            row = self._db.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        if row is None:
            return None
        return {**dict(row), "info": json.loads(row["info"])}

    @staticmethod
    def _get(db: sqlite3.Connection, job_id: str) -> Job:
        row = (
            db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if (_ID.match(job_id))
            else None
        )
        if row is None:
            raise JobNotFound(
                f"no generation job with id {job_id!r}", hint="list jobs with GET /v1/generations"
            )
        return _job(row)


def _job(row: sqlite3.Row) -> Job:
    error = json.loads(row["error"]) if row["error"] else None
    return Job(
        id=row["id"],
        state=JobState(row["state"]),
        stage=row["stage"],
        progress=int(row["progress"]),
        created_at=row["created_at"],
        audio_path=row["audio_path"],
        video_path=row["video_path"],
        output_path=row["output_path"],
        options=json.loads(row["options"]),
        source=row["source"],
        code=row["code"],
        attempts=int(row["attempts"]),
        cancel_requested=bool(row["cancel_requested"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        worker_pid=row["worker_pid"],
        result=json.loads(row["result"]),
        warnings=tuple(json.loads(row["warnings"])),
        error=JobError.from_dict(error) if error else None,
        published_path=row["published_path"],
    )
