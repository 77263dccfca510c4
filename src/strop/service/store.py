"""The SQLite job store: files, jobs and their events, shared by the API and the worker.

One connection per call keeps it safe across the API's threads and the
worker thread; WAL lets readers poll while the worker writes.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
  id TEXT PRIMARY KEY, filename TEXT NOT NULL, bytes INTEGER NOT NULL, created_at INTEGER NOT NULL,
  purpose TEXT NOT NULL, status TEXT NOT NULL, rows INTEGER, format TEXT, deleted INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, created_at INTEGER NOT NULL,
  model TEXT NOT NULL, training_file TEXT NOT NULL, validation_file TEXT, suffix TEXT, seed INTEGER NOT NULL,
  hyperparameters TEXT NOT NULL, method TEXT NOT NULL, options TEXT NOT NULL, status TEXT NOT NULL,
  fine_tuned_model TEXT, finished_at INTEGER, error TEXT, trained_tokens INTEGER, pid INTEGER,
  restarts INTEGER NOT NULL DEFAULT 0, resume INTEGER NOT NULL DEFAULT 0, metadata TEXT, requested TEXT,
  result_files TEXT, started_at INTEGER, parent TEXT, handle TEXT);
CREATE TABLE IF NOT EXISTS events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, job_id TEXT NOT NULL, created_at INTEGER NOT NULL,
  level TEXT NOT NULL, message TEXT NOT NULL, type TEXT NOT NULL, data TEXT);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, seq);
"""

ACTIVE = ("validating_files", "queued", "running", "paused")
FINISHED = ("succeeded", "failed", "cancelled")
JSON_COLUMNS = ("hyperparameters", "method", "options", "error", "metadata", "requested", "result_files")
# columns added after the first release: a store made before them gets them on open
ADDED_JOB_COLUMNS = {"metadata": "TEXT", "requested": "TEXT", "result_files": "TEXT", "started_at": "INTEGER",
                     "parent": "TEXT", "handle": "TEXT"}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


