"""Durable job state in SQLite (WAL): a restart loses no job.

One connection shared by the request threads and the executor's thread, serialised by a
lock; multi-statement changes run inside ``BEGIN IMMEDIATE`` so admission (count + insert)
and claiming (select + update) are atomic. Every transition a job makes is a method here,
called by ``service.lifecycle`` (never by an executor directly).

Reads take ``client``: a client only ever finds its own jobs and uploads (``None`` is an
admin's view of all of them); someone else's job is "not found", not "forbidden".
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

from service.errors import JobConflict, JobNotFound, QueueFull
from service.jobs import Job, JobError, JobState, NewJob, Phase

_ID = re.compile(r"^[0-9a-f]{32}$")  # ids are uuid4 hex; anything else cannot exist
CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # compat task codes (file names)
SCHEMA_VERSION = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    phase TEXT NOT NULL,
    stage TEXT,
    progress INTEGER NOT NULL DEFAULT 0,
    frames_done INTEGER,
    frames_total INTEGER,
    step TEXT,
    step_done INTEGER,
    step_total INTEGER,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    audio_path TEXT NOT NULL,
    video_path TEXT NOT NULL,
    output_path TEXT NOT NULL,
    options TEXT NOT NULL,
    source TEXT NOT NULL,
    code TEXT UNIQUE,
    client TEXT NOT NULL DEFAULT 'anonymous',
    input_names TEXT NOT NULL DEFAULT '{}',
    timeout REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancel_reason TEXT,
    worker TEXT,
    result TEXT NOT NULL DEFAULT '{}',
    warnings TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    published_path TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, created_at);
CREATE INDEX IF NOT EXISTS jobs_client_state ON jobs (client, state);
CREATE TABLE IF NOT EXISTS uploads (
    id TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    filename TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    info TEXT NOT NULL,
    client TEXT NOT NULL DEFAULT 'anonymous',
    last_used_at REAL
);
"""
# Version 1 (no user_version) had `stage` where the phase is now and worker_pid for worker.
_MIGRATE_FROM_1 = """
ALTER TABLE jobs RENAME TO jobs_v1;
ALTER TABLE uploads RENAME TO uploads_v1;
DROP INDEX IF EXISTS jobs_state_created;
{schema}
INSERT INTO jobs (id, state, phase, progress, created_at, started_at, finished_at, audio_path,
    video_path, output_path, options, source, code, attempts, cancel_requested, worker, result,
    warnings, error, published_path)
SELECT id, state, stage, progress, created_at, started_at, finished_at, audio_path, video_path,
    output_path, options, source, code, attempts, cancel_requested,
    CASE WHEN worker_pid IS NULL THEN NULL ELSE 'pid ' || worker_pid END, result, warnings,
    error, published_path FROM jobs_v1;
INSERT INTO uploads (id, path, filename, size, created_at, info)
SELECT id, path, filename, size, created_at, info FROM uploads_v1;
DROP TABLE jobs_v1;
DROP TABLE uploads_v1;
"""
# Version 2 had no pipeline step (step, step_done, step_total): added, empty.
_STEP_COLUMNS = {"step": "TEXT", "step_done": "INTEGER", "step_total": "INTEGER"}
_ACTIVE = (JobState.QUEUED.value, JobState.RUNNING.value)
_NO_STEP = "step = NULL, step_done = NULL, step_total = NULL"  # a new attempt, or queued again


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
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        old = self._db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'"
        ).fetchone()
        if old and version < 2:
            self._db.executescript(
                "BEGIN IMMEDIATE;" + _MIGRATE_FROM_1.format(schema=_SCHEMA) + "COMMIT;"
            )
        elif old and version < SCHEMA_VERSION:
            columns = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}
            added = "".join(
                f"ALTER TABLE jobs ADD COLUMN {name} {kind};"
                for name, kind in _STEP_COLUMNS.items()
                if name not in columns
            )
            self._db.executescript(f"BEGIN IMMEDIATE;{added}COMMIT;")
        self._db.executescript(_SCHEMA)  # new tables and indexes (all IF NOT EXISTS)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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
    def create(
        self, job: NewJob, *, max_queued: int, max_queued_per_client: int, retry_after: int
    ) -> Job:
        with self._tx() as db:
            queued = _count(db, "state = ?", JobState.QUEUED.value)
            if queued >= max_queued:
                raise QueueFull(
                    f"the queue is full ({queued} jobs waiting)",
                    retry_after=retry_after,
                    hint=f"retry after {retry_after} s",
                )
            mine = _count(db, "state = ? AND client = ?", JobState.QUEUED.value, job.client)
            if mine >= max_queued_per_client:
                raise QueueFull(
                    f"you have {mine} jobs waiting, the most one client may have queued",
                    retry_after=retry_after,
                    hint=f"wait for your jobs to start, retry after {retry_after} s",
                )
            if job.code is not None and _count(db, "code = ?", job.code):
                raise JobConflict(
                    f"a task with code {job.code!r} already exists",
                    hint="query it with /easy/query or submit with a new code",
                )
            db.execute(
                "INSERT INTO jobs (id, state, phase, created_at, audio_path, video_path, "
                "output_path, options, source, code, warnings, client, input_names, timeout) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job.id,
                    JobState.QUEUED.value,
                    Phase.QUEUED.value,
                    time.time(),
                    job.audio_path,
                    job.video_path,
                    job.output_path,
                    json.dumps(job.options),
                    job.source,
                    job.code,
                    json.dumps(list(job.warnings)),
                    job.client,
                    json.dumps(job.input_names),
                    job.timeout,
                ),
            )
            return self._get(db, job.id)

    # -- reads ---------------------------------------------------------------------------
    def get(self, job_id: str, client: str | None = None) -> Job:
        with self._lock:
            return self._get(self._db, job_id, client)

    def get_by_code(self, code: str, client: str | None = None) -> Job:
        with self._lock:
            row = (
                self._db.execute("SELECT * FROM jobs WHERE code = ?", (code,)).fetchone()
                if CODE.match(code)
                else None
            )
        if row is None or (client is not None and row["client"] != client):
            raise JobNotFound(
                f"no task with code {code!r}", hint="submit it first with /easy/submit"
            )
        return _job(row)

    def page(
        self,
        *,
        limit: int,
        offset: int,
        state: JobState | None = None,
        client: str | None = None,
    ) -> tuple[list[Job], int]:
        conditions, args = [], []
        if state is not None:
            conditions.append("state = ?")
            args.append(state.value)
        if client is not None:
            conditions.append("client = ?")
            args.append(client)
        where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
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

    def queued_by_client(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT client, COUNT(*) FROM jobs WHERE state = ? GROUP BY client",
                (JobState.QUEUED.value,),
            ).fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    def queue_position(self, job: Job) -> int:
        """1-based place in the queue (1 = next to run)."""
        with self._lock:
            ahead = self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = ? AND (created_at < ? OR "
                "(created_at = ? AND id < ?))",
                (JobState.QUEUED.value, job.created_at, job.created_at, job.id),
            ).fetchone()[0]
        return int(ahead) + 1

    def running(self) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE state = ?", (JobState.RUNNING.value,)
            ).fetchall()
        return [_job(r) for r in rows]

    # -- transitions (called by service.lifecycle) ---------------------------------------
    def claim_next(self, worker: str) -> Job | None:
        """Move the oldest queued job to running on this worker."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE state = ? ORDER BY created_at, id LIMIT 1",
                (JobState.QUEUED.value,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                f"UPDATE jobs SET state = ?, phase = ?, stage = NULL, progress = 0, {_NO_STEP}, "
                "started_at = ?, attempts = attempts + 1, worker = ? WHERE id = ?",
                (JobState.RUNNING.value, Phase.STARTING.value, time.time(), worker, row[0]),
            )
            return self._get(db, row[0])

    def start(self, job_id: str, worker: str) -> Job | None:
        """Move this queued job to running on ``worker`` (a remote executor reported that it
        started it); None if it was not queued."""
        with self._tx() as db:
            changed = db.execute(
                f"UPDATE jobs SET state = ?, phase = ?, stage = NULL, progress = 0, {_NO_STEP}, "
                "started_at = ?, attempts = attempts + 1, worker = ? WHERE id = ? AND state = ?",
                (
                    JobState.RUNNING.value,
                    Phase.STARTING.value,
                    time.time(),
                    worker,
                    job_id,
                    JobState.QUEUED.value,
                ),
            ).rowcount
            return self._get(db, job_id) if changed else None

    def requeue_lost(self, job_id: str, warning: str) -> bool:
        """A running job whose worker was lost goes back to queued (it will be delivered
        again); the warning says what happened to the attempt."""
        with self._tx() as db:
            row = db.execute(
                "SELECT warnings FROM jobs WHERE id = ? AND state = ?",
                (job_id, JobState.RUNNING.value),
            ).fetchone()
            if row is None:
                return False
            warnings = [*json.loads(row[0]), warning]
            db.execute(
                "UPDATE jobs SET state = ?, phase = ?, stage = NULL, progress = 0, "
                f"frames_done = NULL, {_NO_STEP}, worker = NULL, warnings = ? WHERE id = ?",
                (JobState.QUEUED.value, Phase.QUEUED.value, json.dumps(warnings), job_id),
            )
            return True

    def withdraw(self, job_id: str) -> None:
        """Remove a just-queued job that could not be handed to its executor."""
        with self._lock:
            self._db.execute(
                "DELETE FROM jobs WHERE id = ? AND state = ?", (job_id, JobState.QUEUED.value)
            )

    def active(self) -> list[Job]:
        """Queued and running jobs, oldest first."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE state IN {_ACTIVE!r} ORDER BY created_at, id"
            ).fetchall()
        return [_job(r) for r in rows]

    def requeue(self, job_id: str) -> None:
        """Give back a claimed job that never reached its worker."""
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET state = ?, phase = ?, progress = 0, {_NO_STEP}, "
                "attempts = MAX(attempts - 1, 0), worker = NULL "
                "WHERE id = ? AND state = ?",
                (JobState.QUEUED.value, Phase.QUEUED.value, job_id, JobState.RUNNING.value),
            )

    def set_progress(
        self,
        job_id: str,
        phase: str,
        progress: int,
        *,
        frames_done: int | None = None,
        frames_total: int | None = None,
        step: str | None = None,
        step_done: int | None = None,
        step_total: int | None = None,
    ) -> None:
        """A running job's progress. Frames and the step are kept when not given; a step
        comes with its own counts (``step_total`` None: the step has no countable units)."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET phase = :phase, progress = :progress, "
                "frames_done = COALESCE(:frames_done, frames_done), "
                "frames_total = COALESCE(:frames_total, frames_total), "
                "step_done = CASE WHEN :step IS NULL THEN step_done ELSE :step_done END, "
                "step_total = CASE WHEN :step IS NULL THEN step_total ELSE :step_total END, "
                "step = COALESCE(:step, step) "
                "WHERE id = :id AND state = :running",
                {
                    "phase": phase,
                    "progress": max(0, min(99, progress)),
                    "frames_done": frames_done,
                    "frames_total": frames_total,
                    "step": step,
                    "step_done": step_done,
                    "step_total": step_total,
                    "id": job_id,
                    "running": JobState.RUNNING.value,
                },
            )

    def succeed(self, job_id: str, result: dict[str, Any], published_path: str | None) -> bool:
        """Record a success; False if the job was no longer running (a late report)."""
        with self._tx() as db:
            row = db.execute("SELECT warnings FROM jobs WHERE id = ?", (job_id,)).fetchone()
            warnings = json.loads(row[0]) if row else []
            warnings += [w for w in result.get("warnings", []) if w not in warnings]
            changed = db.execute(
                "UPDATE jobs SET state = ?, phase = ?, progress = 100, finished_at = ?, "
                "result = ?, warnings = ?, published_path = ? WHERE id = ? AND state = ?",
                (
                    JobState.SUCCEEDED.value,
                    Phase.DONE.value,
                    time.time(),
                    json.dumps(result),
                    json.dumps(warnings),
                    published_path,
                    job_id,
                    JobState.RUNNING.value,
                ),
            ).rowcount
        return bool(changed)

    def finish_unsuccessfully(
        self, job_id: str, error: JobError, *, cancelled: bool = False
    ) -> Job | None:
        """Fail or cancel a queued/running job; the error records the phase it was in then.

        Returns the finished job, or None when it had already finished.
        """
        state = JobState.CANCELLED if cancelled else JobState.FAILED
        with self._tx() as db:
            row = db.execute(
                f"SELECT phase FROM jobs WHERE id = ? AND state IN {_ACTIVE!r}", (job_id,)
            ).fetchone()
            if row is None:
                return None
            if error.phase is None:
                error = JobError(**{**error.to_dict(), "phase": row["phase"]})
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ?, error = ?, stage = ? WHERE id = ?",
                (state.value, time.time(), json.dumps(error.to_dict()), error.stage, job_id),
            )
            return self._get(db, job_id)

    def request_cancel(self, job_id: str, error: JobError, client: str | None = None) -> Job:
        """Cancel a queued job now (with ``error``); flag a running one for its executor."""
        with self._tx() as db:
            job = self._get(db, job_id, client)
            if job.state.finished:
                raise JobConflict(
                    f"job {job_id} already {job.state.value}",
                    hint="only queued or running jobs can be cancelled",
                )
            if job.state is JobState.QUEUED:
                error = JobError(**{**error.to_dict(), "phase": job.phase})
                db.execute(
                    "UPDATE jobs SET state = ?, finished_at = ?, error = ?, cancel_requested = 1, "
                    "cancel_reason = ? WHERE id = ?",
                    (
                        JobState.CANCELLED.value,
                        time.time(),
                        json.dumps(error.to_dict()),
                        error.message,
                        job_id,
                    ),
                )
            else:
                db.execute(
                    "UPDATE jobs SET cancel_requested = 1, "
                    "cancel_reason = COALESCE(cancel_reason, ?) WHERE id = ?",
                    (error.message, job_id),
                )
            return self._get(db, job_id)

    def recover(self) -> list[Job]:
        """The jobs a previous process left running (the lifecycle decides their fate)."""
        return self.running()

    def requeue_after_restart(self, job_id: str) -> None:
        with self._lock:
            self._db.execute(
                f"UPDATE jobs SET state = ?, phase = ?, stage = NULL, progress = 0, {_NO_STEP}, "
                "worker = NULL WHERE id = ? AND state = ?",
                (JobState.QUEUED.value, Phase.QUEUED.value, job_id, JobState.RUNNING.value),
            )

    # -- retention -----------------------------------------------------------------------
    def finished_before(self, cutoff: float) -> list[Job]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE state NOT IN {_ACTIVE!r} AND finished_at < ?",
                (cutoff,),
            ).fetchall()
        return [_job(r) for r in rows]

    def published_owner(self, published_path: str) -> str | None:
        """The client whose compat job published ``published_path`` ("/<code>-r.mp4")."""
        with self._lock:
            row = self._db.execute(
                "SELECT client FROM jobs WHERE published_path = ?", (published_path,)
            ).fetchone()
        return str(row["client"]) if row is not None else None

    def delete_finished(self, job_id: str, client: str | None = None) -> Job:
        """Remove a finished job's row (its files are the caller's)."""
        with self._tx() as db:
            job = self._get(db, job_id, client)
            if not job.state.finished:
                raise JobConflict(
                    f"job {job_id} is {job.state.value}", hint="cancel it first, then delete it"
                )
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return job

    # -- uploads -------------------------------------------------------------------------
    def add_upload(
        self,
        upload_id: str,
        path: str,
        filename: str,
        size: int,
        info: dict[str, Any],
        client: str,
    ) -> None:
        created = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO uploads (id, path, filename, size, created_at, info, client, "
                "last_used_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (upload_id, path, filename, size, created, json.dumps(info), client, created),
            )

    def get_upload(self, upload_id: str, client: str | None = None) -> dict[str, Any] | None:
        if not _ID.match(upload_id):
            return None
        with self._lock:
            row = self._db.execute("SELECT * FROM uploads WHERE id = ?", (upload_id,)).fetchone()
        if row is None or (client is not None and row["client"] != client):
            return None
        return {**dict(row), "info": json.loads(row["info"])}

    def recent_uploads(
        self, client: str | None, limit: int, *, video: bool = False
    ) -> list[dict[str, Any]]:
        """A client's uploads (all of them for None), most recently used first; with
        ``video`` only those that have a video stream (templates)."""
        conditions, args = [], []
        if client is not None:
            conditions.append("client = ?")
            args.append(client)
        if video:
            conditions.append("json_extract(info, '$.has_video') = 1")
        where = ("WHERE " + " AND ".join(conditions)) if conditions else ""
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM uploads {where} "
                "ORDER BY COALESCE(last_used_at, created_at) DESC, id LIMIT ?",
                [*args, limit],
            ).fetchall()
        return [{**dict(r), "info": json.loads(r["info"])} for r in rows]

    def touch_upload(self, upload_id: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE uploads SET last_used_at = ? WHERE id = ?", (time.time(), upload_id)
            )

    def uploads_unused_since(self, cutoff: float) -> list[dict[str, Any]]:
        """Uploads last used before ``cutoff`` that no queued or running job reads."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM uploads u WHERE COALESCE(last_used_at, created_at) < ? AND "
                f"NOT EXISTS (SELECT 1 FROM jobs j WHERE j.state IN {_ACTIVE!r} AND "
                "(j.audio_path = u.path OR j.video_path = u.path))",
                (cutoff,),
            ).fetchall()
        return [dict(r) for r in rows]

    def delete_upload(self, upload_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM uploads WHERE id = ?", (upload_id,))

    @staticmethod
    def _get(db: sqlite3.Connection, job_id: str, client: str | None = None) -> Job:
        row = (
            db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if _ID.match(job_id)
            else None
        )
        if row is None or (client is not None and row["client"] != client):
            raise JobNotFound(
                f"no generation job with id {job_id[:64]!r}",
                hint="list your jobs with GET /v1/generations",
            )
        return _job(row)


def _count(db: sqlite3.Connection, where: str, *args: Any) -> int:
    return int(db.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}", args).fetchone()[0])


def _job(row: sqlite3.Row) -> Job:
    error = json.loads(row["error"]) if row["error"] else None
    return Job(
        id=row["id"],
        state=JobState(row["state"]),
        phase=row["phase"],
        stage=row["stage"],
        progress=int(row["progress"]),
        frames_done=row["frames_done"],
        frames_total=row["frames_total"],
        step=row["step"],
        step_done=row["step_done"],
        step_total=row["step_total"],
        created_at=row["created_at"],
        audio_path=row["audio_path"],
        video_path=row["video_path"],
        output_path=row["output_path"],
        options=json.loads(row["options"]),
        source=row["source"],
        code=row["code"],
        client=row["client"],
        input_names=json.loads(row["input_names"]),
        timeout=row["timeout"],
        attempts=int(row["attempts"]),
        cancel_requested=bool(row["cancel_requested"]),
        cancel_reason=row["cancel_reason"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        worker=row["worker"],
        result=json.loads(row["result"]),
        warnings=tuple(json.loads(row["warnings"])),
        error=JobError.from_dict(error) if error else None,
        published_path=row["published_path"],
    )
