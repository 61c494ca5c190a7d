"""The store's SQLite schema, its migrations, and the translation of SQLite failures into one
clear `StoreError` that names the file.

Version history (`schema_version.version`):
  0  the first layout: generations without `answer` and `finish_reason`, no request logs
  1  + generations.answer, generations.finish_reason, file_hashes, requests (server logs)

A store written by a newer orchestrator is refused with how to proceed; an older one is migrated
in place, inside one transaction, when it is opened.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable
from pathlib import Path

from ..errors import StoreError

SCHEMA_VERSION = 1

TABLES_V1 = """
CREATE TABLE IF NOT EXISTS experts (
    expert_key BLOB PRIMARY KEY,      -- sha256 of the expert identity (keys.identity_digest)
    expert_id TEXT NOT NULL,          -- the id it had when first stored
    identity TEXT NOT NULL,           -- JSON: backend, model digest, adapter digest, options...
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS generations (
    key BLOB PRIMARY KEY,             -- keys.request_key: 32 bytes
    expert_key BLOB NOT NULL,
    expert_id TEXT NOT NULL,
    query_id TEXT NOT NULL,
    reusable INTEGER NOT NULL,        -- 0: sampled without a seed, not reused unless asked
    text TEXT NOT NULL,               -- TEXT, or BLOB (utf-8, surrogatepass) for lone surrogates
    answer TEXT,
    finish_reason TEXT,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    seconds REAL,                     -- wall seconds of its batch / batch size
    created REAL NOT NULL             -- unix time
);
CREATE TABLE IF NOT EXISTS errors (
    id INTEGER PRIMARY KEY,
    key BLOB NOT NULL,
    expert_id TEXT NOT NULL,
    query_id TEXT NOT NULL,
    error TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    model TEXT,
    status TEXT NOT NULL,             -- ok | error
    duration_s REAL,
    request TEXT NOT NULL,            -- JSON: the body as received
    routing TEXT,                     -- JSON: experts, scores, evidence
    response TEXT,                    -- JSON: the completion
    error TEXT
);
"""

# Only for tests and for migrating: the layout of version 0.
TABLES_V0 = """
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE experts (expert_key BLOB PRIMARY KEY, expert_id TEXT NOT NULL,
                      identity TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE generations (key BLOB PRIMARY KEY, expert_key BLOB NOT NULL,
                          expert_id TEXT NOT NULL, query_id TEXT NOT NULL,
                          reusable INTEGER NOT NULL, text TEXT NOT NULL,
                          tokens_in INTEGER NOT NULL, tokens_out INTEGER NOT NULL,
                          seconds REAL, created REAL NOT NULL);
CREATE TABLE errors (id INTEGER PRIMARY KEY, key BLOB NOT NULL, expert_id TEXT NOT NULL,
                     query_id TEXT NOT NULL, error TEXT NOT NULL, created REAL NOT NULL);
INSERT INTO schema_version VALUES (0);
"""


def _v0_to_v1(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE generations ADD COLUMN answer TEXT")
    conn.execute("ALTER TABLE generations ADD COLUMN finish_reason TEXT")
    for statement in TABLES_V1.split(";"):
        if statement.strip():
            conn.execute(statement)


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _v0_to_v1}


def translate(err: sqlite3.Error | OSError, path: Path, doing: str) -> StoreError:
    """One line naming the file, what failed and what to do."""
    name = getattr(err, "sqlite_errorname", "") or ""
    detail = str(err).strip() or type(err).__name__
    where = f"The generation store {path}"
    other = "choose another store with --store PATH, or run with --no-store"
    code = err.errno if isinstance(err, OSError) else None
    if name.startswith("SQLITE_FULL") or "disk is full" in detail or code == errno.ENOSPC:
        return StoreError(f"{where} is full while {doing} ({detail}). Free disk space, remove "
                          f"old generations (orchestrate store prune), or {other}.")
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM", "SQLITE_AUTH")) \
            or code in (errno.EROFS, errno.EACCES, errno.EPERM) or "readonly" in detail:
        return StoreError(f"{where} cannot be written while {doing} ({detail}): the file or its "
                          f"folder is read-only. Make both writable, or {other}.")
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or "not a database" in detail \
            or "malformed" in detail:
        return StoreError(f"{where} is corrupt or not an SQLite file ({detail}) while {doing}. "
                          f"Move it away (a new store is created in its place), {other}.")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in detail:
        return StoreError(f"{where} stayed locked by another process while {doing} ({detail}). "
                          f"Retry when that process is done, or {other}.")
    return StoreError(f"{where} failed while {doing} ({detail}); {other}.")


def schema_version(conn: sqlite3.Connection, path: Path) -> int | None:
    """The schema version; None for an empty file."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        return None
    if "schema_version" not in tables:
        raise StoreError(
            f"The generation store {path} is an SQLite file of something else (tables: "
            f"{', '.join(sorted(tables)[:5])}; no schema_version). Choose another with --store "
            "PATH.")
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def ensure_schema(conn: sqlite3.Connection, path: Path) -> int:
    """Create or migrate, inside the caller's write transaction; returns the version found
    (None-equivalent -1 for a new file)."""
    found = schema_version(conn, path)
    if found is None:
        for statement in TABLES_V1.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
        return -1
    if found > SCHEMA_VERSION:
        from .. import __version__

        raise StoreError(
            f"The generation store {path} has schema version {found}, written by a newer "
            f"orchestrator; this one ({__version__}) reads versions up to {SCHEMA_VERSION}. "
            "Upgrade orchestrator (pip install -U orchestrator), or choose another store with "
            "--store PATH.")
    for version in range(found, SCHEMA_VERSION):
        MIGRATIONS[version](conn)
    if found < SCHEMA_VERSION:
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
    return found


def ensure_readable(conn: sqlite3.Connection, path: Path) -> None:
    """A read-only open: the schema must be one this version reads (no migration)."""
    found = schema_version(conn, path)
    if found is None:
        raise StoreError(f"The generation store {path} is empty. Run something first, or name "
                         "another store with --store PATH.")
    if found != SCHEMA_VERSION:
        raise StoreError(f"The generation store {path} has schema version {found}; this "
                         f"orchestrator reads version {SCHEMA_VERSION}. Open it once writable "
                         "(any run or `orchestrate store stats`) to migrate it.")