@contextmanager
def connect(path: Path) -> Iterator[sqlite3.Connection]:
    """One connection for one unit of work, committed on success (the store's tables and webhooks.py's)."""
    db = sqlite3.connect(path, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        with db:
            yield db
    finally:
        db.close()


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()  # sqlite serialises writers anyway; this avoids "database is locked" retries
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            have = {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
            for name, kind in ADDED_JOB_COLUMNS.items():
                if name not in have:
                    db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")

    def _db(self):
        return connect(self.path)

    def _write(self, sql: str, args: tuple) -> None:
        with self.lock, self._db() as db:
            db.execute(sql, args)

    # -- files ---------------------------------------------------------------
    def add_file(self, row: dict) -> None:
        cols = ", ".join(row)
        self._write(f"INSERT INTO files ({cols}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))

    def get_file(self, file_id: str) -> dict | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM files WHERE id = ? AND deleted = 0", (file_id,)).fetchone()
        return dict(row) if row else None

    def list_files(self, purpose: str | None = None, after: str | None = None, limit: int | None = None,
                   order: str = "desc") -> list[dict]:
        """Files by upload order (``desc``: newest first); ``after`` is the last id of the previous page."""
        direction, cmp = ("DESC", "<") if order == "desc" else ("ASC", ">")
        sql, args = "SELECT * FROM files WHERE deleted = 0", []
        if purpose is not None:
            sql += " AND purpose = ?"
            args.append(purpose)
        if after:
            sql += f" AND rowid {cmp} (SELECT rowid FROM files WHERE id = ?)"
            args.append(after)
        sql += f" ORDER BY rowid {direction}" + (" LIMIT ?" if limit else "")
        args += [limit] if limit else []
        with self._db() as db:
            return [dict(r) for r in db.execute(sql, args).fetchall()]

    def delete_file(self, file_id: str) -> None:
        self._write("UPDATE files SET deleted = 1 WHERE id = ?", (file_id,))

    # -- jobs ----------------------------------------------------------------
    def add_job(self, job: dict) -> None:
        row = {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in job.items()}
        self._write(f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", tuple(row.values()))

    def get_job(self, job_id: str) -> dict | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def job_by_model(self, fine_tuned_model: str) -> dict | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE fine_tuned_model = ? AND status = 'succeeded'",
                             (fine_tuned_model,)).fetchone()
        return _job(row) if row else None

    def job_by_short_id(self, short: str) -> dict | None:
        """The job whose id starts with ``ftjob-<short>`` (the last part of its model names)."""
        if not short.isalnum():
            return None
        with self._db() as db:
            rows = db.execute("SELECT * FROM jobs WHERE id LIKE ?", (f"ftjob-{short}%",)).fetchall()
        return _job(rows[0]) if len(rows) == 1 else None

    def list_jobs(self, after: str | None = None, limit: int | None = None, statuses: tuple[str, ...] = (),
                  metadata: dict[str, str] | None = None) -> list[dict]:
        """Newest first, as the hosted API lists them; ``after`` is the last id of the previous page;
        ``metadata``: only jobs whose metadata has every key with that value ({} selects jobs without any)."""
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if metadata == {}:
            sql += " AND metadata IS NULL"
        for key, value in (metadata or {}).items():
            sql += " AND EXISTS (SELECT 1 FROM json_each(jobs.metadata) WHERE key = ? AND value = ?)"
            args += [key, value]
        if after:
            sql += " AND seq < (SELECT seq FROM jobs WHERE id = ?)"
            args.append(after)
        if statuses:
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            args += list(statuses)
        sql += " ORDER BY seq DESC" + (" LIMIT ?" if limit else "")
        args += [limit] if limit else []
        with self._db() as db:
            return [_job(r) for r in db.execute(sql, args).fetchall()]

    def oldest(self, status: str) -> dict | None:
        with self._db() as db:
            row = db.execute("SELECT * FROM jobs WHERE status = ? ORDER BY seq LIMIT 1", (status,)).fetchone()
        return _job(row) if row else None

    def update_job(self, job_id: str, **values) -> None:
        values = {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in values.items()}
        sets = ", ".join(f"{k} = ?" for k in values)
        self._write(f"UPDATE jobs SET {sets} WHERE id = ?", (*values.values(), job_id))

    def set_status(self, job_id: str, status: str, *, only_from: tuple[str, ...] = ACTIVE, **values) -> bool:
        """Move a job on unless it already left ``only_from`` (e.g. a cancel won the race)."""
        values = {k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in values.items()}
        values["status"] = status
        if status in FINISHED:
            values.setdefault("finished_at", int(time.time()))
        sets = ", ".join(f"{k} = ?" for k in values)
        with self.lock, self._db() as db:
            cur = db.execute(f"UPDATE jobs SET {sets} WHERE id = ? AND status IN ({', '.join('?' * len(only_from))})",
                             (*values.values(), job_id, *only_from))
            return cur.rowcount == 1

    # -- events --------------------------------------------------------------
    def add_event(self, job_id: str, message: str, *, level: str = "info", type: str = "message",
                  data: dict | None = None) -> None:
        self._write("INSERT INTO events (id, job_id, created_at, level, message, type, data) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (new_id("ftevent"), job_id, int(time.time()), level, message, type,
                     json.dumps(data) if data is not None else None))

    def events(self, job_id: str, after: str | None = None, limit: int = 20) -> list[dict]:
        """Newest first; ``after`` pages towards older events."""
        sql, args = "SELECT * FROM events WHERE job_id = ?", [job_id]
        if after:
            sql += " AND seq < (SELECT seq FROM events WHERE id = ?)"
            args.append(after)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        with self._db() as db:
            rows = db.execute(sql, args).fetchall()
        return [{**dict(r), "data": json.loads(r["data"]) if r["data"] else None} for r in rows]


def _job(row: sqlite3.Row) -> dict:
    job = dict(row)
    for k in JSON_COLUMNS:
        if job.get(k) is not None:
            job[k] = json.loads(job[k])
    return job
